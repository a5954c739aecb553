"""``ease`` (Steck, WWW 2019): a closed-form item-item model on the binary interaction matrix.

B = I - P diagMat(1 / diag(P)), P = (X^T X + lambda I)^-1, diag(B) = 0; a new user's scores are
their support row times B, so it needs no user fit. lambda and the history window are chosen on
validation (catalogue nDCG). B is dense (items x items floats): past ``max_items`` item codes
the fit is refused with the memory it would take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metarec.algorithms import register
from metarec.config import bounded
from metarec.data.tasks import TaskBatch
from metarec.errors import ParamsError
from metarec.models.base import Capabilities, FitContext
from metarec.models.statistical import (
    RankingBaseline,
    interaction_matrix,
    sparse_product,
    support_matrix,
    tune_product,
)


@dataclass(frozen=True)
class EaseParams:
    lam: tuple[float, ...] = bounded((10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
                                      10000.0), 1e-9,
                                     nonempty=True)     # ridge penalty grid
    window: tuple[int, ...] = bounded((0, 20), 0, nonempty=True)   # first N per user (0 = all)
    max_items: int = bounded(20_000, 1)                 # refuse a dense B beyond this


@register
class Ease(RankingBaseline):
    name = "ease"
    capabilities = Capabilities(seeded=False)   # no random draw: one fit serves all seeds
    Params = EaseParams

    def __init__(self, weights: torch.Tensor, lam: float = 0.0, window: int = 0) -> None:
        super().__init__()
        self.weights = weights.float()            # (n_ids, n_ids) B, zero diagonal
        self.lam, self.window = float(lam), int(window)

    @classmethod
    def fit(cls, ctx: FitContext) -> Ease:
        p, data = cls.params_of(ctx.train), ctx.data
        n = data.items.n_ids
        if n > p.max_items:
            gib = n * n * 8 / 2**30
            raise ParamsError(f"train.ease: {n:,} item codes need a dense {n:,} x {n:,} matrix "
                              f"(~{gib:,.1f} GiB to invert); raise train.ease.max_items "
                              f"({p.max_items:,}) or remove ease from train.baselines")
        grams = {}
        for w in p.window:
            x = interaction_matrix(data, w)
            grams[w] = sparse_product(x.t(), x).double()                 # (n, n)

        def make(window: int, lam: float) -> Ease:
            inv = torch.linalg.inv(grams[window] + lam * torch.eye(n, dtype=torch.float64))
            b = -inv / torch.diagonal(inv)                              # columns / diag(P)
            b.fill_diagonal_(0.0)
            return cls(b, lam, window).bind(data)

        best, best.tuning = tune_product(make, {"window": p.window, "lam": p.lam}, data,
                                         ctx.train.val_ndcg_k)
        return best

    def rank(self, state: TaskBatch) -> torch.Tensor:
        x = support_matrix(state, self.codes, self.weights.shape[0])      # (T, n_ids)
        return (x @ self.weights)[:, self.codes]                          # (T, N)

    def explain(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        """The support item j with the largest weight B[j, i] toward each recommended i."""
        sup, rec = self.codes[batch.support_items], self.codes[items]        # (T, S), (T, k)
        contrib = self.weights[sup[:, :, None], rec[:, None, :]]          # (T, S, k)
        return self._argmax_support(contrib, batch.support_mask)

    def extra_state(self) -> dict[str, Any]:
        return {"weights": self.weights, "lam": self.lam, "window": self.window}
