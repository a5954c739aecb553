"""``global_mean``: the mean meta-train rating for every item; the floor every model clears."""

from __future__ import annotations

import torch

from metarec.algorithms import register
from metarec.data.tasks import TaskBatch
from metarec.models.base import Capabilities, FitContext
from metarec.models.statistical import Baseline, training_ratings


@register
class GlobalMean(Baseline):
    name = "global_mean"
    capabilities = Capabilities(seeded=False)   # no random draw: one fit serves all seeds

    @classmethod
    def fit(cls, ctx: FitContext) -> GlobalMean:
        _, _, ratings = training_ratings(ctx.data)
        return cls(float(ratings.mean()), ctx.data.rating_range).bind(ctx.data)

    def rate(self, state: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        return self._clip(torch.full(items.shape, self.mu, dtype=torch.float64))  # (T, C)
