"""A meta-learned algorithm behind the :class:`~metarec.models.base.Predictor` interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metarec.data.tasks import TaskBatch
from metarec.meta.features import FeatureStore
from metarec.meta.gradient import MetaAlgorithm, Params, masked_mse
from metarec.models.base import Predictor

CELLS = 1 << 20  # (task, item) pairs scored at once when ranking the catalogue

class AdaptivePredictor(Predictor):
    """Adapts to each task's support set (never its query ratings), then scores items.

    Meta-Dropout samples noise while adapting; a generator seeded with ``seed`` on every call
    makes predictions repeatable.
    """

    def __init__(self, name: str, algorithm: MetaAlgorithm, store: FeatureStore,
                 seed: int = 0, fit_metrics: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.name = name
        self.algorithm = algorithm.eval()
        self.store = store
        self.seed = seed
        self.fit_metrics = dict(fit_metrics or {})
        self.tuning = self.fit_metrics
        self._item_table: dict[str, Tensor] | None = None

    @property
    def predicts_ratings(self) -> bool:  # type: ignore[override]
        return True

    @property
    def n_items(self) -> int:
        return self.store.n_items

    def _generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator(device=self.store.device).manual_seed(self.seed + offset)

    def adapt(self, batch: TaskBatch, chunk: int = 0) -> tuple[Params, Tensor]:
        """(adapted parameters (T, ...), user rows (T,)); ``chunk`` offsets the noise seed."""
        algo = self.algorithm
        fast = algo.adapt(algo.meta_params(), self.store.support(batch), create_graph=False,
                          generator=self._generator(chunk))
        return fast, batch.user_idx

    def _tasks(self, state: tuple[Params, Tensor]) -> int:
        return int(state[1].shape[0])

    def rate(self, state: tuple[Params, Tensor], items: Tensor) -> Tensor:
        """Predicted ratings (T, C) for item rows ``items`` (T, C)."""
        fast, user_idx = state
        with torch.no_grad():
            cands = self.store.candidates(user_idx, items)
            return self.algorithm.predict(fast, cands).float()           # (T, C)

    def rank(self, state: tuple[Params, Tensor]) -> Tensor:
        """Ranking scores (T, N) of the whole catalogue: item vectors computed once per
        predictor, then per block of items one batched product with every task's parameters
        (memory bounded by ``CELLS`` task x item pairs per block)."""
        fast, user_idx = state
        t, n = int(user_idx.shape[0]), self.n_items
        step = max(1, CELLS // max(t, 1))
        with torch.no_grad():
            table = self._table()
            user = self.store.users(user_idx.to(self.store.device))
            parts = [self.algorithm.catalogue_scores(
                fast, user, {k: v[c0:c0 + step] for k, v in table.items()}).float()
                for c0 in range(0, n, step)]
        return torch.cat(parts, dim=1) if parts else torch.zeros(t, 0)      # (T, N)

    def _table(self) -> dict[str, Tensor]:
        if self._item_table is None:
            self._item_table = self.algorithm.item_table(
                self.store.items(torch.arange(self.n_items, device=self.store.device)))
        return self._item_table

    def state(self) -> dict[str, Any]:
        return {**self.algorithm.state(), "fit": self.fit_metrics}


def query_loss_sum(algorithm: MetaAlgorithm, store: FeatureStore, batch: TaskBatch,
                   generator: torch.Generator | None = None) -> tuple[float, int]:
    """(sum of squared query errors, number of query ratings) after adaptation: for validation.

    Weighting by ratings (not tasks) makes the result independent of how tasks are batched.
    """
    support, query = store.support(batch), store.query(batch)
    fast = algorithm.adapt(algorithm.meta_params(), support, create_graph=False,
                           generator=generator)
    with torch.no_grad():
        pred = algorithm.predict(fast, query)                            # (T, Q)
        n = query.mask.sum(-1)                                           # (T,)
        sse = (masked_mse(pred, query.ratings, query.mask) * n).sum()
    return float(sse), int(n.sum())


def validation_loss(algorithm: MetaAlgorithm, store: FeatureStore, tasks: TaskBatch,
                    chunk: int = 512) -> float:
    """Query MSE per rating over all ``tasks`` after adaptation (same seeds as validation)."""
    sse, n = 0.0, 0
    for b, start in enumerate(range(0, len(tasks), chunk)):
        idx = torch.arange(start, min(start + chunk, len(tasks)))
        gen = torch.Generator(device=store.device).manual_seed(b)
        s, c = query_loss_sum(algorithm, store, tasks.take(idx).to(store.device), gen)
        sse, n = sse + s, n + c
    return sse / max(n, 1)
