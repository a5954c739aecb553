"""What every source reader shares: the raw-data record and vectorised, error-naming parsing.

Every parse is a vectorised pandas / pyarrow operation; a bad cell is reported with its file,
1-based data row and column.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from metarec.data.encoding import list_series
from metarec.errors import DataError


@dataclass(frozen=True)
class InteractionLog:
    """A source's interaction rows in source order, handed out in batches of rows.

    ``take(a, b)`` gives rows ``[a, b)`` as an arrow table of ``schema`` (the canonical
    columns), so a generated log keeps compact codes and builds its strings one batch at a
    time; a log read from a file is one arrow table, sliced."""

    rows: int
    schema: pa.Schema
    take: Callable[[int, int], pa.Table]

    def __len__(self) -> int:
        return self.rows

    def batches(self, size: int) -> Iterator[pa.Table]:
        """Consecutive tables of ``size`` rows (the last one shorter)."""
        for start in range(0, self.rows, size):
            yield self.take(start, min(start + size, self.rows))

    def frame(self) -> pd.DataFrame:
        """Every row as pandas, ids as "string", timestamps "Int64" (small logs, checks)."""
        frame = self.take(0, self.rows).to_pandas(
            types_mapper=lambda t: pd.StringDtype() if pa.types.is_large_string(t) else None)
        return frame.astype({"timestamp": "Int64"})

    @classmethod
    def of(cls, frame: pd.DataFrame) -> InteractionLog:
        """A log held whole (a file source): one arrow table, sliced into batches."""
        table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
        return cls(table.num_rows, table.schema, lambda a, b: table.slice(a, b - a))


@dataclass
class RawData:
    """What a source yields, before canonical typing: tables plus a description of them.

    ``interactions`` may be given as a DataFrame (a file read whole); it is kept as an
    :class:`InteractionLog` either way, which the ingest stage writes batch by batch."""

    dataset: str
    interactions: InteractionLog          # user_id, item_id, rating, timestamp, source_row
    users: pd.DataFrame                   # user_id + features
    items: pd.DataFrame                   # item_id + features
    user_features: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_features: dict[str, dict[str, Any]] = field(default_factory=dict)
    rating: dict[str, Any] = field(default_factory=lambda: {"kind": "explicit", "min": 1.0,
                                                             "max": 5.0})
    source_files: dict[str, str] = field(default_factory=dict)
    platforms: list[str] | None = None    # declared platform vocabulary; None = no platforms

    def __post_init__(self) -> None:
        if isinstance(self.interactions, pd.DataFrame):
            self.interactions = InteractionLog.of(self.interactions)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_sha256(interactions: pd.DataFrame) -> str:
    """Order-independent fingerprint of (user, item, rating, timestamp) content."""
    frame = interactions[["user_id", "item_id", "rating", "timestamp"]].astype(
        {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"})
    frame = frame.sort_values(["user_id", "item_id", "timestamp"], kind="stable")
    return hashlib.sha256(np.ascontiguousarray(frame.to_numpy(np.float64)).tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------
# helpers


# Delimiters recognised in a header that did not split: "looks ';'-delimited, not ','".
_DELIMITERS = ("::", ";", "\t", "|", ",")
_RAGGED = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


# Leading bytes of files that are not plain text (or not the Parquet a name promises).
_MAGIC = ((b"\x1f\x8b", "gzip-compressed", "decompress it (gunzip)"),
          (b"PK\x03\x04", "a zip archive", "extract the table from it (unzip)"),
          (b"BZh", "bzip2-compressed", "decompress it (bunzip2)"),
          (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it (unzstd)"),
          (b"PAR1", "a Parquet file", "name it .parquet (or set the format to parquet)"))


def sniff(path: Path, expected: str) -> None:
    """Fail, saying what the file really is and how to fix it, when a file is missing, empty,
    or not of the ``expected`` kind (``text`` or ``parquet``): a gzip file named .csv, a CSV
    named .parquet, a Parquet file cut short (its footer missing)."""
    if not path.exists():
        raise DataError("file not found", file=str(path))
    size = path.stat().st_size
    if size == 0:
        raise DataError("file is empty (0 bytes): write at least the header line, or remove "
                        "the file", file=str(path))
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if expected == "parquet":
        if head != b"PAR1":
            what = next((w for magic, w, _ in _MAGIC if head.startswith(magic)), "text or "
                        "another format")
            raise DataError(f"not a Parquet file (it is {what}); convert it to Parquet or "
                            "give it a .csv name if it is CSV", file=str(path))
        if tail != b"PAR1" or size < 12:
            raise DataError(f"a truncated Parquet file ({size} bytes, its footer is missing): "
                            "the copy or export was cut short; copy or export it again",
                            file=str(path))
        return
    for magic, what, fix in _MAGIC:
        if head.startswith(magic):
            raise DataError(f"not plain text: the file is {what}; {fix}", file=str(path))


def read_delimited(path: Path, *, sep: str, names: list[str] | None, header: int | None,
                    encoding: str, allow_empty: bool = False) -> pd.DataFrame:
    """Read a delimited file as strings; every failure is a DataError naming file, row, column.

    ``header=0``: the first record names the columns; ``header=None``: ``names`` do. Records
    are read without names first, so a row with more fields than the header is an error (given
    names, pandas would silently shift such a row into the index). Rows are data records,
    1-based, header not counted; rows with too few fields are padded with nulls (validation
    quarantines them). A UTF-8 byte-order mark is dropped. ``allow_empty``: a header without
    rows is a table of no rows (a landing day without activity), not an error.
    """
    sniff(path, "text")
    has_header = header is not None
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        frame = pd.read_csv(path, sep=sep, header=None, encoding=codec, dtype="string",
                            engine="python" if len(sep) > 1 else "c", keep_default_na=False,
                            na_values=[""])
    except UnicodeDecodeError as exc:
        raise _decode_error(path, sep, has_header, codec, encoding, names) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError("file has no content (blank lines only)", file=str(path)) from exc
    except (pd.errors.ParserError, ValueError) as exc:
        ragged = _RAGGED.search(str(exc))
        if ragged:
            expected, line, saw = map(int, ragged.groups())
            first = "the header" if has_header else "row 1"
            raise DataError(f"ragged row: {saw} fields where {first} has {expected}; check "
                            "the quoting and the delimiter", file=str(path),
                            row=line - has_header) from exc
        raise DataError(f"cannot be parsed: {exc}", file=str(path)) from exc
    if has_header:
        found = ["" if pd.isna(c) else str(c).strip() for c in frame.iloc[0]]
        found = [c or f"Unnamed: {i}" for i, c in enumerate(found)]
        dup = pd.Series(found)[pd.Series(found).duplicated()]
        if len(dup):
            raise DataError("column name appears more than once in the header",
                            file=str(path), column=str(dup.iloc[0]))
        frame = frame.iloc[1:].reset_index(drop=True)
        frame.columns = found
        if frame.shape[1] == 1:
            _check_delimiter(path, sep, found[0], None,
                             "set the delimiter in params (ingest.table.csv_delimiter)")
        if len(frame) == 0 and not allow_empty:
            raise DataError("has a header but no rows", file=str(path))
        return frame
    assert names is not None
    if frame.shape[1] == 1 and len(names) > 1:
        _check_delimiter(path, sep, str(frame.iloc[0, 0]), 1,
                         f"this format is {sep!r}-separated ({', '.join(names)})")
    if frame.shape[1] != len(names):
        extra = frame.iloc[:, len(names):].notna().any(axis=1).to_numpy()
        row = int(np.argmax(extra)) + 1 if extra.any() else 1
        raise DataError(f"{frame.shape[1]} fields where the format has {len(names)} "
                        f"({', '.join(names)})", file=str(path), row=row)
    frame.columns = names
    return frame


def _check_delimiter(path: Path, sep: str, text: str, row: int | None, hint: str) -> None:
    """One field where several were expected: name the delimiter the text seems to use."""
    for other in _DELIMITERS:
        if other != sep and other in text:
            where = "the header" if row is None else "the row"
            raise DataError(f"no {sep!r} delimiter: {where} looks {other!r}-delimited "
                            f"({text[:60]!r}); {hint}", file=str(path), row=row)


def _decode_error(path: Path, sep: str, has_header: bool, codec: str, encoding: str,
                  names: list[str] | None) -> DataError:
    """Locate the first byte that is not valid text: row (record) and column of the file."""
    raw = path.read_bytes()  # only on this error path
    try:
        raw.decode(codec)
        start = 0
    except UnicodeDecodeError as exc:
        start = exc.start
    line_start = raw.rfind(b"\n", 0, start) + 1
    row = raw.count(b"\n", 0, start) + 1 - has_header
    field = raw[line_start:start].count(sep.encode("ascii"))
    header = (raw.split(b"\n", 1)[0].decode(codec, errors="replace").strip().split(sep)
              if has_header else names or [])
    column = header[field].strip() if field < len(header) and row > 0 else None
    return DataError(f"byte 0x{raw[start]:02x} at offset {start} is not valid {encoding} text"
                     f"{' (in the header)' if row == 0 else ''}; set the file's encoding in "
                     "params (ingest.table.encoding for a table source, e.g. latin-1)",
                     file=str(path), row=row if row > 0 else None, column=column)


def numeric(col: pd.Series) -> pd.Series:
    """Strings -> float64; unparseable values become NaN (validation reports them by row)."""
    return pd.to_numeric(col, errors="coerce").astype("float64")


def epoch_seconds(col: pd.Series, unit: str) -> pd.Series:
    """Raw time values -> nullable Int64 seconds since the epoch (null where unparseable)."""
    if unit == "iso":
        ts = pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601")
        out = pd.Series(pd.NA, index=col.index, dtype="Int64")
        ok = ts.notna()
        out[ok] = (ts[ok] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        return out
    scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    num = pd.to_numeric(col, errors="coerce").astype("float64")
    finite = np.isfinite(num) & (num.abs() < 9.2e18)
    out = pd.Series(pd.NA, index=col.index, dtype="Int64")
    out[finite] = np.floor(num[finite] / scale).astype("int64")
    return out


def check_parsed(raw: pd.Series, parsed: pd.Series, file: str, column: str, what: str,
                  hint: str = "") -> None:
    """A column none of whose given values parse is the wrong column or type: fail, naming the
    first value. Single unparseable cells stay null, for validation to quarantine by row."""
    given = raw.notna().to_numpy()
    if given.any() and parsed.isna().to_numpy()[given].all():
        pos = int(np.flatnonzero(given)[0])
        raise DataError(f"no value parses as {what} (first: {raw.iloc[pos]!r}){hint}",
                        file=file, row=pos + 1, column=column)


def clean_ids(col: pd.Series) -> pd.Series:
    """Ids as text, unchanged but for surrounding blanks; a blank id is a missing one."""
    ids = col.astype("string").str.strip()
    return ids.mask(ids == "")


def coarsen_zip(col: pd.Series) -> pd.Series:
    """US zip codes -> their first digit (a region); anything else -> 'other'."""
    first = col.astype("string").str.strip().str[:1]
    return first.where(first.str.isdigit().fillna(False), "other").astype("string")


def interactions_frame(users: pd.Series, items: pd.Series, rating: pd.Series, ts: pd.Series,
                       source_row: np.ndarray | None = None,
                       platform: pd.Series | None = None) -> pd.DataFrame:
    """The canonical interaction columns; ``platform`` (text ids, blank = missing) only when
    the log has one."""
    n = len(users)
    frame = pd.DataFrame({
        "user_id": clean_ids(users).to_numpy(),
        "item_id": clean_ids(items).to_numpy(),
        "rating": rating.to_numpy(np.float64, na_value=np.nan),
        "timestamp": ts.to_numpy(),
        "source_row": np.arange(1, n + 1, dtype=np.int64) if source_row is None else source_row,
    }).astype({"user_id": "string", "item_id": "string", "timestamp": "Int64"})
    if platform is not None:
        frame["platform"] = clean_ids(platform).to_numpy()
        frame = frame.astype({"platform": "string"})
    return frame


def split_lists(col: pd.Series, sep: str, drop: tuple[str, ...] = ()) -> pd.Series:
    """'A|B|C' -> ['A', 'B', 'C'] (arrow split on a literal separator, no per-row Python)."""
    arr = pa.array(col.astype("string").fillna(""), type=pa.string())
    import pyarrow.compute as pc

    parts = pc.split_pattern(arr, pattern=sep)
    if drop:
        flat = pc.list_flatten(parts)
        keep = pc.invert(pc.is_in(flat, value_set=pa.array(list(drop) + [""])))
        parent = pc.list_parent_indices(parts)
        kept_parent = np.asarray(parent)[np.asarray(keep)]
        counts = np.bincount(kept_parent, minlength=len(parts))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        parts = pa.ListArray.from_arrays(pa.array(offsets), flat.filter(keep))
    return list_series(parts, col.index)


# ------------------------------------------------------------------------------------------
# MovieLens-100K: GroupLens archive first, the recbole wheel on PyPI second


