"""Meta-learning algorithms with one contract: ``adapt(params, support)`` and ``loss``.

The inner loop runs for every task of a meta-batch at once: the adapted parameters carry a
leading task dimension, and ``vmap(grad(task_loss))`` gives each task its own gradient of its
own masked support loss. Fast weights are plain tensors computed from the meta-parameters, so
second-order MAML differentiates through every inner step (no ``load_state_dict``, no
``deepcopy``, no ``.data``). Embeddings that no task adapts are computed once per meta-batch
("hoisted"), which is exact: they do not depend on the fast weights.

Algorithms:

- ``maml`` (second order), ``fomaml`` (inner gradients treated as constants);
- ``metasgd``: one learned inner learning rate per adapted parameter entry (second order);
- ``metadropout`` (Lee et al., ICLR 2020): in the inner loop the hidden interaction features
  are multiplied by ``softplus(z)``, ``z ~ N(mu_phi(h), 1)``; the query loss is noise-free and
  ``phi`` is learned in the outer loop through the second-order meta-gradient;
- ``reptile``: the adapted parameters move towards the mean adapted weights ``W`` (by hand,
  ``theta += eps * mean(W - theta)``, or by handing ``theta - mean(W)`` to the outer optimiser
  as its gradient); parameters no task adapts (embeddings) take the first-order query gradient
  at ``W`` - otherwise Reptile would never train them;
- ``ridge`` (after Bertinetto et al., ICLR 2019): the inner loop is a closed-form ridge
  regression of the support ratings on the network's item vectors, shrunk towards a prior user
  vector computed from the user's features, with a learned per-dimension prior precision; item
  vectors, biases, the prior and the precision are trained end-to-end through the solve;
- ``pretrain``: no adaptation; trained on every rating of a task (support and query);
- ``finetune``: the pretrained network, fine-tuned per task with plain first-order SGD.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metarec.meta.features import TaskSet
from metarec.models.network import Feats, PreferenceNet

ALGORITHMS = ("maml", "fomaml", "reptile", "metasgd", "metadropout", "ridge", "pretrain",
              "finetune")
QUERY_LOSSES = ("mse", "mae", "huber")
Params = dict[str, Tensor]


def masked_mse(pred: Tensor, ratings: Tensor, mask: Tensor) -> Tensor:
    """Per-task mean squared error over valid positions: (..., L) -> (...); empty -> 0."""
    m = mask.to(pred.dtype)
    return ((pred - ratings) ** 2 * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def task_mean(per_task: Tensor, mask: Tensor) -> Tensor:
    """Mean of per-task losses (T,) over the tasks that have at least one rating."""
    has = mask.any(-1).to(per_task.dtype)                              # (T,)
    return (per_task * has).sum() / has.sum().clamp(min=1.0)


class MetaAlgorithm(nn.Module):
    """Gradient-based adaptation of a subset of the network's parameters, batched over tasks.

    ``inner_lr`` is a float, or (Meta-SGD) learned per parameter; ``noise`` is the Meta-Dropout
    noise generator or ``None``.
    """

    name = "maml"
    first_order = False
    # The outer gradient differentiates through inner-loop gradients (a double backward).
    # PyTorch's DistributedDataParallel does not support that, so DDP refuses these.
    second_order = True

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int
                 ) -> None:
        super().__init__()
        self.model = model
        self.adapt_group = adapt
        self.adapt_names = model.adapted_names(adapt)
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.noise: MetaDropoutNoise | None = None

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
        user, items = ts.user, ts.items
        if "x" not in user and not PreferenceNet.embeds_users(self.adapt_names):
            user = {"x": self.model.embed_users(user)}                  # (T, Du)
        if "x" not in items and not PreferenceNet.embeds_items(self.adapt_names):
            x, bias = self.model.embed_items(items)                      # (T, L, Di), (T, L)
            items = {"x": x, "bias": bias}
        return TaskSet(user=user, items=items, ratings=ts.ratings, mask=ts.mask)

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

    def _adapt(self, params: Params, support: TaskSet, create_graph: bool,
               generator: torch.Generator | None) -> Params:
        t = len(support)
        fast = {k: v.expand(t, *v.shape) for k, v in params.items()}    # (T, ...)
        if not create_graph:
            fast = {k: v.detach() for k, v in fast.items()}
        lrs = self.learning_rates()
        noise = self.noise
        if noise is None:
            def task_loss(f: Params, user: Feats, items: Feats, r: Tensor, m: Tensor) -> Tensor:
                return masked_mse(self._forward(f, user, items), r, m)

            step_grad = vmap(grad(task_loss))
        else:
            def noisy_loss(f: Params, user: Feats, items: Feats, r: Tensor, m: Tensor,
                           eps: Tensor) -> Tensor:
                return masked_mse(self._forward(f, user, items, noise.perturb(eps)), r, m)

            noisy_grad = vmap(grad(noisy_loss))
            shape = (t, *support.mask.shape[1:], self.model.hidden_width)
        for _ in range(self.inner_steps):
            if noise is None:
                g = step_grad(fast, support.user, support.items, support.ratings, support.mask)
            else:
                eps = torch.randn(shape, generator=generator, dtype=support.ratings.dtype,
                                  device=support.ratings.device)         # (T, S, w)
                g = noisy_grad(fast, support.user, support.items, support.ratings,
                               support.mask, eps)
            if self.first_order or not create_graph:
                g = {k: v.detach() for k, v in g.items()}
            fast = {k: fast[k] - lrs[k] * g[k] for k in fast}
        return fast

    def predict(self, task_params: Params, items: TaskSet) -> Tensor:
        """Ratings (T, L) of each task's items under its own parameters."""
        ts = self.prepare(items)
        return vmap(self._forward)(task_params, ts.user, ts.items)

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


