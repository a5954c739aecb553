"""Reptile's update, Meta-SGD's learned rates, Meta-Dropout's noise, predictors on new users."""

from __future__ import annotations

import pytest
import torch
from meta_fixtures import build_algorithm, episode_data, tiny_model, train_batch

from metarec import algorithms
from metarec.algorithms.metadropout import MetaDropoutNoise
from metarec.meta.features import FeatureStore
from metarec.meta.predictor import AdaptivePredictor

STEPS = 3
LR = 0.3


@pytest.fixture(scope="module")
def setup():
    data = episode_data(n_users=12, n_items=15, k=4, q=3)
    batch = train_batch(data, n=6)
    return data, batch, FeatureStore(data.users, data.items, dtype=torch.float64)


def hand_adapted(model, names, store, batch) -> list[dict[str, torch.Tensor]]:
    """Per-task SGD on the unpadded support with plain autograd (no create_graph)."""
    out = []
    for t in range(len(batch)):
        s = batch.support_mask[t]
        user = store.users(batch.user_idx[t:t + 1])
        items = store.items(batch.support_items[t][s][None])
        ratings = batch.support_ratings[t][s].double()
        fast = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()
                if n in names}
        for _ in range(STEPS):
            pred = torch.func.functional_call(model, fast, (user, items))[0]
            g = torch.autograd.grad(((pred - ratings) ** 2).mean(), list(fast.values()))
            fast = {n: (w - LR * gw).detach().requires_grad_()
                    for (n, w), gw in zip(fast.items(), g, strict=True)}
        out.append({n: w.detach() for n, w in fast.items()})
    return out


@pytest.mark.parametrize("epsilon", [1.0, 0.3])
def test_reptile_interpolates_towards_mean_adapted_weights(setup, epsilon):
    data, batch, store = setup
    model = tiny_model(data, "mlp")
    algo = build_algorithm("reptile", model, {"adapt": "user", "inner_lr": LR,
                                              "inner_steps": STEPS, "epsilon": epsilon,
                                              "mode": "interpolate"})
    theta = {n: p.detach().clone() for n, p in algo.meta_params().items()}
    ws = hand_adapted(model, algo.adapt_names, store, batch)
    objective, _ = algo.outer_loss(store.support(batch), store.query(batch))
    objective.backward()
    for p in algo.meta_params().values():            # interpolation is not the optimiser's job
        assert p.grad is None
    algo.post_step()
    for n, p in algo.meta_params().items():
        mean_w = torch.stack([w[n] for w in ws]).mean(0)
        expected = theta[n] + epsilon * (mean_w - theta[n])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-9)
        assert not torch.allclose(p.detach(), theta[n])
    # the shared (not adapted) parameters still get a first-order query gradient
    unused = ("rank_out.", "item_rank_bias.", "item_context.", "pool_proj.")  # rating only
    shared = [p for n, p in model.named_parameters() if n not in algo.adapt_names
              and not n.startswith(unused)]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in shared)


def test_reptile_adam_mode_hands_theta_minus_w_as_gradient(setup):
    data, batch, store = setup
    model = tiny_model(data, "dot")
    algo = build_algorithm("reptile", model, {"adapt": "user", "inner_lr": LR,
                                              "inner_steps": STEPS, "mode": "adam"})
    ws = hand_adapted(model, algo.adapt_names, store, batch)
    objective, _ = algo.outer_loss(store.support(batch), store.query(batch))
    objective.backward()
    for n, p in algo.meta_params().items():
        mean_w = torch.stack([w[n] for w in ws]).mean(0)
        torch.testing.assert_close(p.grad, p.detach() - mean_w, rtol=1e-6, atol=1e-9)


def test_metasgd_learns_its_learning_rates(setup):
    data, batch, store = setup
    model = tiny_model(data, "mlp")
    cfg = {"adapt": "user", "inner_lr": LR, "inner_steps": STEPS}
    metasgd = build_algorithm("metasgd", model, cfg)
    maml = build_algorithm("maml", model, cfg)
    sup, qry = store.support(batch), store.query(batch)
    # initialised at inner_lr, Meta-SGD is MAML
    torch.testing.assert_close(metasgd.outer_loss(sup, qry)[1], maml.outer_loss(sup, qry)[1])
    objective, _ = metasgd.outer_loss(sup, qry)
    objective.backward()
    assert set(metasgd.lrs) == {n.replace(".", "__") for n in metasgd.adapt_names}
    for name, lr in metasgd.lrs.items():
        assert lr.grad is not None and lr.grad.abs().sum() > 0, name
    assert any(p is lr for p in metasgd.outer_parameters() for lr in metasgd.lrs.values())


