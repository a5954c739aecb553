"""Feature gathering: task batches of indices -> dicts of feature tensors for the network.

Features live here, outside the network's state dict, so that a checkpoint scores users and
items it never saw: the caller hands in the current :class:`FeatureTable` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metarec.data.encoding import FeatureTable
from metarec.data.recency import Recency, recency, window_steps
from metarec.data.tasks import EpisodeData, TaskBatch
from metarec.models.network import Feats, PreferenceNet


@dataclass
class TaskSet:
    """One side (support, query or candidates) of T tasks, padded to L items."""

    user: Feats       # each (T, ·); ``pool_ids`` / ``pool_mask`` (T, S): the support items
    items: Feats      # each (T, L, ·)
    ratings: Tensor   # (T, L)
    mask: Tensor      # (T, L) bool
    rows: Tensor | None = None   # (T, L) the items' rows in the item table
    cross: Tensor | None = None  # (T, L) bool: from another platform (support only)

    def __len__(self) -> int:
        return int(self.ratings.shape[0])

    def cat(self, other: TaskSet) -> TaskSet:
        """Support and query side by side (T, L1 + L2): e.g. all of a task's ratings."""
        if set(self.items) != set(other.items):
            raise ValueError("cannot concatenate task sets with different item encodings")
        items = {k: torch.cat([v, other.items[k]], dim=1) for k, v in self.items.items()}
        rows = (torch.cat([self.rows, other.rows], dim=1)
                if self.rows is not None and other.rows is not None else None)
        return TaskSet(user=self.user, items=items,
                       ratings=torch.cat([self.ratings, other.ratings], dim=1),
                       mask=torch.cat([self.mask, other.mask], dim=1), rows=rows,
                       cross=None if self.cross is None and other.cross is None else
                       torch.cat([self.marks(), other.marks()], dim=1))

    def marks(self) -> Tensor:
        """(T, L) bool cross-platform marks (all False when there are none)."""
        return self.cross if self.cross is not None else torch.zeros_like(self.mask)


class FeatureStore:
    """Encoded user and item features on one device and dtype, gathered by index."""

    def __init__(self, users: FeatureTable, items: FeatureTable,
                 dtype: torch.dtype = torch.float32, recency: Recency | None = None) -> None:
        self.dtype = dtype
        self._users = self._tensors(users, dtype)
        self._items = self._tensors(items, dtype)
        self.recency: Recency | None = None
        if recency is not None:
            self.set_recency(recency)

    def set_recency(self, recency: Recency | None) -> None:
        """What is popular when (:mod:`metarec.data.recency`; rows = this store's items):
        each item then carries ``recent`` (every step's value) and each task's user its
        ``period`` (the step of its moment). None: neither."""
        if recency is not None and recency.values.shape[0] != self.n_items:
            raise ValueError(f"recency has {recency.values.shape[0]} items, the store "
                             f"{self.n_items}")
        self.recency = None if recency is None else Recency(
            recency.first, recency.step_s, recency.values.to(self.device, self.dtype))

    @staticmethod
    def _tensors(table: FeatureTable, dtype: torch.dtype) -> Feats:
        return {"id": table.id_code.long(), "cat": table.categorical.long(),
                "multi": table.multi.long(), "num": table.numeric.to(dtype)}

    def to(self, device: torch.device | str) -> FeatureStore:
        """Move every table to ``device`` in place (returns self)."""
        self._users = {k: v.to(device) for k, v in self._users.items()}
        self._items = {k: v.to(device) for k, v in self._items.items()}
        if self.recency is not None:
            self.recency = self.recency.to(device)
        return self

    def without_ids(self, drop: Tensor) -> FeatureStore:
        """A view whose items ``drop`` ((N,) bool) have lost their id code (0: unknown), as a
        new item has: item-id dropout (DropoutNet) teaches the network to place an item from
        its features. The tables are shared, only the id column is new."""
        view = object.__new__(FeatureStore)
        view.dtype, view._users, view.recency = self.dtype, self._users, self.recency
        ids = self._items["id"]
        view._items = {**self._items, "id": torch.where(drop.to(ids.device), 0, ids)}
        return view

    @property
    def device(self) -> torch.device:
        return self._users["cat"].device

    @property
    def n_items(self) -> int:
        return int(self._items["id"].shape[0])

    def users(self, idx: Tensor) -> Feats:
        """Feature dict of users ``idx`` (any shape): each value (*idx.shape, ·)."""
        return {k: v[idx] for k, v in self._users.items() if k != "id"}

    def items(self, idx: Tensor) -> Feats:
        """Feature dict of items ``idx`` (any shape), id code included (new items -> 0), and
        with a recency every step's popular-now value (``recent``: (*idx.shape, P))."""
        out = {k: v[idx] for k, v in self._items.items()}
        if self.recency is not None:
            out["recent"] = self.recency.values[idx]
        return out

    def user_context(self, batch: TaskBatch) -> Feats:
        """Each task's user: its features and its support items (ids as the network's item-id
        codes, for the fold-in of the support into the user vector; ``pool_cross`` marks those
        from another platform, all False when the batch has no marks)."""
        dev = self.device
        ids = self._items["id"][batch.support_items.to(dev)]              # (T, S)
        mask = batch.support_mask.to(dev)
        cross = (batch.support_cross.to(dev) if batch.support_cross is not None
                 else torch.zeros_like(mask))
        out = {**self.users(batch.user_idx.to(dev)), "pool_ids": ids, "pool_mask": mask,
               "pool_cross": cross}
        if self.recency is not None:
            if batch.now is None:
                raise ValueError("this store reads what is popular now, but the tasks carry "
                                 "no moment (TaskBatch.now)")
            out["period"] = self.recency.periods(batch.now.to(dev))
        return out

    def _side(self, user: Feats, items: Tensor, ratings: Tensor, mask: Tensor,
              cross: Tensor | None = None) -> TaskSet:
        dev = self.device
        items = items.to(dev)
        return TaskSet(user=user, items=self.items(items), ratings=ratings.to(dev, self.dtype),
                       mask=mask.to(dev), rows=items, cross=cross)

    def support(self, batch: TaskBatch) -> TaskSet:
        user = self.user_context(batch)
        return self._side(user, batch.support_items, batch.support_ratings, batch.support_mask,
                          user["pool_cross"])

    def query(self, batch: TaskBatch) -> TaskSet:
        return self._side(self.user_context(batch), batch.query_items, batch.query_ratings,
                          batch.query_mask)

    def candidates(self, user: Feats, items: Tensor) -> TaskSet:
        """Items (T, C) to score for each task's ``user`` context: no ratings, all valid."""
        zeros = torch.zeros(items.shape, dtype=self.dtype)
        return self._side(user, items, zeros, torch.ones(items.shape, dtype=torch.bool))


def feature_store(data: EpisodeData, network: PreferenceNet) -> FeatureStore:
    """The store of ``data``'s users and items for ``network``: with what was popular when in
    the meta-train history, if the network reads it (:mod:`metarec.data.recency`)."""
    store = FeatureStore(data.users, data.items)
    if network.recency and data.history is not None:
        h = data.history
        store.set_recency(recency(h["item_idx"].to_numpy(), h["timestamp"].to_numpy(),
                                  store.n_items, window_steps(network.recent_days,
                                                              network.recent_step_days),
                                  network.recent_step_days))
    return store
