"""What the statistical baselines share: the fitted-model base, training ratings, tuning.

A baseline is fitted on the item side (the ratings of the meta-train users), adapts to a task
with closed-form statistics of its support set and predicts in one batched pass over tasks
(masks, no per-user Python). Its tensors are indexed by item vocabulary code, and
:meth:`Baseline.bind` maps the rows of the current item table to those codes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import scipy.sparse
import torch

from metarec.config import bounded
from metarec.data.tasks import EpisodeData, TaskBatch, validation_tasks
from metarec.errors import DataError
from metarec.io import plain
from metarec.metrics import (
    CatalogueMetrics,
    catalogue_metrics,
    catalogue_targets,
    finite_or,
    mae,
    reach_top,
)
from metarec.models.base import Algorithm, Predictor

log = logging.getLogger("metarec.train")


@dataclass(frozen=True)
class ShrinkageParams:
    """A grid of shrinkage pseudo-counts (beta), chosen by validation MAE."""

    shrinkage: tuple[float, ...] = bounded((0.0, 1.0, 2.0, 5.0, 10.0, 25.0), 0.0,
                                           nonempty=True)


class Baseline(Predictor, Algorithm):
    """Shared state: global mean, clipping range, the row -> code map, the tuning record."""

    kind = "baseline"

    def __init__(self, mu: float, rating_range: tuple[float, float]) -> None:
        super().__init__()
        self.name = type(self).name
        self.mu = float(mu)
        self.rating_range = (float(rating_range[0]), float(rating_range[1]))
        self.codes = torch.zeros(0, dtype=torch.long)   # (N,) row -> vocabulary code

    def bind(self, data: EpisodeData) -> Baseline:
        """Score the catalogue of ``data`` (its item rows, mapped to their codes)."""
        self.codes = data.items.id_code.long()
        return self

    @property
    def n_items(self) -> int:
        return int(self.codes.numel())

    def adapt(self, batch: TaskBatch, chunk: int = 0) -> TaskBatch:
        """Baselines keep the task batch itself as the per-task state (support read in rate)."""
        return batch

    def _tasks(self, state: TaskBatch) -> int:
        return len(state)

    def _clip(self, pred: torch.Tensor) -> torch.Tensor:
        return pred.clamp(self.rating_range[0], self.rating_range[1]).float()

    def state(self) -> dict[str, Any]:
        return {"mu": self.mu, "rating_range": list(self.rating_range), "tuning": self.tuning,
                **self.extra_state()}

    def extra_state(self) -> dict[str, Any]:
        return {}

    @classmethod
    def load(cls, state: dict[str, Any], data: EpisodeData) -> Baseline:
        st = dict(state)
        mu, rr, tuning = st.pop("mu"), tuple(st.pop("rating_range")), st.pop("tuning")
        model = cls(mu, rr, **st)
        model.tuning = tuning
        return model.bind(data)


def support_bias(batch: TaskBatch, offset: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """sum_s (r - offset) / (K + shrinkage) per task (T,); 0 for an empty support."""
    m = batch.support_mask.double()                                   # (T, S)
    resid = (batch.support_ratings.double() - offset) * m             # (T, S)
    denom = m.sum(1) + shrinkage                                      # (T,)
    return torch.where(denom > 0, resid.sum(1) / denom.clamp_min(1e-12), 0.0)   # (T,)


def training_ratings(data: EpisodeData, window: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The item side's training data: every training-period interaction of the meta-train
    users (``data.history``), distinct (user, item) pairs, optionally only each user's first
    ``window`` interactions in time (0 = all). user_idx (R,), item_idx (R,) rows, rating (R,).

    Without a history (hand-built episodes) the distinct meta-train task rows stand in.
    """
    if data.history is not None:
        t = data.history
        if window:
            t = t[t.groupby("user_idx", sort=False).cumcount() < window]
        t = t.drop_duplicates(["user_idx", "item_idx"], keep="first")
    else:
        t = data.select("train").drop_duplicates(["user_id", "item_id"], keep="first")
    if t.empty:
        raise DataError("no meta-train interactions to fit the item side on")
    return (torch.tensor(t["user_idx"].to_numpy(), dtype=torch.long),
            torch.tensor(t["item_idx"].to_numpy(), dtype=torch.long),
            torch.tensor(t["rating"].to_numpy(), dtype=torch.float64))