def test_metadropout_noise_only_in_inner_loop(setup, monkeypatch):
    data, batch, store = setup
    model = tiny_model(data, "mlp")
    cfg = {"adapt": "user", "inner_lr": LR, "inner_steps": STEPS}
    algo = build_algorithm("metadropout", model, cfg)
    assert algo.noise is not None
    calls: list[int] = []
    original = MetaDropoutNoise.perturb

    def spy(self, eps):
        calls.append(1)
        return original(self, eps)

    monkeypatch.setattr(MetaDropoutNoise, "perturb", spy)
    sup, qry = store.support(batch), store.query(batch)
    a = algo.adapt(algo.meta_params(), sup, generator=torch.Generator().manual_seed(0))
    assert len(calls) == STEPS                        # on in every inner step
    b = algo.adapt(algo.meta_params(), sup, generator=torch.Generator().manual_seed(1))
    assert any(not torch.allclose(a[k], b[k]) for k in a)   # ... and random
    calls.clear()
    loss = algo.loss(a, qry)
    assert not calls                                   # off on the query
    plain = build_algorithm("maml", model, cfg)
    torch.testing.assert_close(loss, plain.loss(a, qry))
    # without noise the inner loop is MAML's, so the difference is the noise itself
    c = plain.adapt(plain.meta_params(), sup)
    assert any(not torch.allclose(a[k], c[k]) for k in a)


def test_metadropout_noise_network_receives_gradients(setup):
    data, batch, store = setup
    for interaction in ("mlp", "dot"):
        model = tiny_model(data, interaction)
        algo = build_algorithm("metadropout", model,
                               {"adapt": "user", "inner_lr": LR, "inner_steps": 2})
        objective, _ = algo.outer_loss(store.support(batch), store.query(batch))
        objective.backward()
        for n, p in algo.noise.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (interaction, n)


# every algorithm trained on episodes by the outer loop, as the registry declares them
LEARNERS = [n for n in algorithms.names() if algorithms.get(n).capabilities.gradient]


@pytest.mark.parametrize("name", LEARNERS)
def test_predictor_scores_users_never_trained_on(setup, name):
    data, batch, store = setup
    model = tiny_model(data, "dot")
    algo = build_algorithm(name, model, {"adapt": "user", "inner_lr": LR, "inner_steps": 2})
    predictor = AdaptivePredictor(name, algo, store)
    val = train_batch(data)  # users 0..: features gathered from the tables, not the weights
    cands = torch.arange(data.items.n_ids).expand(len(val), -1)
    scores = predictor.predict(val, cands)
    assert scores.shape == (len(val), data.items.n_ids) and torch.isfinite(scores).all()
    assert ((scores >= 1) & (scores <= 5)).all()
    torch.testing.assert_close(scores, predictor.predict(val, cands))  # repeatable
    # query ratings are never read: scrambling them changes nothing
    val.query_ratings = torch.rand_like(val.query_ratings) * 100
    torch.testing.assert_close(scores, predictor.predict(val, cands))
    # the support is read by every adapting algorithm
    val.support_ratings = 6 - val.support_ratings
    moved = not torch.allclose(scores, predictor.predict(val, cands))
    assert moved == (name != "pretrain")


# --- ridge: closed-form inner loop -----------------------------------------------------------


def _ridge(data, item_features=True, train_item_ids=True):
    model = tiny_model(data, "dot")
    return build_algorithm("ridge", model, {"adapt": "user", "inner_lr": 0.0, "inner_steps": 1,
                                            "lam": 0.7, "item_features": item_features,
                                            "train_item_ids": train_item_ids})


def test_ridge_solution_is_the_per_task_map_estimate(setup):
    """Each task's w minimises its own support squared error + lam |w - w0|^2 (hand-solved)."""
    data, batch, store = setup
    algo = _ridge(data)
    with torch.no_grad():
        algo.log_lam.copy_(torch.linspace(-1.0, 1.0, algo.log_lam.numel()))
    sup = store.support(batch)
    w = algo.adapt(algo.meta_params(), sup)["w"]                       # (T, D)
    net, lam = algo.model, algo.log_lam.detach().exp()
    for t in range(len(batch)):
        s = batch.support_mask[t]
        items = store.items(batch.support_items[t][s])
        emb = net.embed_items(items)
        x, ib = emb["x"], emb["bias"]
        phi = torch.cat([net.item_proj(x), torch.ones(int(s.sum()), 1, dtype=x.dtype)], 1)
        y = batch.support_ratings[t][s].double() - ib - net.global_bias
        xu = net.embed_users(store.users(batch.user_idx[t:t + 1]))[0]
        w0 = torch.cat([net.user_proj(xu), net.user_bias])
        # stacked least squares: [phi; sqrt(lam) I] w = [y; sqrt(lam) w0]
        a = torch.cat([phi, torch.diag(lam.sqrt())])
        b = torch.cat([y, lam.sqrt() * w0])
        expected = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
        torch.testing.assert_close(w[t].detach(), expected.detach(), rtol=1e-7, atol=1e-9)


