"""``finetune``: the pretrained network, fine-tuned per task with plain first-order SGD on its
support set; nothing is meta-trained. Steps and learning rate are the pair of the grid with
the lowest validation query loss."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from metarec.algorithms import register
from metarec.config import bounded
from metarec.data.tasks import validation_tasks
from metarec.meta.features import FeatureStore
from metarec.meta.gradient import GradientLearner
from metarec.meta.predictor import AdaptivePredictor, validation_loss
from metarec.models.base import Capabilities, FitContext
from metarec.train.entries import LearnerAlgorithm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneParams:
    steps: tuple[int, ...] = bounded((1, 5, 10), 0, nonempty=True)        # per-user SGD steps
    lrs: tuple[float, ...] = bounded((0.01, 0.05, 0.2), 0.0, nonempty=True)  # learning rates


class FineTuneLearner(GradientLearner):
    """Plain first-order SGD on the support from the pretrained weights: nothing of it is
    meta-trained (no outer parameters)."""

    first_order = True

    def outer_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())


@register
class FineTune(LearnerAlgorithm):
    name = "finetune"
    kind = "baseline"
    Params = FinetuneParams
    requires = ("pretrain",)
    learner = FineTuneLearner
    capabilities = Capabilities(tunable_steps=True, gradient=True, unused_parameters=True)

    @classmethod
    def fit(cls, ctx: FitContext) -> AdaptivePredictor:
        start = time.perf_counter()
        pretrained: AdaptivePredictor = ctx.fitted["pretrain"]   # type: ignore[assignment]
        data, p = ctx.data, cls.params_of(ctx.train)
        store = FeatureStore(data.users, data.items)
        val = validation_tasks(data)
        net = pretrained.learner.model
        grid: dict[str, float] = {}
        best: tuple[float, int, float] | None = None
        common = {k: v for k, v in pretrained.learner.config().items() if k != "adapt"}
        for steps in p.steps:
            for lr in p.lrs:
                learner = FineTuneLearner(net, ctx.model.adapt, lr, steps, **common)
                learner.use_catalogue(store)
                learner.log_q = pretrained.learner.log_q
                loss = validation_loss(learner, store, val, k=ctx.train.val_ndcg_k)
                grid[f"steps={steps},lr={lr:g}"] = loss
                if best is None or loss < best[0]:
                    best = (loss, steps, lr)
        assert best is not None
        loss, steps, lr = best
        learner = FineTuneLearner(net, ctx.model.adapt, lr, steps, **common)
        learner.log_q = pretrained.learner.log_q
        learner.network_kwargs = pretrained.learner.network_kwargs
        log.info("finetune: chose %d steps, lr %g (val loss %.4f)", steps, lr, loss)
        fit = pretrained.fit_metrics
        metrics: dict[str, Any] = {
            "initial_val_loss": fit.get("best_val_loss"), "best_val_loss": loss,
            "best_step": fit.get("best_step"), "steps": fit.get("steps"),
            "seconds": round(time.perf_counter() - start, 2),
            "chosen_steps": steps, "chosen_lr": lr, "grid": grid}
        return cls.predictor(learner, data, metrics)