def rows_to_codes(per_row: torch.Tensor, data: EpisodeData) -> torch.Tensor:
    """Per-item-row values (N, ...) as per-code values (n_ids, ...); codes without a row 0.

    Rows sharing a code (new items, all code 0) must agree; items without training ratings
    have all-zero fits, so they do.
    """
    codes = data.items.id_code.long()
    out = per_row.new_zeros((data.items.n_ids, *per_row.shape[1:]))
    out[codes] = per_row
    return out


def validation_batch(data: EpisodeData) -> TaskBatch:
    """Every validation task as one batch (every scenario and K): what tuning reads."""
    if data.select("val").empty:
        raise DataError("no validation tasks to tune the baselines on")
    return validation_tasks(data)


def tune_mae(make: Callable[[Any], Predictor], grid: Sequence[Any], data: EpisodeData
             ) -> tuple[Predictor, dict[str, Any]]:
    """Build ``make(value)`` for every grid value; keep the lowest MAE on the validation tasks
    (pooled over every scenario and K; first wins)."""
    batch = validation_batch(data)
    best, best_mae, scores = None, float("inf"), []
    for value in grid:
        model = make(value)
        score = mae(model.predict(batch, batch.query_items), batch.query_ratings,
                    batch.query_mask)
        scores.append(score)
        if score < best_mae:
            best, best_mae = model, score
    if best is None:
        raise DataError(f"every grid value {list(grid)} gave a non-finite validation MAE")
    return best, {"grid": [float(v) for v in grid], "val_mae": scores}


def validation_ndcg(model: Predictor, batch: TaskBatch, threshold: float, k: int) -> float:
    """Mean catalogue nDCG@k over the tasks of ``batch`` that have a relevant query item."""
    return scores_ndcg(model.rank(model.adapt(batch)), batch, threshold, k)


METRIC_CELLS = 1 << 24   # (task, item) pairs ranked at once: bounds the metric's temporaries