def test_ridge_empty_support_falls_back_to_the_feature_prior(setup):
    data, batch, store = setup
    algo = _ridge(data)
    sup = store.support(batch)
    sup.mask = torch.zeros_like(sup.mask)
    w = algo.adapt(algo.meta_params(), sup)["w"]
    torch.testing.assert_close(w, algo._user_prior(algo.prepare_user(sup.user)))


def test_ridge_meta_gradient_matches_finite_differences(setup):
    """The outer gradient w.r.t. the prior precision goes through the solve (gradcheck)."""
    data, batch, store = setup
    algo = _ridge(data)
    sup, qry = store.support(batch), store.query(batch)

    def query_loss(log_lam):
        return algo.loss(algo.adapt({"log_lam": log_lam}, sup), qry)

    start = algo.log_lam.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(query_loss, (start,), eps=1e-6, atol=1e-6)
    objective, _ = algo.outer_loss(sup, qry)
    objective.backward()
    for name in ("log_lam", "model.user_proj.weight", "model.item_proj.weight",
                 "model.global_bias", "model.item_bias.weight", "model.item_id.weight"):
        p = dict(algo.named_parameters())[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ridge_without_item_features_ignores_them_and_freezes_id_tables(setup):
    data, batch, store = setup
    algo = _ridge(data, item_features=False, train_item_ids=False)
    sup, qry = store.support(batch), store.query(batch)
    before = algo.predict(algo.adapt(algo.meta_params(), sup), qry)
    with torch.no_grad():
        for emb in [*algo.model.item_cat, *algo.model.item_multi]:
            emb.weight.add_(1.0)
    torch.testing.assert_close(algo.predict(algo.adapt(algo.meta_params(), sup), qry), before)
    trained = {id(p) for p in algo.outer_parameters()}
    assert id(algo.model.item_id.weight) not in trained
    assert id(algo.model.item_bias.weight) not in trained
    assert id(algo.log_lam) in trained and id(algo.model.user_proj.weight) in trained


@pytest.mark.parametrize("name", LEARNERS)
def test_one_inner_loop_gives_every_step_count_of_a_grid_exactly(setup, name):
    """adapt_grid (one loop of max(grid) steps) equals adapting from scratch with each count:
    the validation grid search and the inner-steps curve pay for their longest run only."""
    data, batch, store = setup
    torch.manual_seed(3)
    model = tiny_model(data, "dot")
    algo = build_algorithm(name, model, {"adapt": "user", "inner_lr": LR, "inner_steps": 2})
    with torch.no_grad():
        for p in algo.parameters():
            p.add_(0.2 * torch.randn_like(p))
    predictor = AdaptivePredictor(name, algo, store, seed=7)
    grid = [0, 1, 3, 4]
    states = predictor.adapt_grid(batch, grid, chunk=2)
    cands = torch.arange(data.items.n_ids).expand(len(batch), -1)
    for steps in grid:
        algo.inner_steps = steps            # the training code path, from scratch
        fast = algo.adapt(algo.meta_params(), store.support(batch), create_graph=False,
                          generator=torch.Generator().manual_seed(7 + 2))
        assert fast.keys() == states[steps][0]["rank"].keys()
        assert all(torch.equal(fast[k], states[steps][0]["rank"][k]) for k in fast), steps
        predictor.set_steps(rate=steps, rank=steps)
        alone = predictor.adapt(batch, chunk=2)
        assert torch.equal(predictor.rank(states[steps]), predictor.rank(alone)), steps
        assert torch.equal(predictor.rate(states[steps], cands), predictor.rate(alone, cands))
    if algorithms.get(name).capabilities.tunable_steps:   # the counts differ (no one state)
        assert not torch.equal(predictor.rank(states[0]), predictor.rank(states[4]))
    # ratings and ranking with different counts share one loop, each as if alone
    predictor.set_steps(rate=1, rank=3)
    both = predictor.adapt(batch, chunk=2)
    assert torch.equal(predictor.rank(both), predictor.rank(states[3]))
    assert torch.equal(predictor.rate(both, cands), predictor.rate(states[1], cands))
