"""A learner: the network trained on episodes, adapting to each task (learn2learn's shape).

A :class:`Learner` is the learnable module of every episodic algorithm: the network plus any
learned machinery of its own. Its contract, batched over the tasks of a meta-batch:

- ``adapt(params, support) -> task params`` reads each task's support set only;
- ``loss(task params, query)`` is the objective on each task's query;
- ``outer_loss(support, query)`` is what the outer loop (:mod:`metarec.train`) minimises.

This base class has no inner loop: each task's parameters are the shared ones, and the user is
read from the support by the network itself (the fold-in of the support items into the user
vector): the amortised learner, and the non-adapting reference (``pretrain``). Gradient inner
loops (:mod:`metarec.meta.gradient`) and closed-form ones (``ridge``) subclass it. How a learner
is built from params and fitted is the registry's business (:mod:`metarec.train.entries`).

The objective (``train.objective``) has two parts, on the support in any inner loop and on the
query in the outer loop: squared error of the rating head on rated items (explicit labels),
and a ranking loss of the ranking head against the catalogue (:mod:`metarec.meta.losses`),
whose positives are the relevant items (rated at or above the data's relevance threshold;
every interaction for implicit labels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metarec.config import ObjectiveParams, to_dict
from metarec.meta.catalogue import CatalogueRanking
from metarec.meta.features import TaskSet
from metarec.meta.losses import masked_mse, task_mean
from metarec.models.network import Feats, PreferenceNet

Params = dict[str, Tensor]
RATING_ONLY = {"ranking_weight": 0.0, "inner": "rating"}   # the objective before ranking heads


class Learner(CatalogueRanking, nn.Module):
    """The network trained on episodes, without an inner loop.

    ``adapt`` names the parameter group that is per task (:meth:`PreferenceNet.adapted_names`):
    here every task holds the shared values, a gradient learner moves them. ``objective`` is
    an :class:`ObjectiveParams` as a dict, ``relevance`` the rating from which an item is a
    positive, ``explicit`` whether ratings (not counts or 0/1 labels) are there to be
    predicted, ``fold_in`` whether the user vector reads the support items' context vectors.
    Support items from another platform count by a learned trust, ``2 sigmoid(cross_trust)``.
    """

    inner_steps = 0            # no inner loop: the task's parameters are the shared ones

    def __init__(self, model: PreferenceNet, adapt: str = "head",
                 objective: dict[str, Any] | None = None, fold_in: bool = False,
                 relevance: float = 4.0, explicit: bool = True) -> None:
        super().__init__()
        self.model = model
        self.adapt_group = adapt
        self.objective = ObjectiveParams(**(objective if objective is not None
                                            else RATING_ONLY)).resolved(
                                                model.item_bias.num_embeddings)
        self.fold_in, self.relevance, self.explicit = bool(fold_in), float(relevance), explicit
        unused = self.unused_heads()   # a head no loss reads is not adapted either
        self.adapt_names = [n for n in model.adapted_names(adapt) if not n.startswith(unused)]
        n_ids = model.item_bias.num_embeddings
        self.register_buffer("log_q", torch.full((n_ids,), -torch.log(torch.tensor(
            float(n_ids))).item(), dtype=model.global_bias.dtype))      # sampler log-probs
        self._catalogue: Feats | None = None
        # how much a support item from another platform counts (2 sigmoid: 1 at the start,
        # as much as the task's own), learned in the outer loop on cross-marked tasks
        self.cross_trust = nn.Parameter(torch.zeros((), dtype=model.global_bias.dtype))
        self.network_kwargs: dict[str, Any] = {}

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

    # --- parameters ------------------------------------------------------------------------

    def meta_params(self) -> Params:
        """The initial values of the per-task parameters (no task dimension)."""
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self.adapt_names}

    def outer_parameters(self) -> Iterator[nn.Parameter]:
        """What the outer optimiser updates: the network and any learned machinery."""
        return self.parameters()

    def trust_parameters(self) -> list[nn.Parameter]:
        """The outer parameters with a learning rate of their own (``train.cross_trust_lr``):
        the trust in other platforms' support, one scalar that must move far in a few hundred
        outer steps."""
        return [self.cross_trust]

    # --- inputs ----------------------------------------------------------------------------

    def prepare(self, ts: TaskSet) -> TaskSet:
        """Replace feature indices by embeddings where no per-task parameter touches them."""
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
        user vector (T, d) itself, computed once unless a per-task parameter computes them
        (then per task)."""
        if "u" in user:
            return user
        moment = {"period": user["period"]} if "period" in user else {}
        out = {k: v for k, v in user.items()
               if k not in ("pool_ids", "pool_mask", "pool_cross")}
        if "x" not in out and not PreferenceNet.embeds_users(self.adapt_names):
            out = {"x": self.model.embed_users(out), **moment,
                   **({"pool": out["pool"]} if "pool" in out else {})}
        if self.fold_in and "pool" not in out and "pool_ids" in user:
            weights = self.support_weights(user["pool_mask"], user.get("pool_cross"))
            if PreferenceNet.pools(self.adapt_names):
                out.update(pool_ids=user["pool_ids"], pool_mask=weights)
            else:
                out["pool"] = self.model.pool_support(user["pool_ids"], weights)
        if "x" in out and not PreferenceNet.projects_users(self.adapt_names):
            out = {"u": self.model.user_vector(out), **moment}           # (T, d), once
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
        """Task parameters (T, ...): the shared ones, one copy per task (no inner loop)."""
        t = len(support)
        fast = {k: v.expand(t, *v.shape) for k, v in params.items()}    # (T, ...)
        return fast if create_graph else {k: v.detach() for k, v in fast.items()}

    def adapt_steps(self, support: TaskSet, steps: Sequence[int],
                    generator: torch.Generator | None = None) -> dict[int, Params]:
        """Task parameters for each number of inner steps in ``steps``: without an inner loop
        every count gives the same."""
        with torch.no_grad():
            fast = self.adapt(self.meta_params(), support, create_graph=False)
        return {int(s): fast for s in steps}

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

    def outer_loss(self, support: TaskSet, query: TaskSet) -> tuple[Tensor, Tensor]:
        """(objective whose gradient is the meta-gradient, query loss to report)."""
        loss = self.loss(self.adapt(self.meta_params(), support), query, support)
        return loss, loss.detach()

    def post_step(self) -> None:
        """Called after the outer optimiser's step (Reptile's interpolation)."""

    def config(self) -> dict[str, Any]:
        """Constructor arguments, saved in checkpoints to rebuild the learner."""
        return {"adapt": self.adapt_group, "objective": to_dict(self.objective),
                "fold_in": self.fold_in, "relevance": self.relevance,
                "explicit": self.explicit}

    def state(self) -> dict[str, Any]:
        """What the registry rebuilds this from: weights, constructor arguments."""
        return {"state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
                "network_kwargs": self.network_kwargs, "config": self.config()}
