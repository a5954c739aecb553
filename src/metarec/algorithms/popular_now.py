"""``popular_now``: every user gets what was most popular in the weeks before their moment.

The time-aware most-popular baseline: the network's popular-now input
(:mod:`metarec.data.recency`) ranked on its own, so that what that input brings is measured
against the simplest model that has it. Its window (``window_days``, whole steps of
``step_days``) is chosen on validation (catalogue nDCG); near-ties are broken by the all-time
count (a hundredth of a point at most). Evaluation reads the meta-train history at each
task's moment; the nightly batch the log's window before the night.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from metarec.algorithms import register
from metarec.config import bounded
from metarec.data.recency import Recency, recency, window_steps
from metarec.data.tasks import EpisodeData, TaskBatch
from metarec.models.base import Capabilities, FitContext
from metarec.models.statistical import RankingBaseline, interaction_matrix, tune_product

TIE_WEIGHT = 0.01     # the all-time count's share: below one interaction's log step


@dataclass(frozen=True)
class PopularNowParams:
    window_days: tuple[int, ...] = bounded((7, 14, 28, 56), 1, nonempty=True)
    step_days: int = bounded(7, 1)


@register
class PopularNow(RankingBaseline):
    name = "popular_now"
    capabilities = Capabilities(seeded=False)   # no random draw: one fit serves all seeds
    Params = PopularNowParams

    def __init__(self, counts: torch.Tensor, window_days: int = 28,
                 step_days: int = 7) -> None:
        super().__init__()
        self.counts = counts.float()              # (n_ids,) all-time, per code: near-ties
        self.window_days, self.step_days = int(window_days), int(step_days)
        self.recency: Recency | None = None

    def bind(self, data: EpisodeData) -> PopularNow:
        """The catalogue of ``data`` and, when it has a history, what was popular when."""
        super().bind(data)
        if data.history is not None:
            h = data.history
            self.recency = recency(h["item_idx"].to_numpy(), h["timestamp"].to_numpy(),
                                   self.n_items, *self.recency_window())
        return self

    @classmethod
    def fit(cls, ctx: FitContext) -> PopularNow:
        p, data = cls.params_of(ctx.train), ctx.data
        counts = torch.sparse.sum(interaction_matrix(data), 0).to_dense()   # (n_ids,)

        def make(window_days: int) -> PopularNow:
            return cls(counts, window_days, p.step_days).bind(data)

        best, best.tuning = tune_product(make, {"window_days": p.window_days}, data,
                                         ctx.train.val_ndcg_k)
        return best

    def recency_window(self) -> tuple[int, int]:
        return window_steps(self.window_days, self.step_days), self.step_days

    def use_recency(self, recency: Recency) -> None:
        self.recency = recency

    def rank(self, state: TaskBatch) -> torch.Tensor:
        if self.recency is None or state.now is None:
            raise ValueError("popular_now needs what was popular when (a history, or the "
                             "night's counts) and each task's moment (TaskBatch.now)")
        now = self.recency.values[:, self.recency.periods(state.now)].T    # (T, N)
        total = torch.log1p(self.counts[self.codes])                        # (N,)
        return now + TIE_WEIGHT * total / total.max().clamp(min=1.0)

    def extra_state(self) -> dict[str, Any]:
        return {"counts": self.counts, "window_days": self.window_days,
                "step_days": self.step_days}
