"""Statistical cold-start baselines behind the :class:`ColdStartPredictor` interface.

A meta-learner is only worth its cost if it beats these. Every baseline is fitted on the
meta-train ratings (deduplicated by (user, item): meta-train draws repeat ratings), adapts to a
task with closed-form statistics of its support set, and predicts in one batched pass over
tasks (masks, no per-user Python). Every hyper-parameter is picked on the validation tasks
from the small grids of :class:`BaselineGrids`; the test tasks are never read here.

Predictors (``name``):

- ``global_mean``: mu.
- ``item_mean``: mu + sum_i (r - mu) / (n_i + beta_i), the item mean shrunk toward mu.
- ``user_mean``: mu + sum_s (r - mu) / (K + beta_u), the support mean shrunk toward mu.
- ``item_user_bias``: mu + b_i + b_u, b_i from ``item_mean``, b_u = sum_s (r - mu - b_i) /
  (K + beta_u) with its own validation-tuned beta_u.
- ``biased_mf``: mu + b_i + q_i . p_u + b_u, item factors and biases from ALS on the meta-train
  ratings; a cold user's (p_u, b_u) is the ridge solution on the support set (lambda tuned).

Items without meta-train ratings (new items) have b_i = 0 and q_i = 0, so they fall back to
mu + the user's bias. Predictions are clipped to the rating range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metarec.data.tasks import EpisodeData, TaskBatch, to_batch
from metarec.errors import DataError
from metarec.eval.metrics import mae
from metarec.io import atomic_path

FORMAT = "metarec-baselines/1"


@dataclass(frozen=True)
class BaselineGrids:
    """Validation grids (small on purpose: with ~100 validation users a big grid overfits)."""

    item_shrinkage: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0)
    user_shrinkage: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 25.0)
    mf_reg: tuple[float, ...] = (5.0, 15.0, 40.0)      # ALS ridge on the meta-train ratings
    mf_user_lambda: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0)  # cold-user ridge
    mf_dim: int = 16
    mf_iters: int = 15


# ---------------------------------------------------------------------------------------------
# the predictors


class Baseline:
    """Shared state: global mean, clipping range and the validation record of the tuning."""

    name = "baseline"

    def __init__(self, mu: float, rating_range: tuple[float, float]) -> None:
        self.mu = float(mu)
        self.rating_range = (float(rating_range[0]), float(rating_range[1]))
        self.tuning: dict[str, Any] = {}

    def predict(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings (T, C) for candidate items (T, C) after reading the support."""
        raise NotImplementedError

    def _clip(self, pred: torch.Tensor) -> torch.Tensor:
        return pred.clamp(self.rating_range[0], self.rating_range[1]).float()

    def state(self) -> dict[str, Any]:
        """Plain tensors, floats, lists and dicts only: loadable with ``weights_only=True``."""
        return {"kind": self.name, "mu": self.mu, "rating_range": list(self.rating_range),
                "tuning": self.tuning, **self._extra_state()}

    def _extra_state(self) -> dict[str, Any]:
        return {}