class FOMAML(MetaAlgorithm):
    name = "fomaml"
    first_order = True
    second_order = False


class FineTune(MetaAlgorithm):
    """Per-task first-order SGD from the pretrained weights; nothing is meta-trained."""

    name = "finetune"
    first_order = True
    second_order = False

    def outer_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())


class MetaSGD(MetaAlgorithm):
    """MAML with a learned learning rate per adapted parameter entry (Li et al., 2017)."""

    name = "metasgd"

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int
                 ) -> None:
        super().__init__(model, adapt, inner_lr, inner_steps)
        self.lrs = nn.ParameterDict({
            _key(n): nn.Parameter(torch.full_like(p, inner_lr))
            for n, p in self.meta_params().items()})

    def learning_rates(self) -> dict[str, Tensor | float]:
        return {n: self.lrs[_key(n)] for n in self.adapt_names}


class MetaDropoutNoise(nn.Module):
    """Input-dependent multiplicative noise: h * softplus(mu_phi(h) + eps), eps ~ N(0, 1)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mu = nn.Linear(width, width)
        nn.init.zeros_(self.mu.weight)
        nn.init.zeros_(self.mu.bias)

    def perturb(self, eps: Tensor) -> Callable[[Tensor], Tensor]:
        """A hook for the network; ``eps`` must match the hidden features' shape."""
        def apply(h: Tensor) -> Tensor:
            return h * F.softplus(self.mu(h) + eps)
        return apply


class MetaDropout(MetaAlgorithm):
    name = "metadropout"

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int
                 ) -> None:
        super().__init__(model, adapt, inner_lr, inner_steps)
        dtype = model.global_bias.dtype
        self.noise = MetaDropoutNoise(model.hidden_width).to(dtype)


