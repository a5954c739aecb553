"""Gradient-based meta-learning, batched over tasks: what MAML and its relatives share.

The inner loop runs for every task of a meta-batch at once: the adapted parameters carry a
leading task dimension, and ``vmap(grad(task_loss))`` gives each task its own gradient of its
own support loss. Fast weights are plain tensors computed from the meta-parameters, so
second-order MAML differentiates through every inner step (no ``load_state_dict``, no
``deepcopy``, no ``.data``). Embeddings that no task adapts are computed once per meta-batch
("hoisted"), which is exact: they do not depend on the fast weights.

The objective (``train.objective``) has two parts, on the support in the inner loop and on the
query in the outer loop: squared error of the rating head on rated items (explicit labels),
and a ranking loss of the ranking head against the catalogue (:mod:`metarec.meta.losses`),
whose positives are the relevant items (rated at or above the data's relevance threshold; every
interaction for implicit labels). The outer ranking loss never counts a support item as a
candidate; sampled negatives are never one of the task's own items.

:class:`MetaAlgorithm` is both the learnable module (network + any learned inner machinery)
and, class-level, the registry contract of :mod:`metarec.models.base`: ``fit`` hands a builder
to the outer loop the train stage injects, ``load`` rebuilds a checkpoint. Each algorithm
(``metarec.algorithms.<name>``) subclasses it and changes only what makes it different.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metarec.config import ModelParams, ObjectiveParams, TrainParams, to_dict
from metarec.data.tasks import EpisodeData
from metarec.meta.catalogue import CatalogueRanking
from metarec.meta.features import FeatureStore, TaskSet
from metarec.meta.losses import masked_mse, ranking_loss, task_mean
from metarec.meta.warm_start import svd_start
from metarec.models.base import Algorithm, FitContext
from metarec.models.network import Feats, PreferenceNet, build_network, network_kwargs

Params = dict[str, Tensor]
RATING_ONLY = {"ranking_weight": 0.0, "inner": "rating"}   # the objective before ranking heads
__all__ = ["MetaAlgorithm", "Params", "masked_mse", "task_mean"]


class MetaAlgorithm(CatalogueRanking, nn.Module, Algorithm):
    """Gradient-based adaptation of a subset of the network's parameters, batched over tasks.

    ``inner_lr`` is a float, or (Meta-SGD) learned per parameter; ``noise`` is the Meta-Dropout
    noise generator or ``None``. ``objective`` is a :class:`ObjectiveParams` as a dict,
    ``relevance`` the rating from which an item is a positive, ``explicit`` whether ratings
    (not counts or 0/1 labels) are there to be predicted, ``fold_in`` whether the user vector
    reads the support items' context vectors.
    """

    kind = "meta"
    uses_draws = True
    adapts: ClassVar[bool] = True       # has an inner loop whose test-time steps can be tuned
    first_order: ClassVar[bool] = False
    # The outer gradient differentiates through inner-loop gradients (a double backward).
    # PyTorch's DistributedDataParallel does not support that, so DDP refuses these.
    second_order: ClassVar[bool] = True
    ddp_unused_parameters: ClassVar[bool] = True   # a head the objective does not use

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int,
                 objective: dict[str, Any] | None = None, fold_in: bool = False,
                 relevance: float = 4.0, explicit: bool = True) -> None:
        super().__init__()
        self.model = model
        self.adapt_group = adapt
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.objective = ObjectiveParams(**(objective if objective is not None
                                            else RATING_ONLY))
        self.fold_in, self.relevance, self.explicit = bool(fold_in), float(relevance), explicit
        unused = self.unused_heads()   # a head no loss reads is not adapted either
        self.adapt_names = [n for n in model.adapted_names(adapt) if not n.startswith(unused)]
        self.noise: nn.Module | None = None
        n_ids = model.item_bias.num_embeddings
        self.register_buffer("log_q", torch.full((n_ids,), -torch.log(torch.tensor(
            float(n_ids))).item(), dtype=model.global_bias.dtype))      # sampler log-probs
        self._catalogue: Feats | None = None
        # how much a support item from another platform counts (2 sigmoid: 1 at the start,
        # as much as the task's own), learned in the outer loop on cross-marked tasks
        self.cross_trust = nn.Parameter(torch.zeros((), dtype=model.global_bias.dtype))

    def unused_heads(self) -> tuple[str, ...]:
        """Prefixes of the parameters no part of the objective reads."""
        use_rating = self.explicit and (self.objective.rating_weight > 0 or not self.ranks
                                        or self.objective.inner in ("rating", "both"))
        return (() if self.ranks else ("rank_out.",)) + (() if use_rating else ("out.",))

    @property
    def ranks(self) -> bool:
        """Trained to rank: the ranking head orders the catalogue."""
        return self.objective.ranking_weight > 0

    @property
    def rates(self) -> bool:
        """Trained on ratings too (explicit labels and a rating weight)."""
        return self.explicit and self.objective.rating_weight > 0

    @property
    def rank_output(self) -> str:
        return "rank" if self.ranks else "logit"

    # --- the registry contract -------------------------------------------------------------

    @classmethod
    def config_from(cls, model: ModelParams, train: TrainParams, data: EpisodeData | None = None
                    ) -> dict[str, Any]:
        """Constructor arguments (besides the network) from the params and the data."""
        explicit = data is None or data.vocab["rating"].get("kind", "explicit") == "explicit"
        return {"adapt": model.adapt, "inner_lr": train.inner_lr,
                "inner_steps": train.inner_steps, "objective": to_dict(train.objective),
                "fold_in": model.fold_in, "explicit": explicit,
                "relevance": data.relevance_threshold if data is not None else 4.0}

    @classmethod
    def outer_lr(cls, train: TrainParams) -> float:
        return train.outer_lr

    @classmethod
    def ddp_refusal(cls, train: TrainParams) -> str | None:
        if cls.second_order:
            return ("its meta-gradient is second order (it differentiates through the inner "
                    "loop's gradients), which PyTorch's DistributedDataParallel does not "
                    "support; use fomaml or reptile")
        return None

    @classmethod
    def create(cls, data: EpisodeData, model: ModelParams, train: TrainParams
               ) -> MetaAlgorithm:
        """A freshly initialised algorithm (the outer loop calls this after seeding)."""
        kwargs = network_kwargs(data.items, data.users, data.rating_range, model)
        algo = cls(build_network(kwargs), **cls.config_from(model, train, data))
        algo.network_kwargs = kwargs
        algo.set_popularity(data, train.objective.popularity_power)
        if model.warm_start == "svd":
            svd_start(algo.model, data)
        return algo

    @classmethod
    def fit(cls, ctx: FitContext) -> Any:
        from metarec.meta.predictor import AdaptivePredictor

        assert ctx.meta_train is not None, "meta-learners are fitted by the train stage"
        result = ctx.meta_train(cls.name, lambda: cls.create(ctx.data, ctx.model, ctx.train),
                                cls.outer_lr(ctx.train))
        store = FeatureStore(ctx.data.users, ctx.data.items)
        return AdaptivePredictor(cls.name, result.algorithm, store,
                                 fit_metrics=result.metrics())

    @classmethod
    def load(cls, state: dict[str, Any], data: EpisodeData) -> Any:
        from metarec.meta.predictor import AdaptivePredictor

        algo = cls(build_network(state["network_kwargs"]), **state["config"])
        algo.network_kwargs = state["network_kwargs"]
        weights = dict(state["state_dict"])
        # a checkpoint from before the cross-platform trust: weight 1, as it was then
        weights.setdefault("cross_trust", algo.cross_trust.detach().clone())
        algo.load_state_dict(weights)
        return AdaptivePredictor(cls.name, algo, FeatureStore(data.users, data.items),
                                 fit_metrics=state.get("fit", {}))

    def state(self) -> dict[str, Any]:
        """What :meth:`load` rebuilds this from: weights, constructor arguments."""
        return {"state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
                "network_kwargs": self.network_kwargs, "config": self.config()}

    # --- parameters ------------------------------------------------------------------------

    def meta_params(self) -> Params:
        """The initial values of the adapted parameters (no task dimension)."""
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self.adapt_names}

    def outer_parameters(self) -> Iterator[nn.Parameter]:
        """What the outer optimiser updates: the network and any learned inner machinery."""
        return self.parameters()

    def learning_rates(self) -> dict[str, Tensor | float]:
        return {n: self.inner_lr for n in self.adapt_names}

    # --- inputs ----------------------------------------------------------------------------

    def prepare(self, ts: TaskSet) -> TaskSet:
        """Replace feature indices by embeddings where no adapted parameter touches them."""
        items = ts.items
        if "v" not in items and not PreferenceNet.projects_items(self.adapt_names):
            items = self.model.item_vectors(items)                       # (T, L, d)
        elif "x" not in items and "v" not in items \
                and not PreferenceNet.embeds_items(self.adapt_names):
            items = self.model.embed_items(items)                        # (T, L, ·)
        return TaskSet(user=self.prepare_user(ts.user), items=items, ratings=ts.ratings,
                       mask=ts.mask, rows=ts.rows, cross=ts.cross)

    def support_weights(self, mask: Tensor, cross: Tensor | None) -> Tensor:
        """(T, S) weight of each support item: 0 padded, 1 the task's own, the learned trust
        ``2 sigmoid(cross_trust)`` one from another platform."""
        w = mask.to(self.cross_trust.dtype)
        if cross is None:
            return w
        trust = 2.0 * torch.sigmoid(self.cross_trust)
        return w * torch.where(cross, trust, torch.ones_like(trust))

    def prepare_user(self, user: Feats) -> Feats:
        """The user's inputs: feature embeddings (T, Du) and the pooled support (T, d), or the
        user vector (T, d) itself, computed once unless an adapted parameter computes them
        (then per task)."""
        if "u" in user:
            return user
        out = {k: v for k, v in user.items()
               if k not in ("pool_ids", "pool_mask", "pool_cross")}
        if "x" not in out and not PreferenceNet.embeds_users(self.adapt_names):
            out = {"x": self.model.embed_users(out), **({"pool": out["pool"]}
                                                        if "pool" in out else {})}
        if self.fold_in and "pool" not in out and "pool_ids" in user:
            weights = self.support_weights(user["pool_mask"], user.get("pool_cross"))
            if PreferenceNet.pools(self.adapt_names):
                out.update(pool_ids=user["pool_ids"], pool_mask=weights)
            else:
                out["pool"] = self.model.pool_support(user["pool_ids"], weights)
        if "x" in out and not PreferenceNet.projects_users(self.adapt_names):
            out = {"u": self.model.user_vector(out)}                     # (T, d), once
        return out

    def positives(self, ts: TaskSet) -> Tensor:
        """(T, L) weights of a side's positives: its relevant, valid items."""
        return (ts.mask & (ts.ratings >= self.relevance)).to(ts.ratings.dtype)

    # --- the contract ----------------------------------------------------------------------

    def _forward(self, fast: Params, user: Feats, items: Feats,
                 perturb: Callable[[Tensor], Tensor] | None = None,
                 output: str = "rating") -> Tensor:
        return functional_call(self.model, fast, (user, items),
                               {"perturb": perturb, "output": output})

    def adapt(self, params: Params, support: TaskSet, *, create_graph: bool = True,
              generator: torch.Generator | None = None) -> Params:
        """Task parameters (T, ...) after ``inner_steps`` SGD steps on each task's support.

        ``create_graph=False`` (evaluation, scoring) builds no outer graph at all.
        """
        if not create_graph:
            with torch.no_grad():  # torch.func.grad still differentiates inside no_grad
                return self._adapt(params, self.prepare(support), False, generator)
        return self._adapt(params, self.prepare(support), True, generator)

    def _inner_uses(self) -> tuple[bool, bool]:
        """(rating part, ranking part) of the inner-loop loss."""
        inner = self.objective.inner
        return (inner in ("rating", "both") and self.explicit,
                inner in ("ranking", "both") and self.ranks or not self.explicit)

    def support_loss(self, fast: Params, user: Feats, items: Feats, ratings: Tensor,
                     mask: Tensor, pos_w: Tensor, pos_logq: Tensor, table: Feats,
                     valid: Tensor, cand_logq: Tensor | None, noise: Tensor | None) -> Tensor:
        """One task's inner-loop loss (no task dimension); ``noise``: Meta-Dropout's draw."""
        perturb = self.noise.perturb(noise) if self.noise is not None else None  # type: ignore
        use_rating, use_ranking = self._inner_uses()
        loss = ratings.new_zeros(())
        if use_rating:
            loss = loss + masked_mse(self._forward(fast, user, items, perturb), ratings, mask)
        if use_ranking:
            pos = self._forward(fast, user, items, perturb, "rank")                # (S,)
            cand = self._forward(fast, user, table, None, "rank")                 # (C,)
            loss = loss + ranking_loss(self.objective.loss, pos, pos_w, cand, valid,
                                       pos_logq, cand_logq)
        return loss

    def adapt_steps(self, support: TaskSet, steps: Sequence[int],
                    generator: torch.Generator | None = None) -> dict[int, Params]:
        """Task parameters after each number of inner steps in ``steps``, from one inner loop
        of max(steps) steps (no outer graph): the same numbers as :meth:`adapt` with each
        ``inner_steps``, at the cost of the longest (step i draws the same random numbers)."""
        want, keep = set(int(s) for s in steps), self.inner_steps
        out: dict[int, Params] = {}
        try:
            self.inner_steps = max(want)
            with torch.no_grad():
                path = self._inner_path(self.meta_params(), self.prepare(support), False,
                                        generator)
                for i, fast in enumerate(path):
                    if i in want:
                        out[i] = fast
        finally:
            self.inner_steps = keep
        return out

    def _adapt(self, params: Params, support: TaskSet, create_graph: bool,
               generator: torch.Generator | None) -> Params:
        last = collections.deque(self._inner_path(params, support, create_graph, generator),
                                 maxlen=1)
        return last[0]

    def _inner_path(self, params: Params, support: TaskSet, create_graph: bool,
                    generator: torch.Generator | None) -> Iterator[Params]:
        """The task parameters (T, ...) before the first inner step and after each one."""
        t = len(support)
        fast = {k: v.expand(t, *v.shape) for k, v in params.items()}    # (T, ...)
        if not create_graph:
            fast = {k: v.detach() for k, v in fast.items()}
        yield fast
        if self.inner_steps == 0:
            return
        lrs = self.learning_rates()
        use_ranking = self._inner_uses()[1]
        if use_ranking:
            table, rows, cand_logq = self.candidates(t, generator)
            valid = torch.ones(t, rows.numel(), dtype=torch.bool, device=rows.device)
            pos_logq = self.row_logq(support.rows)                       # (T, S)
        else:
            table, valid, cand_logq = {"v": support.ratings[:1, :1]}, support.mask[:, :1], None
            pos_logq = support.ratings
        weights = self.support_weights(support.mask, support.cross)         # (T, S)
        pos_w = self.positives(support) * weights if use_ranking else support.ratings
        in_dims = (0, 0, 0, 0, 0, 0, 0, None, 0, None, 0)
        step_grad = vmap(grad(self.support_loss), in_dims=in_dims)
        shape = (t, *support.mask.shape[1:], self.model.hidden_width)
        for _ in range(self.inner_steps):
            eps = None
            if self.noise is not None:
                eps = torch.randn(shape, generator=generator, dtype=support.ratings.dtype,
                                  device=support.ratings.device)         # (T, S, w)
            g = step_grad(fast, support.user, support.items, support.ratings, weights,
                          pos_w, pos_logq, table, valid, cand_logq,
                          eps if eps is not None else support.ratings)
            if self.first_order or not create_graph:
                g = {k: v.detach() for k, v in g.items()}
            fast = {k: fast[k] - lrs[k] * g[k] for k in fast}
            yield fast

    def predict(self, task_params: Params, items: TaskSet, output: str = "rating") -> Tensor:
        """Ratings (or ``output`` scores) (T, L) of each task's items under its own params."""
        ts = self.prepare(items)
        return vmap(lambda f, u, i: self._forward(f, u, i, None, output))(
            task_params, ts.user, ts.items)

    def loss(self, task_params: Params, query: TaskSet, support: TaskSet | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """The outer objective on the query: the weighted rating MSE and ranking loss."""
        obj, total = self.objective, query.ratings.new_zeros(())
        if self.rates or not self.ranks:
            pred = self.predict(task_params, query)                              # (T, Q)
            total = total + (obj.rating_weight if self.ranks else 1.0) * task_mean(
                masked_mse(pred, query.ratings, query.mask), query.mask)
        if self.ranks:
            total = total + obj.ranking_weight * self._ranking_loss(task_params, query,
                                                                    support, generator)
        return total

    # --- outer loop ------------------------------------------------------------------------

    def outer_loss(self, support: TaskSet, query: TaskSet) -> tuple[Tensor, Tensor]:
        """(objective whose gradient is the meta-gradient, query loss to report)."""
        loss = self.loss(self.adapt(self.meta_params(), support), query, support)
        return loss, loss.detach()

    def post_step(self) -> None:
        """Called after the outer optimiser's step (Reptile's interpolation)."""

    def config(self) -> dict[str, Any]:
        """Constructor arguments, saved in checkpoints to rebuild the algorithm."""
        return {"adapt": self.adapt_group, "inner_lr": self.inner_lr,
                "inner_steps": self.inner_steps, "objective": to_dict(self.objective),
                "fold_in": self.fold_in, "relevance": self.relevance,
                "explicit": self.explicit}
