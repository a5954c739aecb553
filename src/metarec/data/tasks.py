"""Episodes on disk -> padded task tensors for models, meta-learners and evaluation.

The episodes stage writes ``episodes.parquet`` (one row per task, role, item) beside
``vocab.json`` and the validated ``users.parquet`` / ``items.parquet``. :func:`load_episodes`
reads them back with every feature encoded, and :func:`to_batch` turns any set of tasks into
padded tensors with masks, so that a meta-batch of tasks of unequal sizes is processed at once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from metarec.data.encoding import FeatureTable, encode_entity
from metarec.data.text import TextCache
from metarec.io import read_json, read_tracked

EPISODE_COLUMNS = {
    "task_id": "int32",       # unique per (user, split, scenario, k, draw)
    "user_id": "string",
    "split": "string",        # train | val | test
    "scenario": "string",     # train | warm | user_cold | item_cold | user_item_cold |
                              # platform_cold
    "k": "int16",             # support size of the task
    "role": "string",         # support | query | cross (platform_cold: other platforms)
    "item_id": "string",
    "rating": "float32",
    "timestamp": "int64",     # seconds since the epoch, UTC
}
# with platforms, one more column: the task's platform (platform_cold tasks; null otherwise)
PLATFORM_COLUMN = {"platform": "string"}
HISTORY_TYPES = {"user_id": "string", "item_id": "string", "rating": "float32",
                 "timestamp": "int64"}
SCENARIOS = ("warm", "user_cold", "item_cold", "user_item_cold")
PLATFORM_COLD = "platform_cold"   # a user new on one platform, known on others (logs with them)
TEXT_VECTORS = "text_vectors.parquet"   # the items' text vectors (a text encoder named)


@dataclass
class EpisodeData:
    """Everything a model needs: tasks with entity indices, encoded feature tables, vocab, and
    the history of the meta-train users (every training-period interaction: what item-side
    fits read; never a validation or test user's query)."""

    tasks: pd.DataFrame           # EPISODE_COLUMNS + user_idx, item_idx (int64)
    users: FeatureTable
    items: FeatureTable
    vocab: dict[str, Any]
    history: pd.DataFrame | None = None   # HISTORY_TYPES + user_idx, item_idx, by user and time

    @property
    def rating_range(self) -> tuple[float, float]:
        r = self.vocab["rating"]
        return float(r["min"]), float(r["max"])

    @property
    def explicit(self) -> bool:
        """Explicit ratings to predict (not implicit counts or 0/1 labels)."""
        return self.vocab["rating"].get("kind", "explicit") == "explicit"

    @property
    def relevance_threshold(self) -> float:
        """Ratings at or above this are relevant (positives of the ranking metrics)."""
        return float(self.vocab["rating"].get("relevant", 0.8 * self.rating_range[1]))

    @functools.cached_property
    def validation_users(self) -> np.ndarray | None:
        """The ids of the validation users whose tasks every choice reads: a seeded sample of
        ``episodes.val_users`` of them, in id order (None: every one). Checked against the
        13,291 validation tasks of a 30,000-user log, a fit of 50 outer steps took 44 s,
        mostly validating; the sample is the same for every model."""
        draws = self.vocab.get("draws", {})
        limit = int(draws.get("val_users", 0))
        users = np.sort(self.tasks.loc[self.tasks["split"] == "val", "user_id"].unique())
        if not limit or len(users) <= limit:
            return None
        rng = np.random.default_rng(int(draws.get("seed", 0)))
        return np.sort(rng.choice(users, size=limit, replace=False))

    def select(self, split: str, scenario: str | None = None, k: int | None = None
               ) -> pd.DataFrame:
        """The tasks of ``split`` (validation: of :attr:`validation_users`), one scenario and
        K when given."""
        t = self.tasks
        mask = t["split"] == split
        if split == "val" and (kept := self.validation_users) is not None:
            mask &= t["user_id"].isin(kept)
        if scenario is not None:
            mask &= t["scenario"] == scenario
        if k is not None:
            mask &= t["k"] == k
        return t[mask]


def load_episodes(directory: str | Path) -> EpisodeData:
    """Read an episodes directory written by ``metarec episodes``."""
    directory = Path(directory)
    restore = "dvc repro episodes"
    tasks = read_tracked(directory / "episodes.parquet", restore, pd.read_parquet)
    vocab = read_tracked(directory / "vocab.json", restore, read_json)
    users_df = read_tracked(directory / "users.parquet", restore, pd.read_parquet)
    items_df = read_tracked(directory / "items.parquet", restore, pd.read_parquet)
    users = encode_entity(users_df, "user_id", vocab["users"])
    vectors = directory / TEXT_VECTORS
    items = encode_entity(items_df, "item_id", vocab["items"],
                          TextCache(vectors) if vectors.exists() else None)
    tasks["user_idx"] = users.index_of(tasks["user_id"])
    tasks["item_idx"] = items.index_of(tasks["item_id"])
    history = read_tracked(directory / "history.parquet", restore, pd.read_parquet)
    history["user_idx"] = users.index_of(history["user_id"])
    history["item_idx"] = items.index_of(history["item_id"])
    return EpisodeData(tasks=tasks, users=users, items=items, vocab=vocab, history=history)


@dataclass
class TaskBatch:
    """T tasks padded to the largest support (S) and query (Q) among them.

    Padded positions have item 0, rating 0 and mask False; every loss and metric must use
    the masks. ``user_idx`` indexes :class:`FeatureTable` rows of the users.
    """

    task_id: torch.Tensor          # (T,) long
    user_idx: torch.Tensor         # (T,) long
    support_items: torch.Tensor    # (T, S) long
    support_ratings: torch.Tensor  # (T, S) float
    support_mask: torch.Tensor     # (T, S) bool
    query_items: torch.Tensor      # (T, Q) long
    query_ratings: torch.Tensor    # (T, Q) float
    query_mask: torch.Tensor       # (T, Q) bool
    # (T, S) bool: the support item comes from another platform (platform_cold + cross);
    # None = every support item is the task's own
    support_cross: torch.Tensor | None = None
    # (T,) long: the task's moment in seconds since the epoch (its first query interaction;
    # the night, when scoring): what is popular *now* is read at it (metarec.data.recency)
    now: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.task_id.shape[0])

    def _map(self, fn: Any) -> TaskBatch:
        return TaskBatch(**{f.name: None if (v := getattr(self, f.name)) is None else fn(v)
                            for f in fields(self)})

    def to(self, device: torch.device | str) -> TaskBatch:
        return self._map(lambda v: v.to(device))

    def slice(self, start: int, stop: int) -> TaskBatch:
        return self._map(lambda v: v[start:stop])

    def take(self, idx: list[int] | torch.Tensor) -> TaskBatch:
        """Tasks ``idx``, padding trimmed to their longest support and query (>= 1)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        parts = self._map(lambda v: v[idx]).__dict__
        for side in ("support", "query"):
            width = max(int(parts[f"{side}_mask"].sum(1).max()), 1) if len(idx) else 1
            for col in ("items", "ratings", "mask", "cross"):
                if parts.get(f"{side}_{col}") is not None:
                    parts[f"{side}_{col}"] = parts[f"{side}_{col}"][:, :width]
        return TaskBatch(**parts)


def split_batches(data: EpisodeData, split: str) -> tuple[TaskBatch, TaskBatch | None]:
    """The protocol's tasks of ``split``, and (with platforms) its platform_cold tasks with
    the other platforms' history marked in the support (None without platforms)."""
    tasks = data.select(split)
    cold = tasks["scenario"] == PLATFORM_COLD
    plain = to_batch(tasks[~cold])
    return plain, (to_batch(tasks[cold], cross=True) if cold.any() else None)


