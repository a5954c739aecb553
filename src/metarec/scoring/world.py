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

import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from metarec.errors import DataError, ParamsError
from metarec.io import arrow_frame, scratch_dir
from metarec.schema import iso_date

DAY = 86_400
COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_as_of(value: str | None) -> dt.date:
    """A YYYY-MM-DD string as a date; the batch folder is named after it."""
    if value is None:
        raise ParamsError("score: no as-of date (pass --as-of YYYY-MM-DD or set score.as_of)")
    return iso_date(value, "score.as_of")


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


class World:
    """Every interaction before ``end``: the validated log, scanned where it lies, and the
    landing rows that passed validation (:func:`metarec.data.landing.check_landing`: the
    canonical columns plus ``src``, the 1-based landing file, and ``row`` in it), behind one
    DuckDB view. It is queried
    and streamed, never loaded whole: the nightly batch of millions of users holds one
    chunk's rows at a time, and the engine aggregates and sorts out of core within
    ``memory_mb``.

    ``log`` is the validated interactions file, or a table of the canonical columns (tests).
    Rows keep their file order as ``src`` (0 the log, 1.. the landing files in date order)
    and ``row``; every ordering ends with them, so the same inputs give the same rows in the
    same order. Strings compare byte by byte (UTF-8), i.e. by code point, as Python sorts.
    """

    def __init__(self, log: str | Path | pd.DataFrame, landing: pa.Table | None, end: int,
                 memory_mb: int = 256, threads: int | None = None) -> None:
        import duckdb  # imported here: only the scoring path needs it

        self.end = int(end)
        self.memory_mb = int(memory_mb)
        self._tmp = scratch_dir("world")
        self.con = duckdb.connect(config={
            "memory_limit": f"{int(memory_mb)}MB", "temp_directory": self._tmp.name,
            # as many threads as torch uses: the one knob a run sets
            "threads": int(threads or max(torch.get_num_threads(), 1)),
            "preserve_insertion_order": False})
        if isinstance(log, pd.DataFrame):
            self.con.register("log_file", _canonical(log).append_column(
                "file_row_number", pa.array(np.arange(len(log), dtype=np.int64))))
        else:
            self.con.read_parquet(str(log), file_row_number=True).create_view("log_file")
        parts = [_part("log_file", "0", "file_row_number", self.end)]
        if landing is not None:
            self.con.register("landing", landing)
            parts.append(_part("landing", "src", "row", self.end))
        self.con.execute("CREATE TEMP VIEW world AS " + " UNION ALL ".join(parts))

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        self._tmp.cleanup()

    @contextlib.contextmanager
    def _within_memory(self) -> Iterator[None]:
        """An engine query that ran out of its memory (it spills sorts and joins to disk,
        but not everything) is a params problem with one fix: say which."""
        import duckdb

        try:
            yield
        except duckdb.OutOfMemoryException as exc:
            raise ParamsError(
                f"the scoring engine ran out of its {self.memory_mb} MB "
                f"(score.engine_memory_mb); raise it, e.g. to {2 * self.memory_mb}: "
                f"{str(exc).splitlines()[0]}") from exc

    def _execute(self, query: str) -> None:
        with self._within_memory():
            self.con.execute(query)

    def _all(self, query: str) -> pa.Table:
        with self._within_memory():
            return self.con.sql(query).to_arrow_table()

    def count(self) -> int:
        """Interactions in the world."""
        return int(self._all("SELECT count(*) AS n FROM world")["n"][0].as_py())

    def frame(self) -> pd.DataFrame:
        """The whole world in file order (user_id, item_id as strings): for callers that
        judge a small world in memory, such as the backtest."""
        return arrow_frame(self._all("SELECT user_id, item_id, rating, timestamp FROM world "
                                     "ORDER BY src, row"))

    def item_counts(self, lo: int, hi: int) -> pd.Series:
        """Interactions per item id with a timestamp in [lo, hi) (items without any left
        out): what is popular now (:mod:`metarec.data.recency`)."""
        table = self._all(f"SELECT item_id, count(*)::BIGINT AS n FROM world WHERE timestamp "
                          f">= {int(lo)} AND timestamp < {int(hi)} GROUP BY item_id")
        ids = table["item_id"].combine_chunks().cast(pa.string())
        return pd.Series(table["n"].to_numpy(), index=pd.Index(
            pd.arrays.ArrowStringArray(ids), dtype="string"), dtype=np.int64)

    def item_ids(self) -> pd.Index:
        """The distinct item ids of the world, sorted."""
        ids = self._all("SELECT DISTINCT item_id FROM world ORDER BY item_id")["item_id"]
        return pd.Index(pd.arrays.ArrowStringArray(ids.combine_chunks().cast(pa.string())),
                        dtype="string")

    def choose(self, max_interactions: int, active_days: int, dynamic: bool
               ) -> dict[str, int]:
        """Choose the users to score (module docstring), numbered in user_id order (``pos``)
        inside the engine, where :meth:`select` and :meth:`export` read them from; returns
        how many users, cold and dynamic."""
        n = int(max_interactions)
        self._execute(f"""
            CREATE OR REPLACE TEMP TABLE chosen AS
            SELECT user_id, n, CASE WHEN n <= {n} THEN 'cold' ELSE 'dynamic' END AS kind,
                   (row_number() OVER (ORDER BY user_id) - 1)::BIGINT AS pos
            FROM (SELECT user_id, count(*)::BIGINT AS n, max(timestamp) AS last
                  FROM world GROUP BY user_id)
            WHERE last >= {self.end - int(active_days) * DAY}
              AND (n <= {n} OR {bool(dynamic)})""")
        got = self._all("SELECT count(*) AS users, count(*) FILTER (kind = 'cold') AS cold "
                        "FROM chosen")
        users, cold = int(got["users"][0].as_py()), int(got["cold"][0].as_py())
        return {"users": users, "cold_users": cold, "dynamic_users": users - cold}

    def select(self, max_interactions: int, active_days: int, dynamic: bool) -> Selection:
        """The chosen users (:meth:`choose`) as one table in memory."""
        self.choose(max_interactions, active_days, dynamic)
        table = self._all("SELECT user_id, n, kind FROM chosen ORDER BY pos")
        return Selection(user_ids=pd.Series(pd.arrays.ArrowStringArray(
                             table["user_id"].combine_chunks().cast(pa.string())),
                             dtype="string"),
                         kinds=np.asarray(table["kind"].to_pylist(), dtype=object),
                         counts=table["n"].to_numpy().astype(np.int64))

    def export(self, folder: str | Path, users: str | Path, items: pa.Table, lo: int,
               hi: int) -> tuple[Path, Path]:
        """Write what scoring the chosen users at positions lo..hi-1 reads, in pos order, to
        two Parquet files in ``folder``, sorting out of core; the engine can then be closed
        and its memory freed before the scoring starts.

        - ``users.parquet``: pos, kind, user_id and the user's row of the feature table
          ``users`` (null features where the table lacks the user; an id twice in it is an
          error: which row would be the user's?);
        - ``rows.parquet``: pos, item (the row of its id in ``items`` (item_id, idx)),
          rating of each interaction, by pos, time, item, then file order.
        """
        self.con.read_parquet(str(users)).create_view("user_table", replace=True)
        dup = self._all("SELECT user_id FROM user_table GROUP BY user_id "
                        "HAVING count(*) > 1 ORDER BY user_id LIMIT 1")["user_id"]
        if len(dup):
            raise DataError(f"duplicate id {dup[0].as_py()!r} in the feature table",
                            file=str(users), column="user_id")
        self.con.register("catalogue", items)
        where = f"c.pos >= {int(lo)} AND c.pos < {int(hi)}"
        out = Path(folder)
        queries = {
            "users.parquet": "SELECT c.pos, c.kind, c.user_id, u.* EXCLUDE (user_id) "
                             "FROM chosen c LEFT JOIN user_table u USING (user_id) "
                             f"WHERE {where} ORDER BY c.pos",
            "rows.parquet": "SELECT c.pos, k.idx AS item, CAST(w.rating AS FLOAT) AS rating "
                            "FROM world w JOIN chosen c USING (user_id) "
                            f"JOIN catalogue k USING (item_id) WHERE {where} "
                            "ORDER BY c.pos, w.timestamp, k.idx, w.src, w.row"}
        for name, query in queries.items():
            target = str(out / name).replace("'", "''")
            self._execute(f"COPY ({query}) TO '{target}' "
                          "(FORMAT parquet, ROW_GROUP_SIZE 131072)")
        return out / "users.parquet", out / "rows.parquet"


