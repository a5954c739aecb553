"""Meta-batches of tasks from an :class:`EpisodeData`.

All tasks of a split are padded into one :class:`TaskBatch` once; a meta-batch is a set of rows
of it, trimmed to its own longest support and query, so sampling costs no pandas work.
"""

from __future__ import annotations

from dataclasses import fields

import lightning as L
import torch
from torch.utils.data import DataLoader

from metarec.data.tasks import EpisodeData, TaskBatch, to_batch
from metarec.errors import DataError


def take(batch: TaskBatch, idx: list[int] | torch.Tensor) -> TaskBatch:
    """Tasks ``idx`` of ``batch``, padding trimmed to their longest support/query."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    parts = {f.name: getattr(batch, f.name)[idx] for f in fields(batch)}
    s = max(int(parts["support_mask"].sum(1).max()), 1) if len(idx) else 1
    q = max(int(parts["query_mask"].sum(1).max()), 1) if len(idx) else 1
    for side, width in (("support", s), ("query", q)):
        for col in ("items", "ratings", "mask"):
            parts[f"{side}_{col}"] = parts[f"{side}_{col}"][:, :width]
    return TaskBatch(**parts)


class _Collate:
    def __init__(self, batch: TaskBatch) -> None:
        self.batch = batch

    def __call__(self, idx: list[int]) -> TaskBatch:
        return take(self.batch, idx)


class EpisodeDataModule(L.LightningDataModule):
    """Meta-train tasks (split "train") shuffled into meta-batches; validation tasks ("val")."""

    def __init__(self, data: EpisodeData, meta_batch: int, seed: int = 0,
                 val_batch: int = 512) -> None:
        super().__init__()
        self.data, self.meta_batch, self.seed, self.val_batch = data, meta_batch, seed, val_batch
        self.train_tasks: TaskBatch | None = None
        self.val_tasks: TaskBatch | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_tasks is not None:
            return
        train, val = self.data.select("train"), self.data.select("val")
        if train.empty:
            raise DataError("no meta-train tasks (split 'train') in the episodes")
        if val.empty:
            raise DataError("no validation tasks (split 'val') in the episodes")
        self.train_tasks, self.val_tasks = to_batch(train), to_batch(val)

    def train_dataloader(self) -> DataLoader:
        assert self.train_tasks is not None
        n = len(self.train_tasks)
        return DataLoader(range(n), batch_size=min(self.meta_batch, n), shuffle=True,
                          drop_last=n >= self.meta_batch, collate_fn=_Collate(self.train_tasks),
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        assert self.val_tasks is not None
        return DataLoader(range(len(self.val_tasks)), batch_size=self.val_batch, shuffle=False,
                          collate_fn=_Collate(self.val_tasks))