def validation_tasks(data: EpisodeData) -> TaskBatch:
    """The validation tasks as one batch, what every choice on validation reads
    (:func:`split_batches` of "val", side by side): those of at most ``episodes.val_users``
    validation users (:attr:`EpisodeData.validation_users`)."""
    plain, cold = split_batches(data, "val")
    return plain if cold is None else cat_batches(plain, cold)


def cat_batches(a: TaskBatch, b: TaskBatch) -> TaskBatch:
    """The tasks of ``a`` then ``b`` in one batch, padded to the wider of each side (task ids
    of ``b`` shifted past ``a``'s); a support cross mark is kept where either has one."""
    def pad(x: torch.Tensor, width: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]))

    def cross(x: TaskBatch) -> torch.Tensor:
        return (x.support_cross if x.support_cross is not None
                else torch.zeros_like(x.support_mask))

    s = max(a.support_mask.shape[1], b.support_mask.shape[1])
    q = max(a.query_mask.shape[1], b.query_mask.shape[1])
    parts = {"task_id": torch.cat([a.task_id, b.task_id + int(a.task_id.max()) + 1
                                   if len(a) else b.task_id]),
             "user_idx": torch.cat([a.user_idx, b.user_idx])}
    for side, width in (("support", s), ("query", q)):
        for col in ("items", "ratings", "mask"):
            name = f"{side}_{col}"
            parts[name] = torch.cat([pad(getattr(a, name), width), pad(getattr(b, name), width)])
    if a.support_cross is not None or b.support_cross is not None:
        parts["support_cross"] = torch.cat([pad(cross(a), s), pad(cross(b), s)])
    if a.now is not None and b.now is not None:
        parts["now"] = torch.cat([a.now, b.now])
    return TaskBatch(**parts)