def block_metrics(scores: torch.Tensor, batch: TaskBatch, start: int, threshold: float,
                  k: int, cells: int = METRIC_CELLS) -> list[CatalogueMetrics]:
    """Per-task catalogue metrics@k of (B, N) ``scores`` of tasks ``start:start + B`` of
    ``batch``, ranked ``cells`` (task, item) pairs at a time (several (B, N) temporaries
    each); every task is ranked alone, so the blocks change no value."""
    parts = []
    step = max(1, cells // max(1, scores.shape[1]))
    for a in range(0, scores.shape[0], step):
        rows = slice(start + a, start + min(a + step, scores.shape[0]))
        cands, rel = catalogue_targets(batch.support_items[rows], batch.support_mask[rows],
                                       batch.query_items[rows], batch.query_ratings[rows],
                                       batch.query_mask[rows], scores.shape[1], threshold)
        parts.append(catalogue_metrics(*reach_top(scores[a:a + step].float(), cands, rel, k),
                                       k))
    return parts


def mean_ndcg(parts: list[CatalogueMetrics]) -> float:
    """Mean nDCG over the evaluated tasks of the blocks ``parts``, in task order."""
    return CatalogueMetrics(*(torch.cat([getattr(m, f.name) for m in parts])
                              for f in fields(CatalogueMetrics))).means()["ndcg"]


def scores_ndcg(scores: torch.Tensor, batch: TaskBatch, threshold: float, k: int,
                cells: int = METRIC_CELLS) -> float:
    """:func:`validation_ndcg` of given (T, N) catalogue scores (the same for any ``cells``)."""
    return mean_ndcg(block_metrics(scores, batch, 0, threshold, k, cells))


# (values, first task, (B, N) validation scores of tasks first:first + B under values)
GridScores = Callable[[TaskBatch], Iterable[tuple[tuple[Any, ...], int, torch.Tensor]]]


def tune_product(make: Callable[..., Predictor], axes: dict[str, Sequence[Any]],
                 data: EpisodeData, k: int, scores: GridScores | None = None,
                 search: str | None = None) -> tuple[Predictor, dict[str, Any]]:
    """Keep the combination of the ``axes`` values (``make(*values)``) with the highest
    validation catalogue nDCG@k (first in grid order wins; NaN never does); the record lists
    every combination and its score, and names the axes and the chosen value of each.

    ``scores(batch)``, when given, yields ``(values, first task, (B, N) scores)``: every
    combination's scores of every validation task, each combination's blocks of tasks in
    order, combinations in any order and interleaved. A model whose grid shares one
    factorisation (EASE) or one similarity pass (ItemKNN) scores it without fitting each
    value, in blocks of tasks that bound its memory; only the chosen combination is built.
    Without it, every combination is built and ranks the whole batch.

    ``search``, when given, says why ``scores`` scores only part of the grid (EASE walks its
    penalties on a large catalogue): it is called as ``scores(batch, score)``, ``score(values)``
    the nDCG of a combination whose every task it has yielded (to choose what to score
    next), and the record lists only the scored combinations, in grid order, with ``search``;
    the choice is the same rule over them.
    """
    grid = list(itertools.product(*axes.values()))
    batch = validation_batch(data)
    if scores is None:
        def scores(b: TaskBatch) -> Iterator[tuple[tuple[Any, ...], int, torch.Tensor]]:
            for values in grid:
                model = make(*values)
                yield values, 0, model.rank(model.adapt(b))
    parts: dict[tuple[Any, ...], list[CatalogueMetrics]] = {}
    done: dict[tuple[Any, ...], int] = {}

    def score(values: tuple[Any, ...]) -> float:
        if done.get(values) != len(batch):
            raise ValueError(f"grid scores of {values}: {done.get(values, 0)} of "
                             f"{len(batch)} tasks scored")
        return mean_ndcg(parts[values])

    for values, start, block in scores(batch) if search is None else scores(batch, score):
        if start != done.get(values, 0):
            raise ValueError(f"grid scores of {values}: tasks from {start}, expected "
                             f"{done.get(values, 0)}")
        parts.setdefault(values, []).extend(
            block_metrics(block, batch, start, data.relevance_threshold, k))
        done[values] = start + block.shape[0]
    if search is not None:
        grid = [values for values in grid if values in done]
    if not grid or done != dict.fromkeys(grid, len(batch)):
        raise ValueError(f"the grid scores cover {done} tasks, not {len(batch)} of each "
                         f"combination of {grid}")
    ndcg = [mean_ndcg(parts[values]) for values in grid]
    record: dict[str, Any] = {"grid": [plain(v) for v in grid], f"val_ndcg@{k}": ndcg}
    if search is not None:
        record["search"] = search
    chosen = max(range(len(grid)), key=lambda i: finite_or(ndcg[i]))   # first of the best
    best = make(*grid[chosen])
    if ndcg[chosen] != ndcg[chosen]:   # every score NaN: no task has a relevant query item
        log.warning("no validation task has a query item rated >= %g: %s keeps the first "
                    "grid value %s", data.relevance_threshold, best.name, grid[chosen])
        record["note"] = "no relevant validation item: first grid value kept"
    return best, {", ".join(axes): record, **dict(zip(axes, grid[chosen], strict=True))}


def interaction_matrix(data: EpisodeData, window: int = 0, positive: bool = False
                       ) -> torch.Tensor:
    """Binary (users, item codes) matrix of the meta-train users' history (sparse COO).

    ``window``: only each user's first ``window`` interactions (0 = all); ``positive``: only
    relevant ones (rating at or above the data's relevance threshold)."""
    users, items, ratings = training_ratings(data, window)
    if positive:
        keep = ratings >= data.relevance_threshold
        users, items = users[keep], items[keep]
    codes = data.items.id_code.long()[items]
    values = torch.ones(users.numel(), dtype=torch.float32)
    return torch.sparse_coo_tensor(torch.stack([users, codes]), values,
                                   (len(data.users), data.items.n_ids),
                                   check_invariants=True).coalesce()


def sparse_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of sparse COO matrices as a dense one, by scipy's CSR product (the 10^4 x
    10^4 Gram of scale_10k's 1.4M training interactions: 4.0 s against 5.5 s for torch's
    sparse product, one thread; the same counts, exact either way)."""
    left, right = _csr(a), _csr(b)
    return torch.from_numpy((left @ right).toarray())


def _csr(x: torch.Tensor) -> scipy.sparse.csr_matrix:
    x = x.coalesce()
    rows, cols = x.indices().numpy()
    return scipy.sparse.csr_matrix((x.values().numpy(), (rows, cols)), shape=tuple(x.shape))


class RankingBaseline(Baseline):
    """A baseline that ranks the catalogue and predicts no ratings (no MAE)."""

    predicts_ratings = False

    def __init__(self) -> None:
        super().__init__(0.0, (0.0, 1.0))

    def rate(self, state: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} ranks items and predicts no ratings")

    def state(self) -> dict[str, Any]:
        return {"tuning": self.tuning, **self.extra_state()}

    @classmethod
    def load(cls, state: dict[str, Any], data: EpisodeData) -> RankingBaseline:
        st = dict(state)
        tuning = st.pop("tuning")
        model = cls(**st)
        model.tuning = tuning
        return model.bind(data)
