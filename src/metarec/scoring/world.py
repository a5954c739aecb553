"""The state of the world on an as-of date, and who gets scored on it.

The world on DATE is every interaction dated before the end of that day (UTC): the validated
log plus the daily files of a landing folder (``<YYYY-MM-DD>.parquet`` or ``.csv``, canonical
columns) dated on or before DATE. Files dated later are not read, so a batch for an old date
stays reproducible while new files keep arriving.

Selection (``users_to_score``): *active* means a last interaction within the D days ending with
DATE, i.e. ``timestamp >= end - D * 86400`` with ``end`` = midnight after DATE. Cold users have
1..N interactions, dynamic (warm) users more than N.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pandas.api.types import union_categoricals

from metarec.errors import DataError, ParamsError

DAY = 86_400
COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_as_of(value: str | None) -> dt.date:
    """A YYYY-MM-DD string as a date; the batch folder is named after it."""
    if value is None:
        raise ParamsError("score: no as-of date (pass --as-of YYYY-MM-DD or set score.as_of)")
    if not _DATE.match(value):
        raise ParamsError(f"score.as_of: {value!r} is not a YYYY-MM-DD date")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ParamsError(f"score.as_of: {value!r}: {exc}") from exc


def day_end(day: dt.date) -> int:
    """Epoch seconds of the midnight (UTC) that ends ``day``: the world is ``timestamp < this``."""
    midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return int(midnight.timestamp())


def landing_files(landing_dir: str | Path | None, day: dt.date) -> list[Path]:
    """Daily files dated on or before ``day``, in date order; other names are an error."""
    if landing_dir is None:
        return []
    folder = Path(landing_dir)
    if not folder.is_dir():
        raise DataError("landing folder not found (score.landing_dir)", file=str(folder))
    found: list[tuple[dt.date, Path]] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.suffix not in (".parquet", ".csv") or not _DATE.match(path.stem):
            raise DataError("landing files must be named <YYYY-MM-DD>.parquet or .csv",
                            file=str(path))
        try:
            date = dt.date.fromisoformat(path.stem)
        except ValueError as exc:
            raise DataError(f"not a date: {exc}", file=str(path)) from exc
        if date <= day:
            found.append((date, path))
    dates = [d for d, _ in found]
    if len(set(dates)) != len(dates):
        dup = next(d for d in dates if dates.count(d) > 1)
        raise DataError(f"two landing files for {dup} (.parquet and .csv)", file=str(folder))
    return [p for _, p in found]


def read_landing(path: Path) -> pd.DataFrame:
    """One daily file, checked to hold the canonical columns and types (first bad cell named)."""
    if path.suffix == ".csv":
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        raw = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}", file=str(path),
                        column=missing[0])
    extra = [c for c in raw.columns if c not in (*COLUMNS, "source_row")]
    if extra:
        raise DataError(f"unexpected column(s) {', '.join(map(str, extra))}", file=str(path),
                        column=str(extra[0]))
    out = pd.DataFrame(index=raw.index)
    for col in ("user_id", "item_id"):
        values = raw[col]
        if path.suffix == ".parquet" and not (pd.api.types.is_string_dtype(values)
                                              or values.dtype == object):
            raise DataError(f"expected string ids, got {values.dtype}", file=str(path),
                            column=col)
        text = values.astype("string")
        bad = text.isna() | (text.str.len() == 0)
        if (path.suffix == ".parquet" and values.dtype == object
                and pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty")):
            # infer_dtype is one C-level pass; only a bad file pays for finding the row
            bad |= ~values.map(lambda v: isinstance(v, str) or v is None)
        _first_bad(bad, path, col, "empty or non-string id")
        out[col] = text
    rating = pd.to_numeric(raw["rating"], errors="coerce").astype("float64")
    _first_bad(~np.isfinite(rating.to_numpy()), path, "rating", "not a number")
    out["rating"] = rating
    ts = pd.to_numeric(raw["timestamp"], errors="coerce").astype("float64")
    whole = np.isfinite(ts.to_numpy()) & (np.floor(ts.to_numpy()) == ts.to_numpy())
    _first_bad(~whole, path, "timestamp", "not an integer epoch-seconds timestamp")
    out["timestamp"] = ts.astype("int64")
    return out


def _first_bad(bad: pd.Series | np.ndarray, path: Path, column: str, what: str) -> None:
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{what} (rows counted from 1 after the header)", file=str(path),
                        row=row + 1, column=column)


def read_log(path: str | Path) -> pd.DataFrame:
    """The canonical columns of a validated interactions file, ids as categoricals: read as
    Parquet dictionaries, a log of N rows holds N int32 codes per id column and each distinct
    id once (string ids held per row cost tens of bytes each)."""
    table = pq.read_table(path, columns=list(COLUMNS), read_dictionary=["user_id", "item_id"])
    return table.to_pandas(self_destruct=True)


def load_world(interactions: pd.DataFrame, landing: list[Path], end: int) -> pd.DataFrame:
    """Every interaction before ``end``, in file order: user_id, item_id (categoricals whose
    categories are the ids present, sorted), rating, timestamp."""
    parts = [interactions[list(COLUMNS)]] + [read_landing(p) for p in landing]
    parts = [p[p["timestamp"].to_numpy() < end] for p in parts]
    ids = {col: union_categoricals([_categorical(p[col]) for p in parts],
                                   sort_categories=True, ignore_order=True)
           for col in ("user_id", "item_id")}
    return pd.DataFrame({
        **{col: pd.Categorical(cat).remove_unused_categories() for col, cat in ids.items()},
        "rating": np.concatenate([p["rating"].to_numpy(np.float64) for p in parts]),
        "timestamp": np.concatenate([p["timestamp"].to_numpy(np.int64) for p in parts])})


def _categorical(ids: pd.Series) -> pd.Categorical:
    """An id column as a categorical of string categories (read_log's, or strings encoded)."""
    cat = ids.array if isinstance(ids.dtype, pd.CategoricalDtype) else pd.Categorical(
        ids.astype("string").astype(object))
    return cat.set_categories(cat.categories.astype(object)) if len(cat.categories) else cat


@dataclass(frozen=True)
class Selection:
    """Users to score, in user_id order; ``kind`` is "cold" or "dynamic" per user."""

    user_ids: pd.Series     # (U,) string
    kinds: np.ndarray       # (U,) object: cold | dynamic
    counts: np.ndarray      # (U,) int64: interactions so far


def users_to_score(log: pd.DataFrame, end: int, max_interactions: int, active_days: int,
                   dynamic: bool) -> Selection:
    """Cold users (1..N interactions) and, if ``dynamic``, warm ones (> N); both active."""
    per_user = log.groupby("user_id", sort=True, observed=True)["timestamp"].agg(["size", "max"])
    active = per_user["max"].to_numpy() >= end - active_days * DAY
    n = per_user["size"].to_numpy()
    cold = active & (n >= 1) & (n <= max_interactions)
    warm = active & (n > max_interactions) & dynamic
    keep = cold | warm
    kinds = np.where(cold, "cold", "dynamic")[keep].astype(object)
    return Selection(user_ids=pd.Series(per_user.index[keep], dtype="string"), kinds=kinds,
                     counts=n[keep].astype(np.int64))
