"""Defective landing files for one night, and what must become of each.

Every case is one day's file ``<night>.csv`` or ``.parquet`` built for a given night and
catalogue (so the unit tests' tiny world and the flow tests' synthetic project share it):

- ``error``: the file cannot be read at all; the batch fails with exit 2 and a message
  holding each substring (what the file is and how to fix it), never a traceback;
- ``quarantine``: {data row: reason substring} of the rows set aside (rows in = kept +
  quarantined); the file's other rows are valid and their users are scored;
- ``rejected``: every row is set aside: a failed night, no batch;
- ``empty``: a header and no rows: zero rows in, nothing set aside.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

HEADER = "user_id,item_id,rating,timestamp"


@dataclass(frozen=True)
class Case:
    name: str
    suffix: str
    build: Callable[[Callable[[int], int], list[str]], bytes]   # (time of day -> epoch, items)
    error: tuple[str, ...] = ()
    quarantine: dict[int, str] = field(default_factory=dict)
    rejected: str | None = None
    empty: bool = False
    good_users: tuple[str, ...] = ()


def _csv(lines: list[str], header: str = HEADER) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


def _good(at: Callable[[int], int], items: list[str], users: tuple[str, ...] = ("nu1", "nu2")
          ) -> list[str]:
    """Valid rows: each new user rates two catalogue items during the night."""
    return [f"{u},{items[j]},4,{at(3600 * (i + 1) + j)}" for i, u in enumerate(users)
            for j in range(2)]


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _zip(data: bytes) -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as z:
        z.writestr("day.csv", data)
    return sink.getvalue()


GOOD = ("nu1", "nu2")


def cases() -> list[Case]:
    g = _good
    return [
        # -- files that cannot be read: exit 2, what the file is and what to do ------------
        Case("empty_file", ".csv", lambda at, it: b"", error=("file is empty (0 bytes)",)),
        Case("gzip_named_csv", ".csv", lambda at, it: gzip.compress(_csv(g(at, it)), mtime=0),
             error=("gzip-compressed", "gunzip")),
        Case("zip_named_csv", ".csv", lambda at, it: _zip(_csv(g(at, it))),
             error=("a zip archive", "unzip")),
        Case("latin1_byte", ".csv", lambda at, it: _csv(
            [*g(at, it), f"ren\xe9,{it[0]},4,{at(7200)}"]).replace(
                "ren\xe9".encode(), "ren\xe9".encode("latin-1")),
             error=("byte 0xe9", "not valid utf-8 text", "row 5", "'user_id'")),
        Case("ragged_row", ".csv", lambda at, it: _csv(
            [*g(at, it), f"nu3,{it[0]},4,{at(100)},extra"]),
             error=("ragged row", "row 5")),
        Case("truncated_parquet", ".parquet", lambda at, it: _parquet(_table(g(at, it)))[:-40],
             error=("truncated Parquet file", "export it again")),
        Case("csv_named_parquet", ".parquet", lambda at, it: _csv(g(at, it)),
             error=("not a Parquet file",)),
        Case("missing_column", ".csv", lambda at, it: _csv(
            [",".join(r.split(",")[:2] + r.split(",")[3:]) for r in g(at, it)],
            "user_id,item_id,timestamp"),
             error=("column 'rating': required column missing",)),
        Case("every_rating_a_word", ".csv", lambda at, it: _csv(
            [r.replace(",4,", ",good,") for r in g(at, it)]),
             error=("column 'rating'", "no value parses as a number")),
        Case("wrong_delimiter", ".csv", lambda at, it: _csv(
            [r.replace(",", ";") for r in g(at, it)], HEADER.replace(",", ";")),
             error=("looks ';'-delimited",)),
        Case("ids_as_bytes", ".parquet", lambda at, it: _parquet(pa.table({
            "user_id": pa.array([b"nu1"], pa.binary()), "item_id": [it[0]], "rating": [4.0],
            "timestamp": [at(60)]})), error=("column 'user_id'", "bytes")),
        # -- rows set aside with their reason; the rest of the day is scored ---------------
        Case("rating_out_of_scale", ".csv", lambda at, it: _csv(
            [*g(at, it), f"nu3,{it[0]},7,{at(100)}"]),
             quarantine={5: "rating out of scale [1, 5]"}, good_users=GOOD),
        Case("duplicated_rows", ".csv", lambda at, it: _csv([*g(at, it), g(at, it)[0]]),
             quarantine={5: "duplicate (user_id, item_id, timestamp)"}, good_users=GOOD),
        Case("row_a_month_after_the_night", ".csv", lambda at, it: _csv(
            [*g(at, it), f"nu3,{it[0]},4,{at(30 * 86400)}"]),
             quarantine={5: "timestamp after its night"}, good_users=GOOD),
        Case("row_from_the_year_before", ".csv", lambda at, it: _csv(
            [*g(at, it), f"nu3,{it[0]},4,{at(-365 * 86400)}"]),
             quarantine={5: "timestamp before its night"}, good_users=GOOD),
        Case("some_milliseconds", ".csv", lambda at, it: _csv(
            [*g(at, it), f"nu3,{it[0]},4,{at(100) * 1000}"]),
             quarantine={5: "timestamp looks like milliseconds"}, good_users=GOOD),
        Case("unknown_item", ".csv", lambda at, it: _csv(
            [*g(at, it), f"nu3,no-such-item,4,{at(100)}"]),
             quarantine={5: "item_id not in items table"}, good_users=GOOD),
        Case("empty_user_id", ".csv", lambda at, it: _csv([*g(at, it), f",{it[0]},4,{at(100)}"]),
             quarantine={5: "user_id missing"}, good_users=GOOD),
        Case("blank_timestamp", ".csv", lambda at, it: _csv([*g(at, it), f"nu3,{it[0]},4,"]),
             quarantine={5: "timestamp missing or unparseable"}, good_users=GOOD),
        Case("one_rating_a_word", ".csv", lambda at, it: _csv(
            [*g(at, it), f"nu3,{it[0]},five,{at(100)}"]),
             quarantine={5: "rating missing (NaN)"}, good_users=GOOD),
        Case("infinite_rating", ".csv", lambda at, it: _csv(
            [*g(at, it), f"nu3,{it[0]},inf,{at(100)}"]),
             quarantine={5: "rating not finite"}, good_users=GOOD),
        Case("parquet_with_bad_rows", ".parquet", lambda at, it: _parquet(_table(
            [*g(at, it), f"nu3,{it[0]},0,{at(100)}", f"nu4,{it[1]},4,{at(100) * 1000}"])),
             quarantine={5: "rating out of scale", 6: "looks like milliseconds"},
             good_users=GOOD),
        Case("bom_and_crlf", ".csv", lambda at, it: b"\xef\xbb\xbf" + _csv(g(at, it)).replace(
            b"\n", b"\r\n"), good_users=GOOD),
        # -- whole nights --------------------------------------------------------------------
        Case("every_timestamp_in_milliseconds", ".csv", lambda at, it: _csv(
            [",".join([*r.split(",")[:3], str(int(r.split(",")[3]) * 1000)])
             for r in g(at, it)]),
             rejected="every one of the night's 4 rows was quarantined"),
        Case("header_only", ".csv", lambda at, it: _csv([]), empty=True),
    ]


CASES = cases()


def _table(lines: list[str]) -> pa.Table:
    cols = list(zip(*(line.split(",") for line in lines), strict=True))
    return pa.table({"user_id": list(cols[0]), "item_id": list(cols[1]),
                     "rating": [float(x) for x in cols[2]],
                     "timestamp": [int(x) for x in cols[3]]})


def clock(night: dt.date) -> Callable[[int], int]:
    """Seconds into ``night`` (UTC) -> epoch seconds."""
    start = int(dt.datetime.combine(night, dt.time(), tzinfo=dt.UTC).timestamp())
    return lambda seconds: start + seconds
