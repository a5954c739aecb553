"""``most_popular``: every user gets the items most meta-train users interacted with.

A strong top-N baseline (Cremonesi et al., RecSys 2010). Which interactions count is a real
choice: a cold user's next items look like other users' *early* ones, so the count can be
limited to each user's first ``window`` interactions, and to relevant ones; both are chosen
on validation (catalogue nDCG).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metarec.algorithms import register
from metarec.config import bounded
from metarec.data.tasks import TaskBatch
from metarec.models.base import Capabilities, FitContext
from metarec.models.statistical import RankingBaseline, interaction_matrix, tune_product


@dataclass(frozen=True)
class MostPopularParams:
    window: tuple[int, ...] = bounded((0, 5, 10, 20, 50), 0, nonempty=True)  # first N per user
    positive_only: tuple[bool, ...] = (False, True)    # count only relevant interactions


@register
class MostPopular(RankingBaseline):
    name = "most_popular"
    capabilities = Capabilities(seeded=False)   # no random draw: one fit serves all seeds
    Params = MostPopularParams

    def __init__(self, counts: torch.Tensor, window: int = 0,
                 positive_only: bool = False) -> None:
        super().__init__()
        self.counts = counts.float()              # (n_ids,) users who interacted, per code
        self.window, self.positive_only = int(window), bool(positive_only)

    @classmethod
    def fit(cls, ctx: FitContext) -> MostPopular:
        p, data = cls.params_of(ctx.train), ctx.data

        def make(window: int, positive: bool) -> MostPopular:
            x = interaction_matrix(data, window, positive)
            counts = torch.sparse.sum(x, 0).to_dense()                   # (n_ids,)
            return cls(counts, window, positive).bind(data)

        best, best.tuning = tune_product(make, {"window": p.window,
                                                "positive_only": p.positive_only},
                                         data, ctx.train.val_ndcg_k)
        return best

    def rank(self, state: TaskBatch) -> torch.Tensor:
        return self.counts[self.codes].expand(len(state), -1)             # (T, N)

    def extra_state(self) -> dict[str, Any]:
        return {"counts": self.counts, "window": self.window,
                "positive_only": self.positive_only}
