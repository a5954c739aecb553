"""``item_user_bias``: the item mean plus the user's shrunk mean residual on the support.

mu + b_i + b_u with b_i from the fitted ``item_mean`` and b_u = sum_s (r - mu - b_i) /
(K + beta_u), beta_u tuned on validation MAE: the classic bias model.
"""

from __future__ import annotations

from typing import Any

import torch

from metarec.algorithms import register
from metarec.data.tasks import TaskBatch
from metarec.models.base import Capabilities, FitContext
from metarec.models.statistical import Baseline, ShrinkageParams, support_bias, tune_mae


@register
class ItemUserBias(Baseline):
    name = "item_user_bias"
    capabilities = Capabilities(seeded=False)   # no random draw: one fit serves all seeds
    Params = ShrinkageParams   # the user-shrinkage grid (beta_u)
    requires = ("item_mean",)

    def __init__(self, mu: float, rating_range: tuple[float, float], item_bias: torch.Tensor,
                 shrinkage: float) -> None:
        super().__init__(mu, rating_range)
        self.item_bias = item_bias.double()        # (n_ids,)
        self.shrinkage = float(shrinkage)

    @classmethod
    def fit(cls, ctx: FitContext) -> ItemUserBias:
        data, item_mean = ctx.data, ctx.fitted["item_mean"]
        best, rec = tune_mae(
            lambda b: cls(item_mean.mu, data.rating_range, item_mean.item_bias, b).bind(data),
            cls.params_of(ctx.train).shrinkage, data)
        best.tuning = {"shrinkage": rec, "item_shrinkage": item_mean.shrinkage}
        return best

    def rate(self, state: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        bias = self.item_bias[self.codes]                             # (N,) per row
        offset = self.mu + bias[state.support_items]                  # (T, S)
        b_u = support_bias(state, offset, self.shrinkage)             # (T,)
        return self._clip(self.mu + bias[items] + b_u[:, None])       # (T, C)

    def extra_state(self) -> dict[str, Any]:
        return {"item_bias": self.item_bias, "shrinkage": self.shrinkage}