def _support_bias(batch: TaskBatch, offset: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """sum_s (r - offset) / (K + shrinkage) per task (T,); 0 for an empty support."""
    m = batch.support_mask.double()                                   # (T, S)
    resid = (batch.support_ratings.double() - offset) * m             # (T, S)
    denom = m.sum(1) + shrinkage                                      # (T,)
    return torch.where(denom > 0, resid.sum(1) / denom.clamp_min(1e-12), 0.0)   # (T,)


class GlobalMean(Baseline):
    """The mean meta-train rating: the floor every model must clear."""

    name = "global_mean"

    def predict(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        return self._clip(torch.full(items.shape, self.mu, dtype=torch.float64))  # (T, C)


class ItemMean(Baseline):
    """Item popularity in rating terms; ignores the support (a cold user's non-personal floor)."""

    name = "item_mean"

    def __init__(self, mu: float, rating_range: tuple[float, float], item_resid: torch.Tensor,
                 item_count: torch.Tensor, shrinkage: float) -> None:
        super().__init__(mu, rating_range)
        self.item_resid = item_resid.double()      # (N,) sum of (r - mu) per item
        self.item_count = item_count.double()      # (N,) meta-train ratings per item
        self.shrinkage = float(shrinkage)

    @property
    def item_bias(self) -> torch.Tensor:
        """(N,) shrunk item offsets from mu; 0 for an item without meta-train ratings."""
        denom = self.item_count + self.shrinkage                      # (N,)
        return torch.where(denom > 0, self.item_resid / denom.clamp_min(1e-12), 0.0)

    def predict(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        return self._clip(self.mu + self.item_bias[items])            # (T, C)

    def _extra_state(self) -> dict[str, Any]:
        return {"item_resid": self.item_resid, "item_count": self.item_count,
                "shrinkage": self.shrinkage}


class UserMean(Baseline):
    """The user's own support mean, shrunk toward mu so one rating does not decide everything."""

    name = "user_mean"

    def __init__(self, mu: float, rating_range: tuple[float, float], shrinkage: float) -> None:
        super().__init__(mu, rating_range)
        self.shrinkage = float(shrinkage)

    def predict(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        b_u = _support_bias(batch, torch.tensor(self.mu, dtype=torch.float64), self.shrinkage)
        return self._clip((self.mu + b_u)[:, None].expand(items.shape))   # (T, C)

    def _extra_state(self) -> dict[str, Any]:
        return {"shrinkage": self.shrinkage}


class ItemUserBias(Baseline):
    """Item mean plus the user's shrunk mean residual on the support: the classic bias model."""

    name = "item_user_bias"

    def __init__(self, mu: float, rating_range: tuple[float, float], item_bias: torch.Tensor,
                 shrinkage: float) -> None:
        super().__init__(mu, rating_range)
        self.item_bias = item_bias.double()        # (N,)
        self.shrinkage = float(shrinkage)

    def predict(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        offset = self.mu + self.item_bias[batch.support_items]        # (T, S)
        b_u = _support_bias(batch, offset, self.shrinkage)            # (T,)
        return self._clip(self.mu + self.item_bias[items] + b_u[:, None])  # (T, C)

    def _extra_state(self) -> dict[str, Any]:
        return {"item_bias": self.item_bias, "shrinkage": self.shrinkage}


def ridge(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """Batched masked ridge regression: argmin_w sum_s m (y - x w)^2 + lam |w|^2, per task.

    x (T, S, D), y (T, S), mask (T, S) -> w (T, D). Solved in closed form with one batched
    ``torch.linalg.solve`` in float64; an empty support gives w = 0.
    """
    xm = x.double() * mask[..., None]                                  # (T, S, D)
    eye = torch.eye(x.shape[-1], dtype=torch.float64)                  # (D, D)
    a = torch.einsum("tsd,tse->tde", xm, x.double()) + lam * eye       # (T, D, D)
    b = torch.einsum("tsd,ts->td", xm, y.double())                     # (T, D)
    return torch.linalg.solve(a, b)                                    # (T, D)


class BiasedMF(Baseline):
    """Biased MF; a cold user's vector and bias are a ridge fit to the support in closed form."""

    name = "biased_mf"

    def __init__(self, mu: float, rating_range: tuple[float, float], item_factors: torch.Tensor,
                 item_bias: torch.Tensor, user_lambda: float) -> None:
        super().__init__(mu, rating_range)
        self.item_factors = item_factors.double()  # (N, d), 0 for items without ratings
        self.item_bias = item_bias.double()        # (N,)
        self.user_lambda = float(user_lambda)

    def _features(self, items: torch.Tensor) -> torch.Tensor:
        q = self.item_factors[items]                                   # (..., d)
        return torch.cat([q, torch.ones_like(q[..., :1])], -1)        # (..., d + 1)

    def user_weights(self, batch: TaskBatch) -> torch.Tensor:
        """(T, d + 1): each task's user vector and (last) bias, fitted on its support only."""
        x = self._features(batch.support_items)                        # (T, S, d + 1)
        y = batch.support_ratings.double() - self.mu - self.item_bias[batch.support_items]
        return ridge(x, y, batch.support_mask, self.user_lambda)       # (T, d + 1)

    def predict(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        w = self.user_weights(batch)                                   # (T, d + 1)
        score = torch.einsum("tcd,td->tc", self._features(items), w)  # (T, C)
        return self._clip(self.mu + self.item_bias[items] + score)     # (T, C)

    def _extra_state(self) -> dict[str, Any]:
        return {"item_factors": self.item_factors, "item_bias": self.item_bias,
                "user_lambda": self.user_lambda}


# ---------------------------------------------------------------------------------------------
# fitting


def training_ratings(data: EpisodeData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct meta-train ratings: user_idx (R,), item_idx (R,), rating (R,) float64."""
    t = data.select("train").drop_duplicates(["user_id", "item_id"], keep="first")
    if t.empty:
        raise DataError("no meta-train ratings to fit the baselines on")
    return (torch.tensor(t["user_idx"].to_numpy(), dtype=torch.long),
            torch.tensor(t["item_idx"].to_numpy(), dtype=torch.long),
            torch.tensor(t["rating"].to_numpy(), dtype=torch.float64))


def _grouped_ridge(rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor, n_rows: int,
                   lam: float, chunk: int = 16384) -> torch.Tensor:
    """One ALS half-step: a ridge fit per row id over its ratings, (n_rows, D).

    rows (R,), x (R, D), y (R,). Gram matrices are summed with ``index_add_`` in chunks of
    ratings (bounded memory, deterministic on CPU); a row without ratings gets w = 0.
    """
    d = x.shape[1]
    a = torch.zeros(n_rows, d, d, dtype=torch.float64)                 # (n, D, D)
    b = torch.zeros(n_rows, d, dtype=torch.float64)                    # (n, D)
    for s in range(0, rows.numel(), chunk):
        xs, ys, rs = x[s:s + chunk], y[s:s + chunk], rows[s:s + chunk]
        a.index_add_(0, rs, xs[:, :, None] * xs[:, None, :])           # (chunk, D, D)
        b.index_add_(0, rs, xs * ys[:, None])                          # (chunk, D)
    a += lam * torch.eye(d, dtype=torch.float64)
    return torch.linalg.solve(a, b)                                    # (n, D)


def fit_als(users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, n_users: int,
            n_items: int, mu: float, dim: int, reg: float, iters: int, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch ALS for r - mu = p_u . q_i + b_u + b_i; returns (item factors, item bias).

    Seeded and deterministic. The user half-step is the same ridge a cold user gets at test
    time, so the item factors are trained for exactly the adaptation they will be used with.
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_items, dim, generator=gen, dtype=torch.float64) * 0.1   # (N, d)
    b_i = torch.zeros(n_items, dtype=torch.float64)                           # (N,)
    one = torch.ones(ratings.numel(), 1, dtype=torch.float64)                 # (R, 1)
    resid = ratings - mu                                                      # (R,)
    for _ in range(iters):
        w_u = _grouped_ridge(users, torch.cat([q[items], one], 1), resid - b_i[items],
                             n_users, reg)                                    # (U, d + 1)
        p, b_u = w_u[:, :dim], w_u[:, dim]
        w_i = _grouped_ridge(items, torch.cat([p[users], one], 1), resid - b_u[users],
                             n_items, reg)                                    # (N, d + 1)
        q, b_i = w_i[:, :dim], w_i[:, dim]
    return q, b_i


def _tune(make: Any, grid: tuple[float, ...], batch: TaskBatch) -> tuple[Any, dict[str, Any]]:
    """Build ``make(value)`` for every grid value; keep the lowest validation MAE (first wins)."""
    best, best_mae, scores = None, float("inf"), []
    for value in grid:
        model = make(value)
        score = mae(model.predict(batch, batch.query_items), batch.query_ratings,
                    batch.query_mask)
        scores.append(score)
        if score < best_mae:
            best, best_mae = model, score
    if best is None:
        raise DataError(f"every grid value {grid} gave a non-finite validation MAE")
    return best, {"grid": [float(v) for v in grid], "val_mae": scores}


def fit_baselines(data: EpisodeData, seed: int, grids: BaselineGrids | None = None
                  ) -> dict[str, Baseline]:
    """Fit every baseline on the meta-train ratings and tune it on the validation tasks.

    Validation MAE is pooled over all validation tasks (every scenario and K) so that one
    setting serves all of them. Returns {name: predictor}; each predictor's ``tuning`` records
    the grid and its validation MAEs.
    """
    grids = grids or BaselineGrids()
    val = data.select("val")
    if val.empty:
        raise DataError("no validation tasks to tune the baselines on")
    vb = to_batch(val)
    users, items, ratings = training_ratings(data)
    n_users, n_items = len(data.users), len(data.items)
    rr = data.rating_range
    mu = float(ratings.mean())
    resid = torch.zeros(n_items, dtype=torch.float64).index_add_(0, items, ratings - mu)
    count = torch.zeros(n_items, dtype=torch.float64).index_add_(
        0, items, torch.ones_like(ratings))

    out: dict[str, Baseline] = {"global_mean": GlobalMean(mu, rr)}
    item_mean, rec = _tune(lambda b: ItemMean(mu, rr, resid, count, b), grids.item_shrinkage, vb)
    item_mean.tuning = {"shrinkage": rec}
    out["item_mean"] = item_mean
    user_mean, rec = _tune(lambda b: UserMean(mu, rr, b), grids.user_shrinkage, vb)
    user_mean.tuning = {"shrinkage": rec}
    out["user_mean"] = user_mean
    bias, rec = _tune(lambda b: ItemUserBias(mu, rr, item_mean.item_bias, b),
                      grids.user_shrinkage, vb)
    bias.tuning = {"shrinkage": rec, "item_shrinkage": item_mean.shrinkage}
    out["item_user_bias"] = bias

    # joint grid: one ALS fit per training reg, then every cold-user lambda on that fit
    best_mf, best_mae, best_reg, mf_record = None, float("inf"), 0.0, []
    for reg in grids.mf_reg:
        q, b_i = fit_als(users, items, ratings, n_users, n_items, mu, grids.mf_dim, reg,
                         grids.mf_iters, seed)
        mf, rec = _tune(lambda lam, q=q, b_i=b_i: BiasedMF(mu, rr, q, b_i, lam),
                        grids.mf_user_lambda, vb)
        mf_record.append({"reg": float(reg), **rec})
        if min(rec["val_mae"]) < best_mae:
            best_mf, best_mae, best_reg = mf, min(rec["val_mae"]), float(reg)
    if best_mf is None:
        raise DataError("biased_mf: every setting of the grid gave a non-finite validation MAE")
    best_mf.tuning = {"reg": best_reg, "user_lambda": mf_record, "dim": grids.mf_dim,
                      "iters": grids.mf_iters, "seed": seed}
    out["biased_mf"] = best_mf
    return out


# ---------------------------------------------------------------------------------------------
# persistence

_KINDS = {"global_mean": GlobalMean, "item_mean": ItemMean, "user_mean": UserMean,
          "item_user_bias": ItemUserBias, "biased_mf": BiasedMF}


def save_baselines(predictors: dict[str, Baseline], path: str | Path) -> Path:
    """Write every fitted baseline to one file, atomically (plain tensors and dicts only)."""
    blob = {"format": FORMAT, "models": {name: p.state() for name, p in predictors.items()}}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def load_baselines(path: str | Path) -> dict[str, Baseline]:
    """Read a file written by :func:`save_baselines` (with ``weights_only=True``)."""
    blob = torch.load(path, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise DataError(f"not a {FORMAT} file", file=str(path))
    out: dict[str, Baseline] = {}
    for name, st in blob["models"].items():
        st = dict(st)
        kind, mu, rr, tuning = st.pop("kind"), st.pop("mu"), tuple(st.pop("rating_range")), \
            st.pop("tuning")
        if kind not in _KINDS:
            raise DataError(f"unknown baseline kind {kind!r}", file=str(path))
        if kind == "item_mean":
            model: Baseline = ItemMean(mu, rr, st["item_resid"], st["item_count"],
                                        st["shrinkage"])
        elif kind == "user_mean":
            model = UserMean(mu, rr, st["shrinkage"])
        elif kind == "item_user_bias":
            model = ItemUserBias(mu, rr, st["item_bias"], st["shrinkage"])
        elif kind == "biased_mf":
            model = BiasedMF(mu, rr, st["item_factors"], st["item_bias"], st["user_lambda"])
        else:
            model = GlobalMean(mu, rr)
        model.tuning = tuning
        out[name] = model
    return out
