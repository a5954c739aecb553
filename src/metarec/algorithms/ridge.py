"""``ridge`` (after Bertinetto et al., ICLR 2019): a closed-form inner loop.

Each task's user weights are a ridge fit to its support. With item features
``phi_i = [item_proj(x_i), 1]`` (D = d + 1) and residual targets ``y = r - global_bias - b_i``,
a task's weights are the MAP estimate under the prior ``w ~ N(w0(user features),
diag(lam)^-1)``::

    w = (Phi^T M Phi + diag(lam))^-1 (Phi^T M y + lam * w0),   w0 = [user_proj(x_u), b_u]

solved with one batched solve (:func:`metarec.models.linalg.ridge_solve`, differentiable, so
the query loss trains ``lam``, the prior and the item side end-to-end). An empty support gives
``w = w0``: the prediction from features alone. Ratings are ``global_bias + b_i + phi_i . w``,
clamped to the rating range; the ranking score is the unclamped value. The solve is exact:
there are no inner steps to tune.

Meta-training starts at biased MF (``mf_init``): ALS item factors and biases on the meta-train
ratings, so step 0 predicts what :mod:`metarec.algorithms.biased_mf` with that ``lam`` does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarec.algorithms import register
from metarec.config import ModelParams, TrainParams, bounded
from metarec.data.tasks import EpisodeData
from metarec.meta.features import TaskSet
from metarec.meta.learner import Learner, Params
from metarec.meta.losses import masked_mse, task_mean
from metarec.models.base import Capabilities
from metarec.models.linalg import fit_als, ridge_solve
from metarec.models.network import Feats, PreferenceNet
from metarec.models.statistical import training_ratings
from metarec.train.entries import LearnerAlgorithm

QUERY_LOSSES = ("mse", "mae", "huber")


@dataclass(frozen=True)
class RidgeParams:
    lam: float = bounded(3.0, 1e-9)                    # initial prior precision of the fit
    query_loss: Literal["mse", "mae", "huber"] = "mse"  # outer loss on the query
    outer_lr: float = bounded(3e-4, 0.0)               # replaces train.outer_lr
    train_item_ids: bool = False                        # meta-train per-item-id vectors/biases
    item_features: bool = False                         # item feature embeddings enter phi
    mf_init: bool = True                                # start item side from a biased-MF fit
    mf_reg: float = bounded(5.0, 0.0)                  # ALS ridge penalty of that fit
    mf_iters: int = bounded(15, 1)                     # ALS iterations of that fit


class RidgeLearner(Learner):
    """The closed-form inner loop: each task's user weights are a ridge fit to its support."""

    def __init__(self, model: PreferenceNet, adapt: str = "all", lam: float = 1.0,
                 query_loss: str = "mse", train_item_ids: bool = True,
                 item_features: bool = True, **common: Any) -> None:
        super().__init__(model, adapt, **{**common, "objective": None, "fold_in": False})
        if not item_features and model.item_id is None:
            raise ValueError("ridge item_features=False needs the item-id embedding")
        self.train_item_ids = bool(train_item_ids)
        self.item_features = bool(item_features)
        if query_loss not in QUERY_LOSSES:
            raise ValueError(f"query_loss must be one of {QUERY_LOSSES}, got {query_loss!r}")
        if lam <= 0:
            raise ValueError(f"ridge lam must be > 0, got {lam}")
        # the per-task state w depends on item-side parameters: nothing can be hoisted
        self.adapt_names = [n for n, _ in model.named_parameters()]
        self.query_loss = query_loss
        dim = model.user_proj.out_features + 1
        dtype = model.global_bias.dtype
        self.log_lam = nn.Parameter(torch.full((dim,), math.log(lam), dtype=dtype))

    def init_from_mf(self, data: EpisodeData, reg: float, iters: int, seed: int) -> None:
        """Item-id embedding = ALS factors, item bias = ALS biases, ``item_proj`` reads only
        that block; global bias = the training mean; user prior 0; ``lam`` unchanged."""
        net = self.model
        if net.item_id is None:
            raise ValueError("train.ridge.mf_init needs model.item_id_embedding: true")
        users, items, ratings = training_ratings(data)
        mu = float(ratings.mean())
        d = net.item_id.embedding_dim
        q, b_i = fit_als(users, items, ratings, len(data.users), len(data.items), mu, d,
                         reg, iters, seed)                               # (N, d), (N,)
        codes = data.items.id_code.long()                                # (N,)
        dtype = net.global_bias.dtype
        with torch.no_grad():
            net.item_id.weight.zero_()
            net.item_id.weight.index_copy_(0, codes, q.to(dtype))
            net.item_bias.weight.zero_()
            net.item_bias.weight[:, 0].index_copy_(0, codes, b_i.to(dtype))
            net.item_proj.weight.zero_()
            net.item_proj.weight[:, -d:] = torch.eye(d, dtype=dtype)  # the id block comes last
            net.item_proj.bias.zero_()
            net.user_proj.weight.zero_()
            net.user_proj.bias.zero_()
            net.user_bias.zero_()
            net.global_bias.fill_(mu)

    def meta_params(self) -> Params:
        return {"log_lam": self.log_lam}

    def outer_parameters(self) -> Iterator[nn.Parameter]:
        """Everything, or (``train_item_ids=False``) all but the per-item-id tables.

        Per-item-id vectors and biases of rarely rated items overfit their few query ratings
        and then float to the top of a full-catalogue ranking; shared feature embeddings do not.
        """
        frozen = () if self.train_item_ids else ("model.item_id.", "model.item_bias.")
        return (p for n, p in self.named_parameters() if not n.startswith(frozen))

    def _user_prior(self, user: Feats) -> Tensor:
        m = self.model
        xu = user["x"] if "x" in user else m.embed_users(user)           # (T, Du)
        u = m.user_proj(xu)                                               # (T, d)
        return torch.cat([u, m.user_bias.expand(*u.shape[:-1], 1)], -1)  # (T, D)

    def item_side(self, items: Feats) -> tuple[Tensor, Tensor]:
        """(..., L, D) ridge features and (..., L) rating offsets of the items."""
        m = self.model
        emb = items if "x" in items else m.embed_items(items)
        xi, ib = emb["x"], emb["bias"]                                    # (.., L, Di), (.., L)
        if self.item_features:
            phi = m.item_proj(xi)                                         # (..., L, d)
        else:  # only the item-id block (the last d columns) of the item embedding
            assert m.item_id is not None
            d_id = m.item_id.embedding_dim
            phi = F.linear(xi[..., -d_id:], m.item_proj.weight[:, -d_id:], m.item_proj.bias)
        phi = torch.cat([phi, torch.ones_like(phi[..., :1])], -1)         # (..., L, D)
        return phi, ib + m.global_bias

    def adapt(self, params: Params, support: TaskSet, *, create_graph: bool = True,
              generator: torch.Generator | None = None) -> Params:
        """{"w": (T, D)}: each task's MAP user weights on its support (no SGD, no noise)."""
        if not create_graph:
            with torch.no_grad():
                return self._solve(params, support)
        return self._solve(params, support)

    def adapt_steps(self, support: TaskSet, steps: Sequence[int],
                    generator: torch.Generator | None = None) -> dict[int, Params]:
        """The closed form has no inner steps: one solve serves every count."""
        fast = self.adapt(self.meta_params(), support, create_graph=False)
        return {int(s): fast for s in steps}

    def _solve(self, params: Params, support: TaskSet) -> Params:
        phi, offset = self.item_side(support.items)                       # (T, S, D), (T, S)
        w0 = self._user_prior(support.user)                               # (T, D)
        lam = params["log_lam"].exp()                                     # (D,)
        return {"w": ridge_solve(phi, support.ratings - offset, support.mask, lam, w0)}

    def scores(self, task_params: Params, items: TaskSet) -> Tensor:
        """Unclamped ratings (T, L): the ranking score."""
        phi, offset = self.item_side(items.items)                         # (T, L, D), (T, L)
        return offset + (phi * task_params["w"].unsqueeze(1)).sum(-1)     # (T, L)

    def predict(self, task_params: Params, items: TaskSet, output: str = "rating") -> Tensor:
        raw = self.scores(task_params, items)
        return raw if output != "rating" else raw.clamp(self.model.rating_min,
                                                        self.model.rating_max)

    def item_table(self, items: Feats) -> Feats:
        """The catalogue's ridge features (N, D) and offsets (N,), computed once."""
        phi, offset = self.item_side(items)
        return {"phi": phi, "offset": offset}

    def catalogue_scores(self, task_params: Params, user: Feats, table: Feats,
                         output: str | None = None) -> Tensor:
        """Unclamped ratings (T, N): one matmul with each task's weights."""
        return table["offset"] + task_params["w"] @ table["phi"].T        # (T, N)

    def loss(self, task_params: Params, query: TaskSet, support: TaskSet | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        pred = self.predict(task_params, query)                           # (T, Q)
        if self.query_loss == "mse":
            per_task = masked_mse(pred, query.ratings, query.mask)
        else:
            e = (pred - query.ratings).abs() if self.query_loss == "mae" else F.huber_loss(
                pred, query.ratings, reduction="none", delta=0.5)           # (T, Q)
            m = query.mask.to(pred.dtype)
            per_task = (e * m).sum(-1) / m.sum(-1).clamp(min=1.0)
        return task_mean(per_task, query.mask)

    def config(self) -> dict[str, Any]:
        base = {k: v for k, v in super().config().items() if k not in ("objective", "fold_in")}
        return {**base, "lam": float(self.log_lam.detach().exp().mean()),
                "query_loss": self.query_loss, "train_item_ids": self.train_item_ids,
                "item_features": self.item_features}


@register
class Ridge(LearnerAlgorithm):
    name = "ridge"
    Params = RidgeParams
    learner = RidgeLearner
    # one backward through a closed-form solve (no inner gradients, no steps to tune); the
    # closed-form head bypasses the network's output layer
    capabilities = Capabilities(gradient=True, uses_draws=True, unused_parameters=True)

    @classmethod
    def config_from(cls, model: ModelParams, train: TrainParams,
                    data: EpisodeData | None = None) -> dict[str, Any]:
        p = cls.params_of(train)
        return {**super().config_from(model, train, data), "lam": p.lam,
                "query_loss": p.query_loss, "train_item_ids": p.train_item_ids,
                "item_features": p.item_features}

    @classmethod
    def outer_lr(cls, train: TrainParams) -> float:
        return cls.params_of(train).outer_lr

    @classmethod
    def create(cls, data: EpisodeData, model: ModelParams, train: TrainParams) -> Learner:
        learner = super().create(data, model, train)
        p = cls.params_of(train)
        if p.mf_init:
            learner.init_from_mf(data, p.mf_reg, p.mf_iters, train.seed)  # type: ignore
        return learner
