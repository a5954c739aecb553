"""``user_mean``: the user's support mean, shrunk toward mu so one rating does not decide."""

from __future__ import annotations

from typing import Any

import torch

from metarec.algorithms import register
from metarec.data.tasks import TaskBatch
from metarec.models.base import Capabilities, FitContext
from metarec.models.statistical import (
    Baseline,
    ShrinkageParams,
    support_bias,
    training_ratings,
    tune_mae,
)


@register
class UserMean(Baseline):
    name = "user_mean"
    capabilities = Capabilities(seeded=False)   # no random draw: one fit serves all seeds
    Params = ShrinkageParams   # the user-shrinkage grid (beta_u)

    def __init__(self, mu: float, rating_range: tuple[float, float], shrinkage: float) -> None:
        super().__init__(mu, rating_range)
        self.shrinkage = float(shrinkage)

    @classmethod
    def fit(cls, ctx: FitContext) -> UserMean:
        data = ctx.data
        mu = float(training_ratings(data)[2].mean())
        best, rec = tune_mae(lambda b: cls(mu, data.rating_range, b).bind(data),
                             cls.params_of(ctx.train).shrinkage, data)
        best.tuning = {"shrinkage": rec}
        return best

    def rate(self, state: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        b_u = support_bias(state, torch.tensor(self.mu, dtype=torch.float64), self.shrinkage)
        return self._clip((self.mu + b_u)[:, None].expand(items.shape))   # (T, C)

    def extra_state(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage}
