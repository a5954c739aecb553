"""A learner behind the :class:`~metarec.models.base.Predictor` interface, and
the validation scores its training keeps the best weights by."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from metarec.data.recency import Recency, window_steps
from metarec.data.tasks import TaskBatch
from metarec.meta.features import FeatureStore
from metarec.meta.learner import Learner, Params
from metarec.meta.losses import masked_mse
from metarec.metrics import batch_catalogue_metrics
from metarec.models.base import Predictor
from metarec.models.network import Feats, PreferenceNet

CELLS = 1 << 21  # (task, item) pairs scored at once when ranking the catalogue
State = tuple[dict[str, Params], Feats]   # ({"rate": fast, "rank": fast}, user context)


class AdaptivePredictor(Predictor):
    """Adapts to each task's support set (never its query ratings), then scores items.

    The state of a batch is (adapted parameters for rating and for ranking, the prepared user
    context). Ratings and the ranking may use different numbers of test-time inner steps
    (``steps``, each chosen on validation by its own metric); equal numbers adapt once.
    Meta-Dropout and sampled negatives draw random numbers while adapting; a generator seeded
    with ``seed`` + the chunk number on every call makes predictions repeatable.
    """

    def __init__(self, name: str, learner: Learner, store: FeatureStore,
                 seed: int = 0, fit_metrics: dict[str, Any] | None = None,
                 adapts: bool = True) -> None:
        super().__init__()
        self.name = name
        self.learner = learner.eval()
        self.store = store
        self.seed = seed
        self.adapts = adapts        # declared by the registry entry (tunable test-time steps)
        self.fit_metrics = dict(fit_metrics or {})
        self.tuning = self.fit_metrics
        self._item_table: dict[str, Tensor] | None = None
        self.steps = {"rate": learner.inner_steps, "rank": learner.inner_steps}
        learner.use_catalogue(store)

    def recency_window(self) -> tuple[int, int] | None:
        net = self.learner.model
        return ((window_steps(net.recent_days, net.recent_step_days), net.recent_step_days)
                if net.recency else None)

    def use_recency(self, recency: Recency) -> None:
        if self.learner.model.recency:
            self.store.set_recency(recency)
            self._item_table = None                 # the table carries the recency

    def set_steps(self, rate: int | None = None, rank: int | None = None) -> None:
        """Test-time inner steps of the rating and of the ranking (None: unchanged)."""
        self.steps = {"rate": self.steps["rate"] if rate is None else int(rate),
                      "rank": self.steps["rank"] if rank is None else int(rank)}

    @property
    def predicts_ratings(self) -> bool:  # type: ignore[override]
        return self.learner.explicit

    @property
    def n_items(self) -> int:
        return self.store.n_items

    def _generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator(device=self.store.device).manual_seed(self.seed + offset)

    def adapt(self, batch: TaskBatch, chunk: int = 0) -> State:
        """(adapted parameters (T, ...) per output, user context (T, ·)); ``chunk`` offsets
        the random seed. Ratings and ranking share one inner loop (the longer's)."""
        fast, user = self._path(batch, sorted(set(self.steps.values())), chunk)
        return {k: fast[v] for k, v in self.steps.items()}, user

    def adapt_grid(self, batch: TaskBatch, grid: Sequence[int], chunk: int = 0
                   ) -> dict[int, State]:
        """The state :meth:`adapt` would give with each number of inner steps in ``grid``
        (ratings and ranking alike), from one inner loop of max(grid) steps: what a
        validation grid search or an inner-steps curve needs, at the cost of its longest."""
        fast, user = self._path(batch, grid, chunk)
        return {s: ({"rate": fast[s], "rank": fast[s]}, user) for s in grid}

    def _path(self, batch: TaskBatch, steps: Sequence[int], chunk: int
              ) -> tuple[dict[int, Params], Feats]:
        learner = self.learner
        fast = learner.adapt_steps(self.store.support(batch), steps, self._generator(chunk))
        with torch.no_grad():
            user = learner.prepare_user(self.store.user_context(batch))
        return fast, user

    def _tasks(self, state: State) -> int:
        return int(next(iter(state[1].values())).shape[0])

    def rate(self, state: State, items: Tensor) -> Tensor:
        """Predicted ratings (T, C) for item rows ``items`` (T, C)."""
        fast, user = state
        with torch.no_grad():
            return self.learner.predict(fast["rate"], self.store.candidates(user, items)
                                          ).float()

    def rank(self, state: State) -> Tensor:
        """Ranking scores (T, N) of the whole catalogue (:func:`rank_catalogue`)."""
        with torch.no_grad():
            return rank_catalogue(self.learner, state[0]["rank"], state[1], self._table())

    def rank_blocks(self, state: State, cells: int | None = None
                    ) -> Iterator[tuple[int, Tensor]]:
        """The same scores as :meth:`rank`, one block of catalogue columns at a time (each one
        batched product of every task's parameters with the block's item vectors)."""
        with torch.no_grad():
            yield from catalogue_blocks(self.learner, state[0]["rank"], state[1],
                                        self._table(), cells, reuse=True)

    def explain(self, batch: TaskBatch, items: Tensor) -> Tensor | None:
        """The support item whose (projected) vector is nearest, by cosine, to each
        recommended item's: what the user vector was pulled toward."""
        table = self._table()
        if "v" not in table:      # the item side is adapted per user: no shared vectors
            return None
        v = torch.nn.functional.normalize(table["v"], dim=-1)            # (N, d)
        sup, rec = v[batch.support_items], v[items]                       # (T, S, d), (T, k, d)
        return self._argmax_support(sup @ rec.transpose(1, 2), batch.support_mask)

    def _table(self) -> dict[str, Tensor]:
        if self._item_table is None:
            with torch.no_grad():
                self._item_table = self.learner.item_table(
                    self.store.items(torch.arange(self.n_items, device=self.store.device)))
        return self._item_table

    def state(self) -> dict[str, Any]:
        # no clock in a checkpoint: the same inputs, params and code give the same bytes
        # (how long the fit took stays in metrics/train.json)
        fit = {k: v for k, v in self.fit_metrics.items() if k != "seconds"}
        return {**self.learner.state(), "fit": fit}


def catalogue_blocks(learner: Learner, fast: Params, user: Feats,
                     table: dict[str, Tensor], cells: int | None = None, reuse: bool = False
                     ) -> Iterator[tuple[int, Tensor]]:
    """(first column, scores (T, B)) per block of the catalogue ``table`` (item vectors
    computed once), B chosen so that a block holds about ``cells`` (default ``CELLS``) task x
    item scores. A dot model's block is one GEMM of the tasks' queries with the items' keys
    (:meth:`~metarec.meta.catalogue.CatalogueRanking.catalogue_queries`), written into one
    buffer when ``reuse`` (then a block is valid only until the next is asked for: no fresh
    pages to fault in per block); other models give one batched product of every task's
    parameters with B items."""
    t = int(next(iter(user.values())).shape[0])
    n = int(next(iter(table.values())).shape[0])
    step = max(1, (CELLS if cells is None else cells) // max(t, 1))
    queries = learner.catalogue_queries(fast, user, table)
    if queries is not None:
        queries = queries.float()
        keys = PreferenceNet.item_keys(table, learner.rank_output).float()  # (N, d + 2)
        buf = torch.empty((t, min(step, n)), device=queries.device) if reuse else None
        for c0 in range(0, n, step):
            block = keys[c0:c0 + step].T
            if buf is not None and block.shape[1] == buf.shape[1]:
                scores = torch.mm(queries, block, out=buf)                 # (T, B)
            else:
                scores = queries @ block
            recent = learner.recent_block(fast, user, table, c0, c0 + step)
            yield c0, scores if recent is None else scores.add_(recent.float())
        return
    for c0 in range(0, n, step):
        block = {k: v[c0:c0 + step] for k, v in table.items()}
        yield c0, learner.catalogue_scores(fast, user, block).float()      # (T, B)


def rank_catalogue(learner: Learner, fast: Params, user: Feats,
                   table: dict[str, Tensor]) -> Tensor:
    """Ranking scores (T, N) of the catalogue ``table``: :func:`catalogue_blocks` side by
    side (memory bounded by ``CELLS`` task x item pairs per block while computing)."""
    t = int(next(iter(user.values())).shape[0])
    parts = [scores for _, scores in catalogue_blocks(learner, fast, user, table)]
    return torch.cat(parts, dim=1) if parts else torch.zeros(t, 0)          # (T, N)


def validation_sums(learner: Learner, store: FeatureStore, batch: TaskBatch,
                    generator: torch.Generator | None = None, k: int = 20
                    ) -> tuple[float, int]:
    """(sum, count) of the validation loss after adaptation; lower is better.

    A ranking model: 1 - catalogue nDCG@k per task with a relevant query item (what it is
    for); a rating model: squared error per query rating. Sums make the result independent of
    how tasks are batched (and add up across DDP processes).
    """
    support, query = store.support(batch), store.query(batch)
    fast = learner.adapt(learner.meta_params(), support, create_graph=False,
                           generator=generator)
    with torch.no_grad():
        if learner.ranks:
            user = learner.prepare_user(store.user_context(batch))
            table = learner.item_table(store.items(torch.arange(store.n_items,
                                                                  device=store.device)))
            scores = rank_catalogue(learner, fast, user, table)          # (T, N)
            ndcg = batch_catalogue_metrics(scores.cpu(), batch.to("cpu"), learner.relevance,
                                           k)
            ok = ndcg.evaluated
            return float((1.0 - ndcg.ndcg[ok]).sum()), int(ok.sum())
        pred = learner.predict(fast, query)                              # (T, Q)
        n = query.mask.sum(-1)                                             # (T,)
        sse = (masked_mse(pred, query.ratings, query.mask) * n).sum()
    return float(sse), int(n.sum())


def validation_loss(learner: Learner, store: FeatureStore, tasks: TaskBatch,
                    chunk: int = 512, k: int = 20) -> float:
    """:func:`validation_sums` over all ``tasks`` in chunks (the seeds validation uses)."""
    total, n = 0.0, 0
    for b, start in enumerate(range(0, len(tasks), chunk)):
        idx = torch.arange(start, min(start + chunk, len(tasks)))
        gen = torch.Generator(device=store.device).manual_seed(b)
        s, c = validation_sums(learner, store, tasks.take(idx).to(store.device), gen, k)
        total, n = total + s, n + c
    return total / max(n, 1)
