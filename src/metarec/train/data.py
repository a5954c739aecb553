"""Meta-batches of tasks from an :class:`EpisodeData`.

All tasks of a split are padded into one :class:`TaskBatch` once; a meta-batch is a set of rows
of it, trimmed to its own longest support and query, so sampling costs no pandas work.

Under DDP each of the W processes takes ``meta_batch / W`` tasks per step. Meta-train tasks are
shuffled by a ``DistributedSampler`` seeded with the run's seed (also with one process), which
deals a permutation round-robin: the union of the W processes' meta-batches at a step is the
one-process meta-batch at that step. Validation tasks are dealt round-robin without padding,
so every task is validated exactly once; the module sums the losses across processes.
"""

from __future__ import annotations

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, DistributedSampler

from metarec.data.draws import draw_tasks
from metarec.data.tasks import (
    PLATFORM_COLD,
    EpisodeData,
    TaskBatch,
    cat_batches,
    split_batches,
    validation_tasks,
)
from metarec.errors import DataError


class _Collate:
    def __init__(self, batch: TaskBatch) -> None:
        self.batch = batch

    def __call__(self, idx: list[int]) -> TaskBatch:
        return self.batch.take(idx)


class EpisodeDataModule(L.LightningDataModule):
    """Meta-train tasks shuffled into meta-batches; validation tasks (split "val").

    With ``draw`` (temporal | random), the meta-train tasks are drawn afresh from the training
    history every epoch (one per user, seeded by seed and epoch: the same on every process);
    without, they are the fixed draws of the episodes (split "train"). ``meta_batch`` is the
    number of tasks per outer step over all processes. With platforms, the meta-train users'
    platform_cold tasks (support on a platform new to the user, its cross rows from the others
    marked) join every epoch's tasks.
    """

    def __init__(self, data: EpisodeData, meta_batch: int, seed: int = 0,
                 val_batch: int = 512, draw: str | None = None) -> None:
        super().__init__()
        self.data, self.meta_batch, self.seed, self.val_batch = data, meta_batch, seed, val_batch
        self.draw = draw
        self.train_tasks: TaskBatch | None = None
        self.val_tasks: TaskBatch | None = None
        self.cross_tasks: TaskBatch | None = None

    def _epoch_tasks(self) -> TaskBatch:
        """This epoch's meta-train tasks, drawn from the history (``draw`` set)."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        spec = self.data.vocab.get("draws", {})
        if self.data.history is None or not spec:
            raise DataError("the episodes carry no training history to draw tasks from; "
                            "rerun `dvc repro episodes`")
        rng = np.random.default_rng([self.seed, epoch])
        drawn = draw_tasks(self.data.history, tuple(spec["support_sizes"]), spec["query_size"],
                           str(self.draw), rng)
        return drawn if self.cross_tasks is None else cat_batches(drawn, self.cross_tasks)

    def setup(self, stage: str | None = None) -> None:
        if self.train_tasks is not None:
            return
        train = self.data.select("train")
        if (train["scenario"] != PLATFORM_COLD).sum() == 0:
            raise DataError("no meta-train tasks (split 'train') in the episodes")
        if self.data.select("val").empty:
            raise DataError("no validation tasks (split 'val') in the episodes")
        self.train_tasks, self.cross_tasks = split_batches(self.data, "train")
        self.val_tasks = validation_tasks(self.data)
        if self.cross_tasks is not None:
            self.train_tasks = cat_batches(self.train_tasks, self.cross_tasks)

    def _rank(self) -> tuple[int, int]:
        """(this process's global rank, number of processes); (0, 1) outside a Trainer."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        assert self.train_tasks is not None
        if self.draw is not None:
            self.train_tasks = self._epoch_tasks()
        rank, world = self._rank()
        if self.meta_batch % world:
            raise ValueError(f"meta_batch {self.meta_batch} is not a multiple of the "
                             f"{world} processes")
        n = len(self.train_tasks)
        # Pads the permutation by repeating tasks so that every process gets as many steps.
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                     seed=self.seed)
        per_process, mine = self.meta_batch // world, len(sampler)
        return DataLoader(range(n), batch_size=min(per_process, mine), sampler=sampler,
                          drop_last=mine >= per_process, collate_fn=_Collate(self.train_tasks))

    def val_dataloader(self) -> DataLoader:
        assert self.val_tasks is not None
        rank, world = self._rank()
        mine = list(range(rank, len(self.val_tasks), world))
        return DataLoader(mine, batch_size=self.val_batch, shuffle=False,
                          collate_fn=_Collate(self.val_tasks))
