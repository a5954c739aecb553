"""``item_mean``: item popularity in rating terms, mu + sum_i (r - mu) / (n_i + beta).

Ignores the support (a cold user's non-personal floor); beta is tuned on validation MAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metarec.algorithms import register
from metarec.config import bounded
from metarec.data.tasks import TaskBatch
from metarec.models.base import Capabilities, FitContext
from metarec.models.statistical import (
    Baseline,
    rows_to_codes,
    training_ratings,
    tune_mae,
)


@dataclass(frozen=True)
class ItemMeanParams:
    shrinkage: tuple[float, ...] = bounded((0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0), 0.0,
                                           nonempty=True)  # beta grid


@register
class ItemMean(Baseline):
    name = "item_mean"
    capabilities = Capabilities(seeded=False)   # no random draw: one fit serves all seeds
    Params = ItemMeanParams

    def __init__(self, mu: float, rating_range: tuple[float, float], item_resid: torch.Tensor,
                 item_count: torch.Tensor, shrinkage: float) -> None:
        """Sums of residuals and counts per item code, kept so beta can be changed cheaply."""
        super().__init__(mu, rating_range)
        self.item_resid = item_resid.double()      # (n_ids,) sum of (r - mu) per item code
        self.item_count = item_count.double()      # (n_ids,) meta-train ratings per item code
        self.shrinkage = float(shrinkage)

    @classmethod
    def fit(cls, ctx: FitContext) -> ItemMean:
        data = ctx.data
        _, items, ratings = training_ratings(data)
        mu = float(ratings.mean())
        n = len(data.items)
        resid = torch.zeros(n, dtype=torch.float64).index_add_(0, items, ratings - mu)
        count = torch.zeros(n, dtype=torch.float64).index_add_(0, items,
                                                               torch.ones_like(ratings))
        resid, count = rows_to_codes(resid, data), rows_to_codes(count, data)
        grid = cls.params_of(ctx.train).shrinkage
        best, rec = tune_mae(lambda b: cls(mu, data.rating_range, resid, count, b).bind(data),
                             grid, data)
        best.tuning = {"shrinkage": rec}
        return best

    @property
    def item_bias(self) -> torch.Tensor:
        """(n_ids,) shrunk item offsets from mu; 0 for an item without meta-train ratings."""
        denom = self.item_count + self.shrinkage                      # (n_ids,)
        return torch.where(denom > 0, self.item_resid / denom.clamp_min(1e-12), 0.0)

    def rate(self, state: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        return self._clip(self.mu + self.item_bias[self.codes[items]])   # (T, C)

    def extra_state(self) -> dict[str, Any]:
        return {"item_resid": self.item_resid, "item_count": self.item_count,
                "shrinkage": self.shrinkage}