def _canonical(frame: pd.DataFrame) -> pa.Table:
    """The canonical columns of a log as an arrow table of fixed types."""
    return pa.table({"user_id": pa.array(frame["user_id"].astype("string"), pa.string()),
                     "item_id": pa.array(frame["item_id"].astype("string"), pa.string()),
                     "rating": pa.array(frame["rating"].to_numpy(np.float64)),
                     "timestamp": pa.array(frame["timestamp"].to_numpy(np.int64))})


def _part(name: str, src: str, row: str, end: int) -> str:
    return (f"SELECT user_id, item_id, CAST(rating AS DOUBLE) AS rating, "
            f"CAST(timestamp AS BIGINT) AS timestamp, {src} AS src, {row} AS row "
            f"FROM {name} WHERE timestamp < {end}")


@dataclass(frozen=True)
class Selection:
    """Users to score, in user_id order; ``kind`` is "cold" or "dynamic" per user."""

    user_ids: pd.Series     # (U,) string
    kinds: np.ndarray       # (U,) object: cold | dynamic
    counts: np.ndarray      # (U,) int64: interactions so far


def users_to_score(world: World, max_interactions: int, active_days: int, dynamic: bool
                   ) -> Selection:
    """Cold users (1..N interactions) and, if ``dynamic``, warm ones (> N); both active."""
    return world.select(max_interactions, active_days, dynamic)


def runs(path: str | Path, bounds: list[int], batch_rows: int = 1 << 16
         ) -> Iterator[pa.Table]:
    """For each i, the rows of the Parquet file ``path`` (sorted by its ``pos`` column, as
    :meth:`World.export` writes) with bounds[i] <= pos < bounds[i+1], reading it batch by
    batch: a run of users may span several batches, or share one."""
    source = pq.ParquetFile(path)
    batches = source.iter_batches(batch_rows)
    held = source.schema_arrow.empty_table()
    last = -1
    for b in bounds[1:]:
        while not len(held) or held["pos"][-1].as_py() < b:
            batch = next(batches, None)
            if batch is None:
                break
            pos = batch.column("pos").to_numpy()
            if len(pos) and (pos[0] < last or (np.diff(pos) < 0).any()):
                raise RuntimeError(f"{path}: rows out of pos order")
            last = int(pos[-1]) if len(pos) else last
            held = pa.concat_tables([held, pa.Table.from_batches([batch])])
        cut = int(np.searchsorted(held["pos"].to_numpy(), b))
        yield held.slice(0, cut)
        held = held.slice(cut)
