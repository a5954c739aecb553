"""A trained algorithm behind the :class:`~metarec.models.base.ColdStartPredictor` interface."""

from __future__ import annotations

import torch
from torch import Tensor

from metarec.data.tasks import TaskBatch
from metarec.meta.algorithms import MetaAlgorithm, masked_mse
from metarec.meta.features import FeatureStore


class AdaptivePredictor:
    """Adapts to each task's support set (never its query ratings), then scores candidates.

    Meta-Dropout samples noise while adapting; a generator seeded with ``seed`` on every call
    makes predictions repeatable.
    """

    def __init__(self, name: str, algorithm: MetaAlgorithm, store: FeatureStore,
                 seed: int = 0) -> None:
        self.name = name
        self.algorithm = algorithm.eval()
        self.store = store
        self.seed = seed

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.store.device).manual_seed(self.seed)

    def predict(self, batch: TaskBatch, items: Tensor) -> Tensor:
        """Predicted ratings (T, C) for item indices ``items`` (T, C)."""
        support = self.store.support(batch)
        algo = self.algorithm
        fast = algo.adapt(algo.meta_params(), support, create_graph=False,
                          generator=self._generator())
        with torch.no_grad():
            cands = self.store.candidates(batch.user_idx, items)
            return algo.predict(fast, cands).float()                     # (T, C)


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
