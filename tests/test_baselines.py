"""Baselines against hand-computed values on a tiny in-memory episode fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metarec import algorithms
from metarec.algorithms.biased_mf import BiasedMF, BiasedMFParams
from metarec.algorithms.item_mean import ItemMean, ItemMeanParams
from metarec.algorithms.item_user_bias import ItemUserBias
from metarec.algorithms.user_mean import UserMean
from metarec.checkpoint import load_model, save_model
from metarec.config import ModelParams, TrainParams
from metarec.data.encoding import encode_entity
from metarec.data.tasks import EpisodeData, TaskBatch, to_batch
from metarec.models.base import FitContext
from metarec.models.linalg import RatingPattern, fit_als, grouped_ridge, ridge_solve
from metarec.models.statistical import ShrinkageParams, rows_to_codes, training_ratings

USERS = ["u1", "u2", "u3", "v1", "v2", "t1"]
ITEMS = ["i1", "i2", "i3", "i4"]          # i4 never rated in meta-train: a new item


def _data(rows: list[tuple]) -> EpisodeData:
    """rows: (task_id, user, split, scenario, k, role, item, rating)."""
    df = pd.DataFrame(rows, columns=["task_id", "user_id", "split", "scenario", "k", "role",
                                     "item_id", "rating"])
    df["timestamp"] = np.arange(len(df), dtype=np.int64)
    df["rating"] = df["rating"].astype("float32")
    users = encode_entity(pd.DataFrame({"user_id": USERS}), "user_id",
                          {"ids": USERS, "features": {}})
    items = encode_entity(pd.DataFrame({"item_id": ITEMS}), "item_id",
                          {"ids": ITEMS, "features": {}})
    df["user_idx"] = users.index_of(df["user_id"])
    df["item_idx"] = items.index_of(df["item_id"])
    return EpisodeData(tasks=df, users=users, items=items,
                       vocab={"rating": {"min": 1.0, "max": 5.0}})


TRAIN = [  # distinct ratings: u1 i1 5, u1 i2 3, u2 i1 4, u2 i3 2, u3 i2 4 -> mu = 3.6
    (0, "u1", "train", "train", 1, "support", "i1", 5), (0, "u1", "train", "train", 1, "query",
                                                         "i2", 3),
    (1, "u1", "train", "train", 1, "support", "i1", 5),            # repeated draw: deduped
    (2, "u2", "train", "train", 1, "support", "i1", 4), (2, "u2", "train", "train", 1, "query",
                                                         "i3", 2),
    (3, "u3", "train", "train", 1, "query", "i2", 4),
]
VAL = [
    (10, "v1", "val", "user_cold", 2, "support", "i1", 5),
    (10, "v1", "val", "user_cold", 2, "support", "i3", 4),
    (10, "v1", "val", "user_cold", 2, "query", "i2", 5),
    (10, "v1", "val", "user_cold", 2, "query", "i4", 4),
    (11, "v2", "val", "user_cold", 1, "support", "i2", 1),
    (11, "v2", "val", "user_cold", 1, "query", "i1", 2),
    (11, "v2", "val", "user_cold", 1, "query", "i3", 1),
]
TEST = [(20, "t1", "test", "user_cold", 1, "support", "i1", 1),
        (20, "t1", "test", "user_cold", 1, "query", "i2", 1)]
MU = 3.6
# grids deliberately not sorted, so that "picks the best" cannot pass by picking the first value
ITEM_GRID, USER_GRID = (50.0, 0.0, 2.0), (25.0, 1.0, 0.0)
SMALL = {"item_mean": ItemMeanParams(shrinkage=ITEM_GRID),
         "user_mean": ShrinkageParams(shrinkage=USER_GRID),
         "item_user_bias": ShrinkageParams(shrinkage=USER_GRID),
         "biased_mf": BiasedMFParams(reg=(1.0, 10.0), user_lambda=(0.5, 5.0), dim=2, iters=5)}
NAMES = ("global_mean", "item_mean", "user_mean", "item_user_bias", "biased_mf")


def fit_baselines(data: EpisodeData, seed: int = 0, sections: dict = SMALL) -> dict:
    """Every statistical baseline fitted through the registry, as the train stage does."""
    train = TrainParams(seed=seed, sections=sections)
    fitted: dict = {}
    for name in NAMES:
        ctx = FitContext(data=data, model=ModelParams(), train=train, log_dir=Path("."),
                         fitted=fitted)
        fitted[name] = algorithms.get(name).fit(ctx)
    return fitted


def codes(per_row: torch.Tensor, data: EpisodeData) -> torch.Tensor:
    return rows_to_codes(per_row, data)


@pytest.fixture(scope="module")
def data() -> EpisodeData:
    return _data(TRAIN + VAL + TEST)


def _val_batch(data: EpisodeData) -> TaskBatch:
    return to_batch(data.select("val"))


def test_training_ratings_are_deduplicated(data: EpisodeData) -> None:
    _, items, ratings = training_ratings(data)
    assert len(ratings) == 5 and float(ratings.mean()) == pytest.approx(MU)
    assert sorted(items.tolist()) == [0, 0, 1, 1, 2]


def test_item_mean_is_the_shrunk_mean(data: EpisodeData) -> None:
    models = fit_baselines(data, seed=0)
    item = models["item_mean"]
    assert isinstance(item, ItemMean)
    b = _val_batch(data)
    m = ItemMean(MU, (1, 5), item.item_resid, item.item_count, shrinkage=2.0).bind(data)
    pred = m.predict(b, torch.tensor([[0, 1, 2, 3]] * len(b)))
    # i1: (5 + 4 + 2 mu) / 4; i2: (3 + 4 + 2 mu) / 4; i3: (2 + 2 mu) / 3; i4 (new): mu
    expect = [(9 + 2 * MU) / 4, (7 + 2 * MU) / 4, (2 + 2 * MU) / 3, MU]
    torch.testing.assert_close(pred[0], torch.tensor(expect))


def test_user_mean_and_item_user_bias_hand_computed(data: EpisodeData) -> None:
    b = _val_batch(data)                                   # task 10: support i1 5, i3 4
    items = torch.tensor([[1, 3], [0, 2]])
    user = UserMean(MU, (1, 5), shrinkage=1.0).bind(data).predict(b, items)
    assert user[0, 0].item() == pytest.approx(MU + ((5 - MU) + (4 - MU)) / 3)
    assert user[1, 0].item() == pytest.approx(MU + (1 - MU) / 2)
    b_i = torch.tensor([1.8 / 4, -0.2 / 4, -1.6 / 3, 0.0], dtype=torch.float64)  # beta_i = 2
    bias = ItemUserBias(MU, (1, 5), codes(b_i, data), shrinkage=1.0).bind(data).predict(
        b, items)
    b_u = ((5 - MU - b_i[0]) + (4 - MU - b_i[2])) / 3
    assert bias[0, 0].item() == pytest.approx(float(MU + b_i[1] + b_u), rel=1e-6)
    assert bias[0, 1].item() == pytest.approx(float(MU + b_u), rel=1e-6)   # new item


def test_ridge_matches_numpy_lstsq() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    lam = 0.7
    w = ridge_solve(x, y, mask, lam)
    for t in range(2):
        xs, ys = x[t][mask[t]].numpy(), y[t][mask[t]].numpy()
        aug_x = np.vstack([xs, np.sqrt(lam) * np.eye(3)])
        aug_y = np.concatenate([ys, np.zeros(3)])
        ref = np.linalg.lstsq(aug_x, aug_y, rcond=None)[0]
        np.testing.assert_allclose(w[t].numpy(), ref, rtol=1e-10)
    empty = ridge_solve(x[:1], y[:1], torch.zeros(1, 4, dtype=torch.bool), lam)
    assert torch.equal(empty, torch.zeros(1, 3, dtype=torch.float64))
    prior = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    shrunk = ridge_solve(x[:1], y[:1], torch.zeros(1, 4, dtype=torch.bool), lam, prior)
    torch.testing.assert_close(shrunk, prior)      # no support: the prior itself


def test_biased_mf_cold_user_is_a_ridge_fit_on_the_support(data: EpisodeData) -> None:
    q = torch.tensor([[0.5, -1.0], [1.0, 0.2], [-0.3, 0.8], [0.0, 0.0]], dtype=torch.float64)
    b_i = torch.tensor([0.3, -0.1, -0.4, 0.0], dtype=torch.float64)
    mf = BiasedMF(MU, (1, 5), codes(q, data), codes(b_i, data), user_lambda=0.5).bind(data)
    b = _val_batch(data)
    pred = mf.predict(b, torch.tensor([[1, 3], [0, 2]]))
    # task 10: support (i1, 5), (i3, 4); features [q, 1], target r - mu - b_i
    xs = np.array([[0.5, -1.0, 1.0], [-0.3, 0.8, 1.0]])
    ys = np.array([5 - MU - 0.3, 4 - MU + 0.4])
    w = np.linalg.lstsq(np.vstack([xs, np.sqrt(0.5) * np.eye(3)]),
                        np.concatenate([ys, np.zeros(3)]), rcond=None)[0]
    assert pred[0, 0].item() == pytest.approx(MU - 0.1 + np.dot([1.0, 0.2, 1.0], w), rel=1e-6)
    assert pred[0, 1].item() == pytest.approx(MU + w[2], rel=1e-6)    # new item: mu + b_u


def test_biased_mf_ranks_the_catalogue_as_it_rates_every_item(data: EpisodeData) -> None:
    """Its catalogue ranking (one matrix product) is its rating of every item row."""
    q = torch.tensor([[0.5, -1.0], [1.0, 0.2], [-0.3, 0.8], [0.0, 0.0]], dtype=torch.float64)
    b_i = torch.tensor([0.3, -0.1, -0.4, 0.0], dtype=torch.float64)
    mf = BiasedMF(MU, (1, 5), codes(q, data), codes(b_i, data), user_lambda=0.5).bind(data)
    b = _val_batch(data)
    state = mf.adapt(b)
    every = torch.arange(mf.n_items).expand(len(b), mf.n_items)
    torch.testing.assert_close(mf.rank(state), mf.rate(state, every), rtol=0, atol=1e-6)
    assert mf.rank(state).std() > 0


def test_batched_predictions_equal_task_by_task(data: EpisodeData) -> None:
    models = fit_baselines(data, seed=0)
    b = _val_batch(data)
    items = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    for m in models.values():
        whole = m.predict(b, items)
        assert whole.shape == (2, 4) and whole.dtype == torch.float32
        for t in range(2):
            one = b.slice(t, t + 1)
            s = int(one.support_mask.sum())           # drop the padding entirely
            one.support_items, one.support_ratings, one.support_mask = (
                one.support_items[:, :s], one.support_ratings[:, :s], one.support_mask[:, :s])
            torch.testing.assert_close(m.predict(one, items[t:t + 1]), whole[t:t + 1])


def _val_mae_by_hand(pred_fn, data: EpisodeData) -> float:
    """Pooled validation MAE with a per-row loop: an independent reference for the tuning."""
    errs = []
    for _, task in data.select("val").groupby("task_id"):
        sup = task[task["role"] == "support"]
        for _, row in task[task["role"] == "query"].iterrows():
            errs.append(abs(pred_fn(sup, row["item_idx"]) - row["rating"]))
    return float(np.mean(errs))


def test_tuning_picks_the_grid_value_best_on_validation(data: EpisodeData) -> None:
    models = fit_baselines(data, seed=0)
    n_i = {0: 2, 1: 2, 2: 1, 3: 0}
    r_i = {0: 1.8, 1: -0.2, 2: -1.6, 3: 0.0}

    def item_pred(beta: float):
        return lambda sup, i: MU + (r_i[i] / (n_i[i] + beta) if n_i[i] + beta > 0 else 0.0)

    scores = [_val_mae_by_hand(item_pred(beta), data) for beta in ITEM_GRID]
    assert models["item_mean"].tuning["shrinkage"]["val_mae"] == pytest.approx(scores)
    assert models["item_mean"].shrinkage == ITEM_GRID[int(np.argmin(scores))]

    def user_pred(beta: float):
        def f(sup: pd.DataFrame, i: int) -> float:
            n = len(sup)
            return MU + ((sup["rating"] - MU).sum() / (n + beta) if n + beta > 0 else 0.0)
        return f

    scores = [_val_mae_by_hand(user_pred(beta), data) for beta in USER_GRID]
    assert models["user_mean"].tuning["shrinkage"]["val_mae"] == pytest.approx(scores)
    assert models["user_mean"].shrinkage == USER_GRID[int(np.argmin(scores))]
    assert models["user_mean"].shrinkage != USER_GRID[0]   # the test discriminates
    assert models["item_mean"].shrinkage != ITEM_GRID[0]
    mf = models["biased_mf"]
    grid = [(rec["reg"], lam, v) for rec in mf.tuning["user_lambda"]
            for lam, v in zip(rec["grid"], rec["val_mae"], strict=True)]
    best = min(grid, key=lambda g: g[2])
    assert (mf.tuning["reg"], mf.user_lambda) == best[:2]


def test_tuning_never_reads_test_tasks(data: EpisodeData) -> None:
    a = fit_baselines(data, seed=0)
    changed = data.tasks.copy()
    changed.loc[changed["split"] == "test", "rating"] = 5.0
    b = fit_baselines(EpisodeData(changed, data.users, data.items, data.vocab), 0)
    for name in a:
        assert a[name].state()["tuning"] == b[name].state()["tuning"]


def test_als_is_seeded_deterministic_and_fits_a_planted_model() -> None:
    gen = torch.Generator().manual_seed(0)
    n_u, n_i, d = 60, 40, 2
    p, q = torch.randn(n_u, d, generator=gen), torch.randn(n_i, d, generator=gen)
    users, items = torch.meshgrid(torch.arange(n_u), torch.arange(n_i), indexing="ij")
    users, items = users.flatten(), items.flatten()
    keep = torch.rand(users.numel(), generator=gen) < 0.5
    users, items = users[keep], items[keep]
    r = (3.0 + (p[users] * q[items]).sum(1)).double()
    mu = float(r.mean())
    fit1 = fit_als(users, items, r, n_u, n_i + 1, mu, d, 0.01, 30, seed=4)
    fit2 = fit_als(users, items, r, n_u, n_i + 1, mu, d, 0.01, 30, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(fit1, fit2, strict=True))
    q_hat, b_hat = fit1
    assert torch.equal(q_hat[n_i], torch.zeros(d, dtype=torch.float64))   # never rated
    assert float(b_hat[n_i]) == 0.0
    # planted rank-2 ratings: a cold user's ridge fit on 10 ratings predicts the rest well
    mf = BiasedMF(mu, (-100.0, 100.0), q_hat, b_hat, user_lambda=1e-3)
    mf.codes = torch.arange(n_i + 1)                        # rows are codes in this fixture
    u = torch.randn(5, d, generator=gen)
    sup, qry = torch.arange(10).expand(5, 10), torch.arange(10, 40).expand(5, 30)
    batch = TaskBatch(torch.arange(5), torch.zeros(5, dtype=torch.long), sup,
                      (3.0 + u @ q[sup[0]].T), torch.ones(5, 10, dtype=torch.bool),
                      qry, torch.zeros(5, 30), torch.ones(5, 30, dtype=torch.bool))
    err = (mf.predict(batch, qry) - (3.0 + u @ q[qry[0]].T)).abs().mean()
    assert float(err) < 0.05


def test_an_als_half_step_is_a_ridge_fit_per_row() -> None:
    """Row r's weights are argmin sum over its ratings (y - side[col] . w)^2 + lam |w|^2,
    a repeated (row, column) pair counted twice; a row without ratings gets 0."""
    gen = torch.Generator().manual_seed(1)
    rows = torch.tensor([0, 0, 0, 1, 1, 0, 3, 3, 3, 3])      # (0, 2) twice; row 2 empty
    cols = torch.tensor([2, 0, 1, 1, 4, 2, 0, 1, 3, 4])
    side = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(10, generator=gen, dtype=torch.float64)
    got = grouped_ridge(RatingPattern(rows, cols, 4, 5), side, y, 0.7)
    for r in range(4):
        x, t = side[cols[rows == r]].numpy(), y[rows == r].numpy()
        want = np.linalg.solve(x.T @ x + 0.7 * np.eye(3), x.T @ t)
        np.testing.assert_allclose(got[r].numpy(), want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got[2], torch.zeros(3, dtype=torch.float64))


def test_save_load_round_trip_weights_only(data: EpisodeData, tmp_path) -> None:
    models = fit_baselines(data, seed=0)
    b = _val_batch(data)
    items = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    for name, m in models.items():
        path = save_model(tmp_path / f"{name}.pt", m, {}, data.vocab)
        torch.load(path, weights_only=True)                 # plain tensors and dicts only
        loaded = load_model(path, data)
        assert loaded.name == name and type(loaded) is type(m)
        torch.testing.assert_close(loaded.predict(b, items), m.predict(b, items))
        assert loaded.tuning == m.tuning
