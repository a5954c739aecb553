"""Gradient-based meta-learning, batched over tasks: what MAML and its relatives share.

The inner loop runs for every task of a meta-batch at once: the adapted parameters carry a
leading task dimension, and ``vmap(grad(task_loss))`` gives each task its own gradient of its
own masked support loss. Fast weights are plain tensors computed from the meta-parameters, so
second-order MAML differentiates through every inner step (no ``load_state_dict``, no
``deepcopy``, no ``.data``). Embeddings that no task adapts are computed once per meta-batch
("hoisted"), which is exact: they do not depend on the fast weights.

:class:`MetaAlgorithm` is both the learnable module (network + any learned inner machinery)
and, class-level, the registry contract of :mod:`metarec.models.base`: ``fit`` hands a builder
to the outer loop the train stage injects, ``load`` rebuilds a checkpoint. Each algorithm
(``metarec.algorithms.<name>``) subclasses it and changes only what makes it different.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metarec.config import ModelParams, TrainParams
from metarec.data.tasks import EpisodeData
from metarec.meta.features import FeatureStore, TaskSet
from metarec.models.base import Algorithm, FitContext
from metarec.models.network import Feats, PreferenceNet, build_network, network_kwargs

Params = dict[str, Tensor]


def masked_mse(pred: Tensor, ratings: Tensor, mask: Tensor) -> Tensor:
    """Per-task mean squared error over valid positions: (..., L) -> (...); empty -> 0."""
    m = mask.to(pred.dtype)
    return ((pred - ratings) ** 2 * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def task_mean(per_task: Tensor, mask: Tensor) -> Tensor:
    """Mean of per-task losses (T,) over the tasks that have at least one rating."""
    has = mask.any(-1).to(per_task.dtype)                              # (T,)
    return (per_task * has).sum() / has.sum().clamp(min=1.0)


class MetaAlgorithm(nn.Module, Algorithm):
    """Gradient-based adaptation of a subset of the network's parameters, batched over tasks.

    ``inner_lr`` is a float, or (Meta-SGD) learned per parameter; ``noise`` is the Meta-Dropout
    noise generator or ``None``.
    """

    kind = "meta"
    adapts: ClassVar[bool] = True       # has an inner loop whose test-time steps can be tuned
    first_order: ClassVar[bool] = False
    # The outer gradient differentiates through inner-loop gradients (a double backward).
    # PyTorch's DistributedDataParallel does not support that, so DDP refuses these.
    second_order: ClassVar[bool] = True

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int
                 ) -> None:
        super().__init__()
        self.model = model
        self.adapt_group = adapt
        self.adapt_names = model.adapted_names(adapt)
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.noise: nn.Module | None = None

    # --- the registry contract -------------------------------------------------------------

    @classmethod
    def config_from(cls, model: ModelParams, train: TrainParams) -> dict[str, Any]:
        """Constructor arguments (besides the network) from the params."""
        return {"adapt": model.adapt, "inner_lr": train.inner_lr,
                "inner_steps": train.inner_steps}

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
        algo = cls(build_network(kwargs), **cls.config_from(model, train))
        algo.network_kwargs = kwargs
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
        algo.load_state_dict(state["state_dict"])
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
        if "x" not in items and not PreferenceNet.embeds_items(self.adapt_names):
            x, bias = self.model.embed_items(items)                      # (T, L, Di), (T, L)
            items = {"x": x, "bias": bias}
        return TaskSet(user=self.prepare_user(ts.user), items=items, ratings=ts.ratings,
                       mask=ts.mask)

    def prepare_user(self, user: Feats) -> Feats:
        """User feature embeddings (T, Du), computed once unless an adapted parameter
        embeds users (then the raw features, embedded per task)."""
        if "x" not in user and not PreferenceNet.embeds_users(self.adapt_names):
            return {"x": self.model.embed_users(user)}
        return user

    # --- the contract ----------------------------------------------------------------------

    def _forward(self, fast: Params, user: Feats, items: Feats,
                 perturb: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        return functional_call(self.model, fast, (user, items), {"perturb": perturb})

    def adapt(self, params: Params, support: TaskSet, *, create_graph: bool = True,
              generator: torch.Generator | None = None) -> Params:
        """Task parameters (T, ...) after ``inner_steps`` SGD steps on each task's support.

        ``create_graph=False`` (evaluation, scoring) builds no outer graph at all.
        """
        if not create_graph:
            with torch.no_grad():  # torch.func.grad still differentiates inside no_grad
                return self._adapt(params, self.prepare(support), False, generator)
        return self._adapt(params, self.prepare(support), True, generator)

    def support_loss(self, fast: Params, user: Feats, items: Feats, ratings: Tensor,
                     mask: Tensor, noise: Tensor | None) -> Tensor:
        """One task's inner-loop loss (no task dimension); ``noise``: Meta-Dropout's draw."""
        perturb = self.noise.perturb(noise) if noise is not None else None  # type: ignore
        return masked_mse(self._forward(fast, user, items, perturb), ratings, mask)

    def _adapt(self, params: Params, support: TaskSet, create_graph: bool,
               generator: torch.Generator | None) -> Params:
        t = len(support)
        fast = {k: v.expand(t, *v.shape) for k, v in params.items()}    # (T, ...)
        if not create_graph:
            fast = {k: v.detach() for k, v in fast.items()}
        lrs = self.learning_rates()
        if self.noise is None:
            step_grad = vmap(grad(lambda f, u, i, r, m: self.support_loss(f, u, i, r, m, None)))
        else:
            step_grad = vmap(grad(self.support_loss))
            shape = (t, *support.mask.shape[1:], self.model.hidden_width)
        for _ in range(self.inner_steps):
            if self.noise is None:
                g = step_grad(fast, support.user, support.items, support.ratings, support.mask)
            else:
                eps = torch.randn(shape, generator=generator, dtype=support.ratings.dtype,
                                  device=support.ratings.device)         # (T, S, w)
                g = step_grad(fast, support.user, support.items, support.ratings,
                              support.mask, eps)
            if self.first_order or not create_graph:
                g = {k: v.detach() for k, v in g.items()}
            fast = {k: fast[k] - lrs[k] * g[k] for k in fast}
        return fast

    def predict(self, task_params: Params, items: TaskSet) -> Tensor:
        """Ratings (T, L) of each task's items under its own parameters."""
        ts = self.prepare(items)
        return vmap(self._forward)(task_params, ts.user, ts.items)

    # --- the whole catalogue -----------------------------------------------------------------

    def item_table(self, items: Feats) -> Feats:
        """Catalogue items (N, ·) prepared once for :meth:`catalogue_scores`: embedded and
        projected when no adapted parameter touches the item side, raw features otherwise."""
        if PreferenceNet.projects_items(self.adapt_names):
            return items
        v, bias = self.model.item_vectors(items)                         # (N, d), (N,)
        return {"v": v, "bias": bias}

    def catalogue_scores(self, task_params: Params, user: Feats, table: Feats) -> Tensor:
        """Ranking scores (T, C) of the ``table`` items (shared by every task): the
        pre-sigmoid output of the network under each task's own parameters."""
        def one(fast: Params, u: Feats) -> Tensor:
            return functional_call(self.model, fast, (u, table), {"output": "logit"})

        return vmap(one)(task_params, self.prepare_user(user))           # (T, C)

    def loss(self, task_params: Params, query: TaskSet) -> Tensor:
        """Mean over tasks of the masked query MSE; the outer objective of MAML-type methods."""
        pred = self.predict(task_params, query)                          # (T, Q)
        return task_mean(masked_mse(pred, query.ratings, query.mask), query.mask)

    # --- outer loop ------------------------------------------------------------------------

    def outer_loss(self, support: TaskSet, query: TaskSet) -> tuple[Tensor, Tensor]:
        """(objective whose gradient is the meta-gradient, query loss to report)."""
        loss = self.loss(self.adapt(self.meta_params(), support), query)
        return loss, loss.detach()

    def post_step(self) -> None:
        """Called after the outer optimiser's step (Reptile's interpolation)."""

    def config(self) -> dict[str, Any]:
        """Constructor arguments, saved in checkpoints to rebuild the algorithm."""
        return {"adapt": self.adapt_group, "inner_lr": self.inner_lr,
                "inner_steps": self.inner_steps}
