"""The LightningModule: the outer loop of any :class:`Learner`, manual optimisation.

Training logic only: the learner owns adaptation and losses, the data module owns sampling.
The best weights on the validation loss are kept in memory (``best_state``), starting from the
untrained weights and their validation loss: a run that never improves keeps its start, never
a worse model. A loss or a weight that is not finite ends training: after a validated
improvement the run stops there and keeps its best weights (``stopped_by`` says where it
diverged; a large catalogue's maml diverged at step 268 of 5,000 after improving), before one
it fails with :class:`TrainingDiverged` (the stage exits 2 and writes no checkpoint): the
start is no trained model.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch

from metarec.data.tasks import TaskBatch
from metarec.errors import MetarecError
from metarec.meta.features import FeatureStore
from metarec.meta.learner import Learner
from metarec.meta.predictor import validation_sums


class TrainingDiverged(MetarecError):
    """A meta-training run produced a non-finite loss or weight."""


class MetaLearner(L.LightningModule):
    """Outer loop: objective from the learner, manual backward, clipping, step."""

    def __init__(self, learner: Learner, store: FeatureStore, outer_optimizer: str,
                 outer_lr: float, grad_clip: float = 10.0, patience: int = 0,
                 initial_val: float = math.inf, val_k: int = 20, seed: int = 0,
                 item_id_dropout: float = 0.0, cross_trust_lr: float | None = None,
                 name: str = "", max_seconds: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["learner", "store"])
        self.automatic_optimization = False
        self.learner = learner
        self.store = store
        self.best_val = float(initial_val)
        self.best_step = 0
        self.best_state: dict[str, torch.Tensor] | None = (
            self._snapshot() if math.isfinite(initial_val) else None)
        self.val_history: list[tuple[int, float]] = []
        self._sum, self._n = 0.0, 0
        self._stale = 0
        self._started = time.perf_counter()
        # "patience" | "time budget" | "diverged at ..." | None (max_steps)
        self.stopped_by: str | None = None

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.learner.state_dict().items()}

    def _diverged(self, what: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"{self.hparams.name} (seed {self.hparams.seed}) diverged at outer step "
            f"{int(self.global_step)}: {what}; lower train.outer_lr (now "
            f"{self.hparams.outer_lr:g}) or train.inner_lr, or use outer_optimizer adam")

    def _stop_or_fail(self, what: str) -> None:
        """Divergence: fail while the best weights are still the untrained start; after an
        improvement, put the best weights back and stop training at this step."""
        if self.best_step == 0:
            raise self._diverged(what)
        self.learner.load_state_dict(self.best_state)
        self.trainer.should_stop = True
        self.stopped_by = (f"diverged at outer step {int(self.global_step)} ({what}); kept "
                           f"the best weights, step {self.best_step}")  # said by the stage

    def param_groups(self) -> list[dict]:
        """The outer optimiser's parameter groups: every outer parameter at ``outer_lr``, and
        the learner's ``trust_parameters`` (the cross-platform trust) in a group of their own
        at ``cross_trust_lr`` (None: ``outer_lr``). The trust is one scalar that has to move far
        from its start in a few hundred outer steps, which the network's rate never lets it."""
        own = self.learner.trust_parameters()
        params = list(self.learner.outer_parameters())
        rest = [p for p in params if not any(p is t for t in own)]
        groups: list[dict] = [{"params": rest, "lr": self.hparams.outer_lr}]
        trusted = [p for p in params if any(p is t for t in own)]
        if trusted:
            lr = self.hparams.cross_trust_lr
            groups.append({"params": trusted,
                           "lr": self.hparams.outer_lr if lr is None else lr})
        return groups

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = self.param_groups()
        if self.hparams.outer_optimizer == "adam":
            return torch.optim.Adam(groups, lr=self.hparams.outer_lr)
        if self.hparams.outer_optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.hparams.outer_lr)
        raise ValueError(f"unknown outer optimizer {self.hparams.outer_optimizer!r}")

    def on_fit_start(self) -> None:
        self.store.to(self.device)
        self.learner.use_catalogue(self.store)

    def training_step(self, batch: TaskBatch, batch_idx: int) -> None:
        # Under DDP Lightning calls this through the DistributedDataParallel wrapper's forward,
        # and manual_backward all-reduces (averages) the gradients before clipping and stepping.
        opt = self.optimizers()
        opt.zero_grad()
        store = self._step_store()
        try:
            objective, report = self.learner.outer_loss(store.support(batch),
                                                          store.query(batch))
        finally:
            if store is not self.store:
                self.learner.use_catalogue(self.store)
        if not torch.isfinite(objective):
            return self._stop_or_fail(f"the outer loss is {float(objective.detach())}")
        self.manual_backward(objective)
        self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip,
                            gradient_clip_algorithm="norm")
        opt.step()
        self.learner.post_step()
        bad = [n for n, p in self.learner.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            return self._stop_or_fail(f"weights {', '.join(bad[:3])} are not finite")
        self.log("train_loss", report, prog_bar=True, batch_size=len(batch))

    def _step_store(self) -> FeatureStore:
        """The features of this outer step: with item-id dropout, a fresh share of the items
        (drawn from the seed and the step, the same on every DDP process) loses its id in
        support, query and the catalogue ranked against alike."""
        p = self.hparams.item_id_dropout
        if p <= 0:
            return self.store
        gen = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + int(self.global_step))
        store = self.store.without_ids(torch.rand(self.store.n_items, generator=gen) < p)
        self.learner.use_catalogue(store)
        return store

    def on_validation_epoch_start(self) -> None:
        self._sum, self._n = 0.0, 0

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        # Lightning may call this under no_grad; adaptation builds its own gradients.
        with torch.enable_grad():
            gen = torch.Generator(device=self.device).manual_seed(batch_idx)
            total, n = validation_sums(self.learner, self.store, batch, gen,
                                       self.hparams.val_k)
        self._sum += total
        self._n += n

    def on_validation_epoch_end(self) -> None:
        total, n = self._sum, float(self._n)
        if self.trainer.world_size > 1:
            # Under DDP each process validated its share of the tasks: sum the losses and
            # counts over processes, so every process computes the same loss and keeps the
            # same best step.
            both = torch.tensor([total, n], dtype=torch.float64, device=self.device)
            total, n = self.trainer.strategy.reduce(both, reduce_op="sum").tolist()
        val = total / max(n, 1.0)
        if not math.isfinite(val):
            return self._stop_or_fail(f"the validation loss is {val}")
        # sync_dist: the value is already equal on every process; this only tells Lightning so.
        self.log("val_loss", val, prog_bar=True, sync_dist=True)
        step = int(self.global_step)
        self.val_history.append((step, val))
        if val < self.best_val:
            self.best_val, self.best_step = val, step
            self.best_state = self._snapshot()
            self._stale = 0
        else:
            self._stale += 1
            # early stopping: every process has the same val, so all stop at the same step
            if self.hparams.patience and self._stale >= self.hparams.patience:
                self.trainer.should_stop, self.stopped_by = True, "patience"
        if self._over_budget():
            self.trainer.should_stop, self.stopped_by = True, "time budget"

    def _over_budget(self) -> bool:
        """Past ``max_seconds`` of training (0: no budget), as every process agrees (the
        slowest decides): training then stops at this validation, keeping the best."""
        if not self.hparams.max_seconds:
            return False
        over = float(time.perf_counter() - self._started > self.hparams.max_seconds)
        if self.trainer.world_size > 1:
            flag = torch.tensor([over], dtype=torch.float64, device=self.device)
            over = float(self.trainer.strategy.reduce(flag, reduce_op="max").item())
        return over > 0
