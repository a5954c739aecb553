"""The batched (vmap) second-order meta-gradient equals per-task references, in float64.

References: (1) a Python loop over tasks with plain ``torch.autograd.grad(create_graph=True)``
on each task's unpadded support; (2) ``higher.innerloop_ctx`` with a differentiable SGD over
the adapted parameters only. Both differ from the batched code in every way that could hide a
bug: no vmap, no hoisted embeddings, no padding masks.
"""

from __future__ import annotations

import higher
import pytest
import torch
from meta_fixtures import build_algorithm, episode_data, tiny_model, train_batch
from torch.func import functional_call

from metarec.meta.features import FeatureStore

LR = 0.3
TOL = dict(rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def setup():
    data = episode_data(n_users=12, n_items=15, k=4, q=3)
    batch = train_batch(data, n=6)                      # ragged supports: masks matter
    assert batch.support_mask.sum(1).unique().numel() > 1
    return data, batch, FeatureStore(data.users, data.items, dtype=torch.float64)


def batched_grads(model, name: str, adapt: str, steps: int, store, batch) -> list[torch.Tensor]:
    algo = build_algorithm(name, model, {"adapt": adapt, "inner_lr": LR, "inner_steps": steps})
    model.zero_grad()
    objective, _ = algo.outer_loss(store.support(batch), store.query(batch))
    return list(torch.autograd.grad(objective, list(model.parameters()), allow_unused=True))


def _task(store, batch, t: int):
    s, q = batch.support_mask[t], batch.query_mask[t]
    user = store.users(batch.user_idx[t:t + 1])                                  # (1, ·)
    sup = (store.items(batch.support_items[t][s][None]), batch.support_ratings[t][s].double())
    qry = (store.items(batch.query_items[t][q][None]), batch.query_ratings[t][q].double())
    return user, sup, qry


def loop_grads(model, adapt: str, steps: int, store, batch) -> list[torch.Tensor]:
    names = model.adapted_names(adapt)
    params = dict(model.named_parameters())
    losses = []
    for t in range(len(batch)):
        user, (s_items, s_r), (q_items, q_r) = _task(store, batch, t)
        fast = {n: params[n] for n in names}
        for _ in range(steps):
            pred = functional_call(model, fast, (user, s_items))[0]              # (S_t,)
            loss = ((pred - s_r) ** 2).mean()
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: w - LR * gw for (n, w), gw in zip(fast.items(), g, strict=True)}
        pred = functional_call(model, fast, (user, q_items))[0]                  # (Q_t,)
        losses.append(((pred - q_r) ** 2).mean())
    total = torch.stack(losses).mean()
    return list(torch.autograd.grad(total, list(model.parameters()), allow_unused=True))


def higher_grads(model, adapt: str, steps: int, store, batch) -> list[torch.Tensor]:
    named = dict(model.named_parameters())
    inner_opt = torch.optim.SGD([named[n] for n in model.adapted_names(adapt)], lr=LR)
    model.zero_grad()
    for t in range(len(batch)):
        user, (s_items, s_r), (q_items, q_r) = _task(store, batch, t)
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fm, diffopt):
            for _ in range(steps):
                diffopt.step(((fm(user, s_items)[0] - s_r) ** 2).mean())
            query_loss = ((fm(user, q_items)[0] - q_r) ** 2).mean()
            (query_loss / len(batch)).backward()
    grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
    model.zero_grad()
    return grads


def assert_same(a: list, b: list, names: list[str]) -> None:
    for n, x, y in zip(names, a, b, strict=True):
        x = torch.zeros(()) if x is None else x
        y = torch.zeros(()) if y is None else y
        torch.testing.assert_close(x.double().expand_as(y) if x.dim() == 0 else x, y,
                                   **TOL, msg=lambda m, n=n: f"{n}: {m}")


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
    # every meta-parameter learns something
    zero = [n for n, g in zip(names, got, strict=True) if g is None or not g.abs().sum() > 0]
    assert not zero, f"no meta-gradient for {zero}"


@pytest.mark.parametrize("adapt", ["user", "all"])
def test_first_order_differs_from_second_order(setup, adapt):
    data, batch, store = setup
    model = tiny_model(data, "mlp")
    second = batched_grads(model, "maml", adapt, 3, store, batch)
    first = batched_grads(model, "fomaml", adapt, 3, store, batch)
    named = dict(zip([n for n, _ in model.named_parameters()], range(len(first)), strict=True))
    adapted = model.adapted_names(adapt)
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
    algo = build_algorithm("maml", model, {"adapt": "user", "inner_lr": LR, "inner_steps": 2})
    sup = store.support(batch)
    padded = sup.cat(store.query(batch))
    padded.mask[:, sup.mask.shape[1]:] = False                       # query rows masked out
    a = algo.adapt(algo.meta_params(), sup, create_graph=False)
    b = algo.adapt(algo.meta_params(), padded, create_graph=False)
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL)
