"""The batched (vmap) second-order meta-gradient equals per-task references, in float64.

References: (1) a Python loop over tasks with plain ``torch.autograd.grad(create_graph=True)``
on each task's unpadded support; (2) ``higher.innerloop_ctx`` with a differentiable SGD over
the adapted parameters only. Both differ from the batched code in every way that could hide a
bug: no vmap, no hoisted embeddings, no padding masks, no membership masks. Two objectives:
squared error only (the MAML of the papers), and the ranking objective (rating MSE plus a full
softmax over the catalogue, in the inner and the outer loop, with the support folded into the
user vector).
"""

from __future__ import annotations

import higher
import pytest
import torch
from meta_fixtures import build_algorithm, episode_data, tiny_model, train_batch
from torch.func import functional_call

from metarec.config import ObjectiveParams, to_dict
from metarec.meta.features import FeatureStore

LR = 0.3
TOL = dict(rtol=1e-5, atol=1e-7)
RANKING = {"objective": to_dict(ObjectiveParams(rating_weight=0.7, ranking_weight=1.3,
                                                inner="both")),
           "fold_in": True, "relevance": 4.0}
RATING_UNUSED = ("rank_out.", "item_rank_bias.", "item_context.", "pool_proj.")


@pytest.fixture(scope="module")
def setup():
    data = episode_data(n_users=12, n_items=15, k=4, q=3)
    batch = train_batch(data, n=6)                      # ragged supports: masks matter
    assert batch.support_mask.sum(1).unique().numel() > 1
    return data, batch, FeatureStore(data.users, data.items, dtype=torch.float64)


def batched_grads(model, name: str, adapt: str, steps: int, store, batch,
                  extra: dict | None = None) -> list[torch.Tensor]:
    algo = build_algorithm(name, model, {"adapt": adapt, "inner_lr": LR, "inner_steps": steps,
                                         **(extra or {})})
    algo.use_catalogue(store)
    model.zero_grad()
    objective, _ = algo.outer_loss(store.support(batch), store.query(batch))
    return list(torch.autograd.grad(objective, list(model.parameters()), allow_unused=True))


class Task:
    """One task, unpadded, for the references."""

    def __init__(self, store, batch, t: int, ranking: bool) -> None:
        s, q = batch.support_mask[t], batch.query_mask[t]
        self.sup_rows, self.q_rows = batch.support_items[t][s], batch.query_items[t][q]
        self.user = store.users(batch.user_idx[t:t + 1])                         # (1, ·)
        if ranking:
            ids = store.items(self.sup_rows[None])["id"]
            self.user = {**self.user, "pool_ids": ids, "pool_mask": torch.ones_like(ids) > 0}
        self.s_items, self.q_items = store.items(self.sup_rows[None]), store.items(
            self.q_rows[None])
        self.s_r = batch.support_ratings[t][s].double()
        self.q_r = batch.query_ratings[t][q].double()
        self.catalogue = store.items(torch.arange(store.n_items)[None])           # (1, N, ·)


def inner_loss(f, task: Task, ranking: bool) -> torch.Tensor:
    """f(user, items, output) -> (C,): the support's MSE (+ its softmax vs the catalogue)."""
    loss = ((f(task.user, task.s_items, "rating") - task.s_r) ** 2).mean()
    pos = task.s_r >= 4.0
    if ranking and pos.any():
        cat = f(task.user, task.catalogue, "rank")
        loss = loss + (cat.logsumexp(0) - f(task.user, task.s_items, "rank")[pos]).mean()
    return loss