def pad_rows(rows: np.ndarray, n_rows: int, items: np.ndarray, ratings: np.ndarray
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ragged rows -> (n_rows, W) items, ratings and mask, W = the longest row (>= 1).

    ``rows`` (nnz,) gives each value's row and must be sorted; values keep their order within
    a row. Padded positions hold item 0, rating 0 and mask False.
    """
    counts = np.bincount(rows, minlength=n_rows)
    width = max(int(counts.max()) if n_rows else 0, 1)
    starts = np.cumsum(counts) - counts
    col = np.arange(len(rows)) - starts[rows]
    out_items = np.zeros((n_rows, width), dtype=np.int64)
    out_ratings = np.zeros((n_rows, width), dtype=np.float32)
    mask = np.zeros((n_rows, width), dtype=bool)
    out_items[rows, col] = items
    out_ratings[rows, col] = ratings
    mask[rows, col] = True
    return torch.from_numpy(out_items), torch.from_numpy(out_ratings), torch.from_numpy(mask)


def moments(pos: np.ndarray, timestamps: np.ndarray, is_query: np.ndarray, n_tasks: int
            ) -> torch.Tensor:
    """(T,) each task's moment: its first query interaction's time (the last support one's
    when it has no query). ``pos`` is each row's task position."""
    big = np.iinfo(np.int64).max
    first_query = np.full(n_tasks, big, dtype=np.int64)
    np.minimum.at(first_query, pos[is_query], timestamps[is_query])
    last_support = np.full(n_tasks, 0, dtype=np.int64)
    np.maximum.at(last_support, pos[~is_query], timestamps[~is_query])
    return torch.from_numpy(np.where(first_query < big, first_query, last_support))


def _pad(frame: pd.DataFrame, pos: np.ndarray, n_tasks: int) -> tuple[torch.Tensor, ...]:
    """Rows of ``frame`` (sorted by task position ``pos``, then time) as (T, L) tensors."""
    return pad_rows(pos, n_tasks, frame["item_idx"].to_numpy(np.int64),
                    frame["rating"].to_numpy(np.float32))


def to_batch(tasks: pd.DataFrame, cross: bool = False) -> TaskBatch:
    """Pad a long-format task frame (rows of support and query) into a :class:`TaskBatch`.

    Task order is ascending ``task_id``; within a task rows keep their time order. A task may
    have an empty support (k = 0 at test time) but is expected to have a query. Rows of role
    ``cross`` (a platform_cold task's history on other platforms) join the support when
    ``cross`` is true and are left out otherwise: never part of the query.
    """
    marked = cross and "cross" in set(tasks["role"].unique())
    if marked:
        role = tasks["role"].astype("string")
        tasks = tasks.assign(role=role.replace("cross", "support"), cross=(role == "cross"))
    else:
        tasks = tasks[tasks["role"] != "cross"]
    t = tasks.sort_values(["task_id", "timestamp", "item_id"], kind="stable")
    task_ids, pos = np.unique(t["task_id"].to_numpy(), return_inverse=True)
    n = len(task_ids)
    first = np.array(t.groupby(pos, sort=True)["user_idx"].first(), dtype=np.int64)
    is_sup = (t["role"] == "support").to_numpy()
    s_items, s_rat, s_mask = _pad(t[is_sup], pos[is_sup], n)
    q_items, q_rat, q_mask = _pad(t[~is_sup], pos[~is_sup], n)
    mark = None
    if marked:   # the cross flag padded like the support (as 0/1 "ratings")
        sup = t[is_sup]
        _, flags, _ = pad_rows(pos[is_sup], n, sup["item_idx"].to_numpy(np.int64),
                               sup["cross"].to_numpy(np.float32))
        mark = flags > 0
    return TaskBatch(
        task_id=torch.from_numpy(task_ids.astype(np.int64)),
        user_idx=torch.from_numpy(first),
        support_items=s_items, support_ratings=s_rat, support_mask=s_mask,
        query_items=q_items, query_ratings=q_rat, query_mask=q_mask, support_cross=mark,
        now=moments(pos, t["timestamp"].to_numpy(np.int64), ~is_sup, n),
    )
