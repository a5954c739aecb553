"""The day's landing files: read like the log they extend, checked by the validate stage's rules.

A landing file ``<YYYY-MM-DD>.parquet|.csv`` (``score.landing_dir``) holds the interactions of
the day it is named after. It has the columns and units of the log it extends: the
``ingest.table`` mapping for a table source, the canonical columns (user_id, item_id, rating,
timestamp in epoch seconds) otherwise, and is read by the same reader as that log
(:func:`metarec.data.sources.table.read_log`), so an unreadable file (empty, compressed,
another encoding, a ragged row, a truncated Parquet) is a :class:`DataError` that says what
the file is and how to fix it.

Every row then goes through the validate stage's rules and their Great Expectations twins
(:mod:`metarec.data.validation`, under the same ``validate.policy``), plus what only a day's
file can break: a row dated outside its night (with the unit it was probably written in, when
read in another unit it falls on the night), an item the catalogue does not hold, a row
repeated within the landing files. New users are expected: that is who the nightly batch is
for. Under policy ``quarantine`` the rows set aside are kept with their reason; under
``fail`` the first one stops the run, naming file, row and column. Rows in = kept +
quarantined, per file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from metarec.config import TableSource, ValidateParams
from metarec.data import validation as v
from metarec.data.batches import FirstUse, IdCodes
from metarec.data.log_check import quarantine_bits, reason_text
from metarec.data.sources.table import read_log
from metarec.data.tally import Tally, add_batch
from metarec.errors import DataError

DAY = 86_400
UNITS = {"s": (1, "epoch seconds"), "ms": (1_000, "milliseconds"),
         "us": (1_000_000, "microseconds"), "ns": (1_000_000_000, "nanoseconds")}
CANONICAL = TableSource(user_col="user_id", item_col="item_id", rating_col="rating",
                        timestamp_col="timestamp", timestamp_unit="s")
KEPT = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("rating", pa.float64()),
                  ("timestamp", pa.int64()), ("src", pa.int64()), ("row", pa.int64())])
QUARANTINE = pa.schema([("file", pa.string()), ("source_row", pa.int64()),
                        ("user_id", pa.string()), ("item_id", pa.string()),
                        ("rating", pa.float64()), ("timestamp", pa.int64()),
                        ("reason", pa.string())])


def landing_format(source: str, table: TableSource) -> TableSource:
    """How landing files are read: the log's own mapping for a table source, the canonical
    columns otherwise."""
    return table if source == "table" else CANONICAL


@dataclass
class LandingCheck:
    """The verdict on a set of landing files: rows kept (canonical, in file then row order,
    ``src`` = 1-based file number, ``row`` = 0-based position in it), rows set aside with
    their reason, and the summary (per file rows in / kept / quarantined, every rule)."""

    kept: pa.Table
    quarantine: pa.Table
    summary: dict[str, Any]

    def night(self, name: str) -> dict[str, Any] | None:
        """The summary entry of the file ``name`` (None: not among the files)."""
        return next((f for f in self.summary["files"] if f["file"] == name), None)


def night_of(path: Path) -> dt.date:
    """The day a landing file is named after (the names are checked by the caller)."""
    return dt.date.fromisoformat(path.stem)


def _night_start(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())


def check_landing(files: list[Path], spec: TableSource, rating: dict[str, Any],
                  items: pa.Array, params: ValidateParams) -> LandingCheck:
    """Read and check every landing file (in the order given, one night each).

    ``rating``: the log's label scale (schema.json ``rating``: min, max); ``items``: the ids
    of the validated item table (the catalogue); ``params``: the validate stage's section
    (policy, examples, plausible dates)."""
    frames = []
    for i, path in enumerate(files, start=1):
        frame = read_log(path, spec, allow_empty=True)
        frames.append(frame.assign(src=i, row=np.arange(len(frame), dtype=np.int64),
                                   night=_night_start(night_of(path))))
    df = (pd.concat(frames, ignore_index=True) if frames else
          read_log_columns()).drop(columns=["platform"], errors="ignore")
    n = len(df)
    names = np.array([p.name for p in files] or [""], dtype=object)
    file_name = names[df["src"].to_numpy(np.int64) - 1] if n else np.zeros(0, object)
    line = df["source_row"].to_numpy(np.int64)
    ts = df["timestamp"]
    offset = ts - pd.Series(df["night"].to_numpy(np.int64), index=df.index, dtype="Int64")
    frame = pd.DataFrame({   # integers with nulls as float64, as the validate stage reads them
        "user_id": df["user_id"], "item_id": df["item_id"], "rating": df["rating"],
        "timestamp": ts.astype("float64"), "night_offset": offset.astype("float64"),
        # GX and the report name each row as file:row (rows are 1-based, header not counted)
        "source_row": pd.Series(file_name, dtype=object) + ":" + pd.Series(line).astype(str)})

    min_ts = v.timestamp_bound(params.min_timestamp, "min_timestamp")
    max_ts = (int(pd.Timestamp.now(tz="UTC").timestamp()) if params.max_timestamp is None
              else v.timestamp_bound(params.max_timestamp, "max_timestamp"))
    rules = v.interaction_rules(frame, rating, min_ts, max_ts, params.min_timestamp,
                                params.max_timestamp or "now")
    rules += night_rules(frame, spec.timestamp_unit)
    codes = IdCodes(pa.array(pd.Series(items, dtype="string").dropna().unique(), pa.string()))
    item_codes = codes(pa.array(frame["item_id"], pa.string()))
    unique = pd.Series(items, dtype="string").dropna().drop_duplicates()
    ref, ref_frame = v.reference_rule(frame, item_codes, len(codes.known), FirstUse()(item_codes),
                                      pd.Series(unique.to_numpy(), index=unique), "items")
    rules.append(ref)
    others = quarantine_bits(rules, n) != 0
    users = IdCodes(pa.array([], pa.string()))(pa.array(frame["user_id"], pa.string()))
    dup = v.duplicates(users, item_codes, ts.fillna(0).to_numpy(np.int64),
                       ts.isna().to_numpy(), others)
    rules.append(v.duplicate_rule(n, dup))
    bits = quarantine_bits(rules, n)

    from metarec.data.gx import GXRunner  # only when there are files to check (~4 s import)

    tallies = [Tally.of(r) for r in rules]
    add_batch(tallies, rules, {"interactions": frame, ref.frame: ref_frame}, frame,
              "source_row", GXRunner(params.examples), params.examples)
    expectations = [t.entry(params.examples, params.max_timestamp) for t in tallies]
    disagree = [e for e in expectations if e["agrees_with_gx"] is False]
    if disagree:
        raise RuntimeError("landing validation masks disagree with Great Expectations on: "
                           + "; ".join(f"{e['expectation_type']}({e['column']})"
                                       for e in disagree))
    bad = bits != 0
    reasons = [r.reason for r in rules]
    if params.policy == "fail" and bad.any():
        pos = int(np.flatnonzero(bad)[0])
        j = (int(bits[pos]) & -int(bits[pos])).bit_length() - 1    # its first rule
        raise DataError(f"{reasons[j]}; {int(bad.sum())} landing row(s) failed validation "
                        "(validate.policy: fail; quarantine sets them aside instead)",
                        file=str(files[int(df['src'].iloc[pos]) - 1]), row=int(line[pos]),
                        column=rules[j].column)
    per_file = [{"file": p.name, "night": night_of(p).isoformat(),
                 "rows_in": int((df["src"] == i).sum()),
                 "rows_kept": int(((df["src"] == i).to_numpy() & ~bad).sum()),
                 "rows_quarantined": int(((df["src"] == i).to_numpy() & bad).sum())}
                for i, p in enumerate(files, start=1)]
    summary = {"policy": params.policy, "rows_in": n, "rows_kept": int((~bad).sum()),
               "rows_quarantined": int(bad.sum()), "files": per_file,
               "expectations": expectations}
    return LandingCheck(kept=_kept(df[~bad]), quarantine=_quarantine(
        df[bad], file_name[bad], reason_text(reasons, bits[bad])), summary=summary)


def read_log_columns() -> pd.DataFrame:
    """An empty landing frame (no files) with the columns :func:`check_landing` reads."""
    return pd.DataFrame({"user_id": pd.Series(dtype="string"),
                         "item_id": pd.Series(dtype="string"),
                         "rating": pd.Series(dtype="float64"),
                         "timestamp": pd.Series(dtype="Int64"),
                         "source_row": pd.Series(dtype="int64"),
                         "src": pd.Series(dtype="int64"), "row": pd.Series(dtype="int64"),
                         "night": pd.Series(dtype="int64")})


def night_rules(frame: pd.DataFrame, unit: str) -> list[v.Rule]:
    """A landing row is dated on the night its file is named after (``night_offset`` in
    [0, 86400)); one dated elsewhere that, read in another unit, falls on the night gets a
    second reason naming that unit (derived, no GX twin)."""
    off = frame["night_offset"]
    before = (off < 0).fillna(False).astype(bool)
    after = (off >= DAY).fillna(False).astype(bool)
    rules = [
        v.Rule("interactions", "interactions", "timestamp",
               "timestamp before its night (a landing file holds the day it is named after)",
               before, ("expect_column_values_to_be_between",
                        {"column": "night_offset", "min_value": 0})),
        v.Rule("interactions", "interactions", "timestamp",
               "timestamp after its night (a landing file holds the day it is named after)",
               after, ("expect_column_values_to_be_between",
                       {"column": "night_offset", "max_value": DAY - 1})),
    ]
    if unit not in UNITS:     # iso dates carry their own unit
        return rules
    scale, declared = UNITS[unit]
    ts = frame["timestamp"].to_numpy(np.float64)
    start = ts - off.to_numpy(np.float64)
    raw = ts * scale                    # the value as written in the file
    outside = (before | after).to_numpy()
    for name, (other, label) in UNITS.items():
        if name == unit:
            continue
        read = np.floor(raw / other)
        with np.errstate(invalid="ignore"):
            hit = outside & (read >= start) & (read < start + DAY)
        rules.append(v.Rule(
            "interactions", "interactions", "timestamp",
            f"timestamp looks like {label} (read so, it falls on its night; landing "
            f"timestamps are {declared})", pd.Series(hit, index=frame.index), None))
    return rules


def _kept(rows: pd.DataFrame) -> pa.Table:
    return pa.table({"user_id": pa.array(rows["user_id"], pa.string()),
                     "item_id": pa.array(rows["item_id"], pa.string()),
                     "rating": pa.array(rows["rating"].to_numpy(np.float64)),
                     "timestamp": pa.array(rows["timestamp"].to_numpy(np.int64)),
                     "src": pa.array(rows["src"].to_numpy(np.int64)),
                     "row": pa.array(rows["row"].to_numpy(np.int64))}, schema=KEPT)


def _quarantine(rows: pd.DataFrame, files: np.ndarray, reasons: np.ndarray) -> pa.Table:
    ts = rows["timestamp"]
    return pa.table({
        "file": pa.array(files.astype(object), pa.string()),
        "source_row": pa.array(rows["source_row"].to_numpy(np.int64)),
        "user_id": pa.array(rows["user_id"], pa.string()),
        "item_id": pa.array(rows["item_id"], pa.string()),
        "rating": pa.array(rows["rating"].to_numpy(np.float64)),
        "timestamp": pa.array(ts.fillna(0).to_numpy(np.int64), mask=ts.isna().to_numpy()),
        "reason": pa.array(reasons.astype(object), pa.string())}, schema=QUARANTINE)