def outer_parts(f, task: Task, ranking: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(query MSE, query softmax vs the catalogue minus the support, or None: no positive)."""
    mse = ((f(task.user, task.q_items, "rating") - task.q_r) ** 2).mean()
    pos = (task.q_r >= 4.0) & ~torch.isin(task.q_rows, task.sup_rows)
    if not (ranking and pos.any()):
        return mse, None
    keep = ~torch.isin(torch.arange(task.catalogue["id"].shape[1]), task.sup_rows)
    cat = f(task.user, task.catalogue, "rank")[keep]
    return mse, (cat.logsumexp(0) - f(task.user, task.q_items, "rank")[pos]).mean()


def combine(parts: list, ranking: bool) -> torch.Tensor:
    mse = torch.stack([m for m, _ in parts]).mean()
    if not ranking:
        return mse
    ranks = [r for _, r in parts if r is not None]     # tasks without a positive add 0
    return RANKING["objective"]["rating_weight"] * mse + RANKING["objective"][
        "ranking_weight"] * torch.stack(ranks).sum() / len(parts)


def loop_grads(model, adapt: str, steps: int, store, batch, ranking: bool = False
               ) -> list[torch.Tensor]:
    names = model.adapted_names(adapt)
    params = dict(model.named_parameters())
    parts = []
    for t in range(len(batch)):
        task = Task(store, batch, t, ranking)
        fast = {n: params[n] for n in names}

        def f(user, items, output, fast=None):
            return functional_call(model, fast, (user, items), {"output": output})[0]

        for _ in range(steps):
            loss = inner_loss(lambda u, i, o, fast=fast: f(u, i, o, fast), task, ranking)
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=True,
                                    allow_unused=True)
            fast = {n: w - LR * (gw if gw is not None else torch.zeros_like(w))
                    for (n, w), gw in zip(fast.items(), g, strict=True)}
        parts.append(outer_parts(lambda u, i, o, fast=fast: f(u, i, o, fast), task, ranking))
    total = combine(parts, ranking)
    return list(torch.autograd.grad(total, list(model.parameters()), allow_unused=True))


def higher_grads(model, adapt: str, steps: int, store, batch, ranking: bool = False
                 ) -> list[torch.Tensor]:
    named = dict(model.named_parameters())
    inner_opt = torch.optim.SGD([named[n] for n in model.adapted_names(adapt)], lr=LR)
    parts = []
    for t in range(len(batch)):
        task = Task(store, batch, t, ranking)
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=True) as (fm, diffopt):
            def f(user, items, output):
                return fm(user, items, output=output)[0]

            for _ in range(steps):
                diffopt.step(inner_loss(f, task, ranking), grad_callback=lambda gs: [
                    g if g is not None else torch.zeros(()) for g in gs])
            parts.append(outer_parts(f, task, ranking))
    total = combine(parts, ranking)
    return list(torch.autograd.grad(total, list(model.parameters()), allow_unused=True))


def assert_same(a: list, b: list, names: list[str]) -> None:
    for n, x, y in zip(names, a, b, strict=True):
        x = torch.zeros(()) if x is None else x
        y = torch.zeros(()) if y is None else y
        if x.dim() == 0 and y.dim() > 0:
            x = x.double().expand_as(y)
        if y.dim() == 0 and x.dim() > 0:
            y = y.double().expand_as(x)
        torch.testing.assert_close(x, y, **TOL, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("adapt,interaction", [("user", "mlp"), ("decision", "mlp"),
                                               ("head", "dot"), ("all", "dot")])
def test_second_order_matches_loop_and_higher(setup, steps, adapt, interaction):
    data, batch, store = setup
    model = tiny_model(data, interaction)
    names = [n for n, _ in model.named_parameters()]
    got = batched_grads(model, "maml", adapt, steps, store, batch)
    assert_same(got, loop_grads(model, adapt, steps, store, batch), names)
    assert_same(got, higher_grads(model, adapt, steps, store, batch), names)
    # every meta-parameter the rating objective uses learns something
    zero = [n for n, g in zip(names, got, strict=True) if not n.startswith(RATING_UNUSED)
            and (g is None or not g.abs().sum() > 0)]
    assert not zero, f"no meta-gradient for {zero}"


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("adapt,interaction", [("vector", "dot"), ("user", "mlp"),
                                               ("all", "dot")])
def test_ranking_objective_second_order_matches_loop_and_higher(setup, steps, adapt,
                                                                interaction):
    data, batch, store = setup
    model = tiny_model(data, interaction)
    with torch.no_grad():   # the fold-in starts closed (zero); open it so every path counts
        model.pool_proj.weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    names = [n for n, _ in model.named_parameters()]
    got = batched_grads(model, "maml", adapt, steps, store, batch, RANKING)
    assert_same(got, loop_grads(model, adapt, steps, store, batch, ranking=True), names)
    assert_same(got, higher_grads(model, adapt, steps, store, batch, ranking=True), names)
    zero = [n for n, g in zip(names, got, strict=True) if g is None or not g.abs().sum() > 0]
    # only the rating head's bias on the unknown item (id 0, never rated here) stays at 0
    assert not [n for n in zero if n not in ("item_bias.weight",)], zero


@pytest.mark.parametrize("adapt", ["user", "all"])
def test_first_order_differs_from_second_order(setup, adapt):
    data, batch, store = setup
    model = tiny_model(data, "mlp")
    second = batched_grads(model, "maml", adapt, 3, store, batch)
    first = batched_grads(model, "fomaml", adapt, 3, store, batch)
    named = dict(zip([n for n, _ in model.named_parameters()], range(len(first)), strict=True))
    adapted = [n for n in model.adapted_names(adapt) if not n.startswith(RATING_UNUSED)]
    gaps = [float((first[named[n]] - second[named[n]]).abs().max()) for n in adapted]
    assert max(gaps) > 1e-4, "first-order MAML gave the second-order meta-gradient"
    # with zero inner steps both reduce to the plain query-loss gradient
    a = batched_grads(model, "maml", adapt, 0, store, batch)
    b = batched_grads(model, "fomaml", adapt, 0, store, batch)
    assert_same(a, b, list(named))


def test_inner_loop_ignores_padding(setup):
    """Padding a task's support with garbage masked positions changes nothing."""
    data, batch, store = setup
    model = tiny_model(data, "mlp")
    for extra in ({}, RANKING):
        algo = build_algorithm("maml", model, {"adapt": "user", "inner_lr": LR,
                                               "inner_steps": 2, **extra})
        algo.use_catalogue(store)
        sup = store.support(batch)
        padded = sup.cat(store.query(batch))
        padded.mask[:, sup.mask.shape[1]:] = False                   # query rows masked out
        padded.user = {**sup.user}
        a = algo.adapt(algo.meta_params(), sup, create_graph=False)
        b = algo.adapt(algo.meta_params(), padded, create_graph=False)
        for k in a:
            torch.testing.assert_close(a[k], b[k], **TOL)