class Reptile(MetaAlgorithm):
    """Reptile (Nichol et al., 2018) for the adapted parameters, first-order for the rest."""

    name = "reptile"
    first_order = True
    second_order = False

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int,
                 epsilon: float = 1.0, mode: str = "adam") -> None:
        super().__init__(model, adapt, inner_lr, inner_steps)
        if mode not in ("adam", "interpolate"):
            raise ValueError(f"reptile mode must be adam or interpolate, got {mode!r}")
        self.epsilon, self.mode = float(epsilon), mode
        self._pending: Params | None = None

    def outer_loss(self, support: TaskSet, query: TaskSet) -> tuple[Tensor, Tensor]:
        theta = self.meta_params()
        support = self.prepare(support)  # hoisted embeddings keep their graph
        fast = self.adapt({k: v.detach() for k, v in theta.items()}, support,
                          create_graph=False)                           # W: (T, ...)
        mean_w = {k: v.mean(0) for k, v in fast.items()}
        query_loss = self.loss(fast, query)  # grads reach the shared (hoisted) params only
        objective = query_loss
        if self.mode == "adam":
            for k, p in theta.items():  # d/dp of this term is (p - mean W)
                objective = objective + (p * (p - mean_w[k]).detach()).sum()
        else:
            self._pending = {k: (mean_w[k] - theta[k]).detach() for k in theta}
        return objective, query_loss.detach()

    def post_step(self) -> None:
        if self._pending is None:
            return
        theta = self.meta_params()
        with torch.no_grad():
            for k, delta in self._pending.items():
                theta[k].add_(self.epsilon * delta)
        self._pending = None

    def config(self) -> dict[str, Any]:
        return {**super().config(), "epsilon": self.epsilon, "mode": self.mode}


class RidgeMeta(MetaAlgorithm):
    """Closed-form inner loop: each task's user weights are a ridge fit to its support.

    With item features ``phi_i = [item_proj(x_i), 1]`` (D = d + 1) and residual targets
    ``y = r - global_bias - b_i``, a task's weights are the MAP estimate under the prior
    ``w ~ N(w0(user features), diag(lam)^-1)``::

        w = (Phi^T M Phi + diag(lam))^-1 (Phi^T M y + lam * w0),   w0 = [user_proj(x_u), b_u]

    solved with one batched ``torch.linalg.solve`` (differentiable, so the query loss trains
    ``lam``, the prior and the item side end-to-end). An empty support gives ``w = w0``: the
    prediction from features alone. Ratings are ``global_bias + b_i + phi_i . w``, clamped to
    the rating range. ``inner_steps`` and ``inner_lr`` are kept for the common interface and do
    nothing: the solve is exact. ``query_loss`` (mse | mae | huber) is the outer objective.

    The per-task state ``w`` depends on item-side parameters, so ``adapt_names`` lists every
    network parameter: consumers that specialise on "only user-side parameters adapt" (the
    nightly scorer's fast path) fall back to :meth:`predict`.
    """

    name = "ridge"
    second_order = False  # one backward through a closed-form solve: no inner gradients

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int,
                 lam: float = 1.0, query_loss: str = "mse", train_item_ids: bool = True,
                 item_features: bool = True) -> None:
        super().__init__(model, adapt, inner_lr, inner_steps)
        if not item_features and model.item_id is None:
            raise ValueError("ridge item_features=False needs the item-id embedding")
        self.train_item_ids = bool(train_item_ids)
        self.item_features = bool(item_features)
        if query_loss not in QUERY_LOSSES:
            raise ValueError(f"query_loss must be one of {QUERY_LOSSES}, got {query_loss!r}")
        if lam <= 0:
            raise ValueError(f"ridge lam must be > 0, got {lam}")
        self.adapt_names = [n for n, _ in model.named_parameters()]
        self.query_loss = query_loss
        dim = model.user_proj.out_features + 1
        dtype = model.global_bias.dtype
        self.log_lam = nn.Parameter(torch.full((dim,), math.log(lam), dtype=dtype))

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

    def _item_side(self, items: Feats) -> tuple[Tensor, Tensor]:
        """(T, L, D) ridge features and (T, L) rating offsets of the items."""
        m = self.model
        if "x" in items:
            xi, ib = items["x"], items["bias"]
        else:
            xi, ib = m.embed_items(items)                                 # (T, L, Di), (T, L)
        if self.item_features:
            phi = m.item_proj(xi)                                         # (T, L, d)
        else:  # only the item-id block (the last d columns) of the item embedding
            assert m.item_id is not None
            d_id = m.item_id.embedding_dim
            phi = F.linear(xi[..., -d_id:], m.item_proj.weight[:, -d_id:], m.item_proj.bias)
        phi = torch.cat([phi, torch.ones_like(phi[..., :1])], -1)         # (T, L, D)
        return phi, ib + m.global_bias

    def adapt(self, params: Params, support: TaskSet, *, create_graph: bool = True,
              generator: torch.Generator | None = None) -> Params:
        """{"w": (T, D)}: each task's MAP user weights on its support (no SGD, no noise)."""
        if not create_graph:
            with torch.no_grad():
                return self._solve(params, support)
        return self._solve(params, support)

    def _solve(self, params: Params, support: TaskSet) -> Params:
        phi, offset = self._item_side(support.items)                      # (T, S, D), (T, S)
        w0 = self._user_prior(support.user)                               # (T, D)
        m = support.mask.to(phi.dtype)                                    # (T, S)
        y = (support.ratings - offset) * m                                # (T, S)
        lam = params["log_lam"].exp()                                     # (D,)
        phim = phi * m.unsqueeze(-1)                                      # (T, S, D)
        a = phim.transpose(1, 2) @ phi + torch.diag(lam)                  # (T, D, D)
        b = (phim * y.unsqueeze(-1)).sum(1) + lam * w0                    # (T, D)
        return {"w": torch.linalg.solve(a, b)}                            # (T, D)

    def predict(self, task_params: Params, items: TaskSet) -> Tensor:
        phi, offset = self._item_side(items.items)                        # (T, L, D), (T, L)
        raw = offset + (phi * task_params["w"].unsqueeze(1)).sum(-1)      # (T, L)
        return raw.clamp(self.model.rating_min, self.model.rating_max)

    def loss(self, task_params: Params, query: TaskSet) -> Tensor:
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
        return {**super().config(), "lam": float(self.log_lam.detach().exp().mean()),
                "query_loss": self.query_loss, "train_item_ids": self.train_item_ids,
                "item_features": self.item_features}


