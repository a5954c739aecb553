"""``reptile`` (Nichol et al., 2018) for the adapted parameters, first-order for the rest.

The adapted parameters move towards the mean adapted weights ``W``: by hand,
``theta += eps * mean(W - theta)`` (``mode: interpolate``), or by handing ``theta - mean(W)``
to the outer optimiser as its gradient (``mode: adam``). Parameters no task adapts
(embeddings) take the first-order query gradient at ``W``; otherwise Reptile would never train
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from metarec.algorithms import register
from metarec.config import ModelParams, TrainParams, bounded
from metarec.data.tasks import EpisodeData
from metarec.meta.features import TaskSet
from metarec.meta.gradient import GradientLearner, Params
from metarec.models.network import PreferenceNet
from metarec.train.entries import FIRST_ORDER, LearnerAlgorithm


@dataclass(frozen=True)
class ReptileParams:
    epsilon: float = bounded(1.0, 0.0)                  # interpolation step (mode interpolate)
    mode: Literal["interpolate", "adam"] = "adam"       # how theta moves toward mean W


class ReptileLearner(GradientLearner):
    """First-order inner loop; the adapted parameters move toward the tasks' mean adapted
    weights (by the outer optimiser or by interpolation)."""

    first_order = True

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int,
                 epsilon: float = 1.0, mode: str = "adam", **common: Any) -> None:
        super().__init__(model, adapt, inner_lr, inner_steps, **common)
        if mode not in ("adam", "interpolate"):
            raise ValueError(f"reptile mode must be adam or interpolate, got {mode!r}")
        self.epsilon, self.mode = float(epsilon), mode
        self._pending: Params | None = None

    def outer_loss(self, support: TaskSet, query: TaskSet) -> tuple[Tensor, Tensor]:
        theta = self.meta_params()
        support = self.prepare(support)  # hoisted embeddings keep their graph
        fast = self.adapt({k: v.detach() for k, v in theta.items()}, support,
                          create_graph=False)                           # W: (T, ...)
        mean_w = {k: v.mean(0) for k, v in fast.items()}
        query_loss = self.loss(fast, query, support)  # grads reach the shared params only
        objective = query_loss
        if self.mode == "adam":
            for k, p in theta.items():  # d/dp of this term is (p - mean W)
                objective = objective + (p * (p - mean_w[k]).detach()).sum()
        else:
            self._pending = {k: (mean_w[k] - theta[k]).detach() for k in theta}
        return objective, query_loss.detach()

    def post_step(self) -> None:
        if self._pending is None:
            return
        theta = self.meta_params()
        with torch.no_grad():
            for k, delta in self._pending.items():
                theta[k].add_(self.epsilon * delta)
        self._pending = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "epsilon": self.epsilon, "mode": self.mode}


@register
class Reptile(LearnerAlgorithm):
    name = "reptile"
    Params = ReptileParams
    learner = ReptileLearner
    capabilities = FIRST_ORDER

    @classmethod
    def config_from(cls, model: ModelParams, train: TrainParams,
                    data: EpisodeData | None = None) -> dict[str, Any]:
        p = cls.params_of(train)
        return {**super().config_from(model, train, data), "epsilon": p.epsilon,
                "mode": p.mode}

    @classmethod
    def ddp_refusal(cls, train: TrainParams) -> str | None:
        if cls.params_of(train).mode == "interpolate":
            return ("train.reptile.mode interpolate updates the weights outside backward, "
                    "where DDP cannot average the update across processes; use mode: adam")
        return None
