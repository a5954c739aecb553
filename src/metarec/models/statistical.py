"""What the statistical baselines share: the fitted-model base, training ratings, tuning.

A baseline is fitted on the item side (the ratings of the meta-train users), adapts to a task
with closed-form statistics of its support set and predicts in one batched pass over tasks
(masks, no per-user Python). Its tensors are indexed by item vocabulary code, and
:meth:`Baseline.bind` maps the rows of the current item table to those codes.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from metarec.config import bounded
from metarec.data.tasks import EpisodeData, TaskBatch, validation_tasks
from metarec.errors import DataError
from metarec.io import plain
from metarec.metrics import batch_catalogue_metrics, finite_or, mae
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
    scores = model.rank(model.adapt(batch))                                  # (T, N)
    return batch_catalogue_metrics(scores.float(), batch, threshold, k).means()["ndcg"]


def tune_ndcg(make: Callable[[Any], Predictor], grid: Sequence[Any], data: EpisodeData,
              k: int) -> tuple[Predictor, dict[str, Any]]:
    """Build ``make(value)`` for every grid value; keep the highest validation catalogue
    nDCG@k (first wins); the record lists every value and its score."""
    batch = validation_batch(data)
    best, best_score, scores = None, -1.0, []
    for value in grid:
        model = make(value)
        score = validation_ndcg(model, batch, data.relevance_threshold, k)
        scores.append(score)
        if score > best_score:
            best, best_score = model, score
    record: dict[str, Any] = {"grid": [plain(v) for v in grid], f"val_ndcg@{k}": scores}
    if best is None:   # every score NaN: no validation task has a relevant query item
        log.warning("no validation task has a query item rated >= %g: %s keeps the first "
                    "grid value %s", data.relevance_threshold, type(make(grid[0])).name,
                    grid[0])
        best = make(grid[0])
        record["note"] = "no relevant validation item: first grid value kept"
    return best, record


def tune_product(make: Callable[..., Predictor], axes: dict[str, Sequence[Any]],
                 data: EpisodeData, k: int) -> tuple[Predictor, dict[str, Any]]:
    """:func:`tune_ndcg` over every combination of the ``axes`` values (``make(*values)``);
    the tuning record names the axes and the chosen value of each."""
    grid = list(itertools.product(*axes.values()))
    best, record = tune_ndcg(lambda values: make(*values), grid, data, k)
    chosen = grid[int(max(range(len(grid)), key=lambda i: finite_or(record[f"val_ndcg@{k}"][i])))]
    return best, {", ".join(axes): record, **dict(zip(axes, chosen, strict=True))}


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
    """``a @ b`` of sparse matrices as a dense one (torch's beta-CSR notice silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse.mm(a, b).to_dense()


def support_matrix(batch: TaskBatch, codes: torch.Tensor, n_codes: int) -> torch.Tensor:
    """(T, n_codes) binary rows: which item codes each task's support holds."""
    x = torch.zeros(len(batch), n_codes)
    x.scatter_reduce_(1, codes[batch.support_items], batch.support_mask.float(), reduce="amax")
    return x


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
