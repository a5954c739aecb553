"""A gradient inner loop, batched over tasks: what MAML and its relatives share.

The inner loop runs for every task of a meta-batch at once: the adapted parameters carry a
leading task dimension, and ``vmap(grad(task_loss))`` gives each task its own gradient of its
own support loss. Fast weights are plain tensors computed from the meta-parameters, so
second-order MAML differentiates through every inner step (no ``load_state_dict``, no
``deepcopy``, no ``.data``). Embeddings that no task adapts are computed once per meta-batch
("hoisted"), which is exact: they do not depend on the fast weights.

Which parameters adapt is the ``adapt`` group; ``first_order`` treats the inner gradients as
constants (FOMAML, Reptile, fine-tuning); a subclass changes the step sizes (Meta-SGD), adds
noise during adaptation (Meta-Dropout) or the outer update (Reptile). The outer ranking loss
never counts a support item as a candidate; sampled negatives are never one of the task's own
items.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from metarec.meta.features import TaskSet
from metarec.meta.learner import Learner, Params
from metarec.meta.losses import masked_mse, ranking_loss
from metarec.models.network import Feats, PreferenceNet

__all__ = ["GradientLearner", "Params"]


class GradientLearner(Learner):
    """``inner_steps`` SGD steps on each task's support, of the parameters of the ``adapt``
    group, at ``inner_lr`` (or, Meta-SGD, a learned rate per parameter entry)."""

    first_order: ClassVar[bool] = False

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int,
                 **common: Any) -> None:
        super().__init__(model, adapt, **common)
        self.inner_lr = float(inner_lr)
        self.inner_steps = int(inner_steps)
        self.noise: nn.Module | None = None     # Meta-Dropout's noise generator

    def learning_rates(self) -> dict[str, Tensor | float]:
        return {n: self.inner_lr for n in self.adapt_names}

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

    def config(self) -> dict[str, Any]:
        return {**super().config(), "inner_lr": self.inner_lr,
                "inner_steps": self.inner_steps}
