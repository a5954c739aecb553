"""The LightningModule: the outer loop of any :class:`MetaAlgorithm`, manual optimisation.

Training logic only: the algorithm owns adaptation and losses, the data module owns sampling.
The best weights on validation query loss are kept in memory (``best_state``); the train stage
writes them in the checkpoint format :func:`metarec.meta.checkpoint.load_predictor` reads.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from metarec.data.tasks import TaskBatch
from metarec.meta.features import FeatureStore
from metarec.meta.gradient import MetaAlgorithm
from metarec.meta.predictor import query_loss_sum


class MetaLearner(L.LightningModule):
    """Outer loop: objective from the algorithm, manual backward, clipping, step."""

    def __init__(self, algorithm: MetaAlgorithm, store: FeatureStore, outer_optimizer: str,
                 outer_lr: float, grad_clip: float = 10.0, patience: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["algorithm", "store"])
        self.automatic_optimization = False
        self.algorithm = algorithm
        self.store = store
        self.best_val = math.inf
        self.best_step = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.val_history: list[tuple[int, float]] = []
        self._sse, self._n = 0.0, 0
        self._stale = 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.algorithm.outer_parameters())
        if self.hparams.outer_optimizer == "adam":
            return torch.optim.Adam(params, lr=self.hparams.outer_lr)
        if self.hparams.outer_optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.hparams.outer_lr)
        raise ValueError(f"unknown outer optimizer {self.hparams.outer_optimizer!r}")

    def on_fit_start(self) -> None:
        self.store.to(self.device)

    def training_step(self, batch: TaskBatch, batch_idx: int) -> None:
        # Under DDP Lightning calls this through the DistributedDataParallel wrapper's forward,
        # and manual_backward all-reduces (averages) the gradients before clipping and stepping.
        opt = self.optimizers()
        opt.zero_grad()
        objective, report = self.algorithm.outer_loss(self.store.support(batch),
                                                      self.store.query(batch))
        self.manual_backward(objective)
        self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip,
                            gradient_clip_algorithm="norm")
        opt.step()
        self.algorithm.post_step()
        self.log("train_loss", report, prog_bar=True, batch_size=len(batch))

    def on_validation_epoch_start(self) -> None:
        self._sse, self._n = 0.0, 0

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        # Lightning may call this under no_grad; adaptation builds its own gradients.
        with torch.enable_grad():
            gen = torch.Generator(device=self.device).manual_seed(batch_idx)
            sse, n = query_loss_sum(self.algorithm, self.store, batch, generator=gen)
        self._sse += sse
        self._n += n

    def on_validation_epoch_end(self) -> None:
        sse, n = self._sse, float(self._n)
        if self.trainer.world_size > 1:
            # Under DDP each process validated its share of the tasks: sum squared errors and
            # counts over processes, so every process computes the same loss and keeps the
            # same best step.
            total = torch.tensor([sse, n], dtype=torch.float64, device=self.device)
            sse, n = self.trainer.strategy.reduce(total, reduce_op="sum").tolist()
        val = sse / max(n, 1.0)
        # sync_dist: the value is already equal on every process; this only tells Lightning so.
        self.log("val_loss", val, prog_bar=True, sync_dist=True)
        step = int(self.global_step)
        self.val_history.append((step, val))
        if val < self.best_val:
            self.best_val, self.best_step = val, step
            self.best_state = {k: v.detach().clone()
                               for k, v in self.algorithm.state_dict().items()}
            self._stale = 0
        else:
            self._stale += 1
            # early stopping: every process has the same val, so all stop at the same step
            if self.hparams.patience and self._stale >= self.hparams.patience:
                self.trainer.should_stop = True