class Pretrain(MetaAlgorithm):
    """The plain network fitted to all ratings of the meta-train tasks; no adaptation."""

    name = "pretrain"
    second_order = False

    def __init__(self, model: PreferenceNet, adapt: str = "head", inner_lr: float = 0.0,
                 inner_steps: int = 0) -> None:
        super().__init__(model, adapt, 0.0, 0)

    def outer_loss(self, support: TaskSet, query: TaskSet) -> tuple[Tensor, Tensor]:
        every = support.cat(query)
        pred = self.model(every.user, every.items)                       # (T, S + Q)
        loss = task_mean(masked_mse(pred, every.ratings, every.mask), every.mask)
        return loss, loss.detach()


def _key(name: str) -> str:
    return name.replace(".", "__")


CLASSES: dict[str, type[MetaAlgorithm]] = {
    "maml": MetaAlgorithm, "fomaml": FOMAML, "metasgd": MetaSGD, "metadropout": MetaDropout,
    "reptile": Reptile, "ridge": RidgeMeta, "pretrain": Pretrain, "finetune": FineTune}


def build_algorithm(name: str, model: PreferenceNet, config: dict[str, Any]) -> MetaAlgorithm:
    """Algorithm ``name`` around ``model``; ``config`` as returned by ``.config()``."""
    if name not in CLASSES:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    return CLASSES[name](model, **config)


def ddp_refusal(name: str, reptile_mode: str = "adam") -> str | None:
    """Why algorithm ``name`` cannot be meta-trained data-parallel (DDP), or ``None`` if it can.

    DDP averages gradients in hooks that fire during ``backward``. Two things escape them: a
    second-order meta-gradient (DDP does not support higher-order gradients) and an update
    applied outside backward (Reptile's ``interpolate`` mode moves the weights in
    :meth:`~MetaAlgorithm.post_step`, so each process would drift towards its own tasks).
    """
    if name not in CLASSES:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    if CLASSES[name].second_order:
        return ("its meta-gradient is second order (it differentiates through the inner loop's "
                "gradients), which PyTorch's DistributedDataParallel does not support; "
                "use fomaml or reptile")
    if name == "reptile" and reptile_mode == "interpolate":
        return ("reptile_mode interpolate updates the weights outside backward, where DDP "
                "cannot average the update across processes; use reptile_mode: adam")
    return None
