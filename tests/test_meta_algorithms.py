"""Reptile's update, Meta-SGD's learned rates, Meta-Dropout's noise, predictors on new users."""

from __future__ import annotations

import pytest
import torch
from meta_fixtures import episode_data, tiny_model, train_batch

from metarec.meta.algorithms import MetaDropoutNoise, build_algorithm
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
    shared = [p for n, p in model.named_parameters() if n not in algo.adapt_names]
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


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "metasgd", "metadropout",
                                  "pretrain", "finetune"])
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
