"""What is popular now: hand-counted windows, the moment of a task, the ranking term in both of
the catalogue's scoring paths, and the nightly count equal to the training-time count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from meta_fixtures import build_algorithm, episode_data, train_batch

from metarec.config import ModelParams
from metarec.data.recency import DAY_S, recency, recency_at, window_bounds, window_steps
from metarec.data.tasks import to_batch
from metarec.meta.features import FeatureStore, feature_store
from metarec.meta.predictor import catalogue_blocks
from metarec.models.network import build_network, network_kwargs

WEEK = 7 * DAY_S


def test_each_column_counts_the_whole_steps_before_its_own() -> None:
    # item 0 on days 0, 1 and 8; item 1 on day 9; item 2 never
    rec = recency(np.array([0, 0, 0, 1]), np.array([0, 1, 8, 9]) * DAY_S, 3, window=1,
                  step_days=7)
    assert rec.first == 0 and rec.step_s == WEEK
    expected = np.log1p(np.array([[0, 2, 1], [0, 0, 1], [0, 0, 0]], np.float32))
    np.testing.assert_allclose(rec.values.numpy(), expected)
    now = torch.tensor([3, 10, 100, -20]) * DAY_S
    assert rec.periods(now).tolist() == [0, 1, 2, 0]   # after the log: its last window


def test_a_longer_window_sums_its_steps() -> None:
    rec = recency(np.array([0, 0, 0]), np.array([0, 8, 15]) * DAY_S, 1, window=2,
                  step_days=7)
    # columns: steps 0..3; step 2 reads steps 0 and 1, step 3 reads 1 and 2
    np.testing.assert_allclose(rec.values[0].numpy(), np.log1p([0, 1, 2, 2]))
    assert window_steps(28, 7) == 4 and window_steps(10, 7) == 2 and window_steps(1, 7) == 1


def test_the_nightly_count_is_the_training_count_at_that_moment() -> None:
    rng = np.random.default_rng(0)
    items = rng.integers(0, 20, 500)
    stamps = rng.integers(0, 120, 500) * DAY_S + rng.integers(0, DAY_S, 500)
    at = 90 * DAY_S + 5
    full = recency(items, stamps, 20, window=3, step_days=7)
    lo, hi = window_bounds(at, 3, 7)
    inside = (stamps >= lo) & (stamps < hi)
    night = recency_at(np.bincount(items[inside], minlength=20), at, 7)
    col = int(full.periods(torch.tensor([at]))[0])
    np.testing.assert_allclose(night.values[:, 0].numpy(), full.values[:, col].numpy())
    assert int(night.periods(torch.tensor([at]))[0]) == 0


def test_a_tasks_moment_is_its_first_query_interaction() -> None:
    data = episode_data(n_users=6, n_items=10, k=2, q=3)
    batch = to_batch(data.select("train"))
    tasks = data.select("train")
    first_query = tasks[tasks["role"] == "query"].groupby("task_id")["timestamp"].min()
    assert batch.now.tolist() == first_query.sort_index().tolist()


def double_store(data, net) -> FeatureStore:
    """The network's store in float64 (the tiny network's dtype)."""
    return FeatureStore(data.users, data.items, dtype=torch.float64,
                        recency=feature_store(data, net).recency)


@pytest.fixture(scope="module")
def recent_setup():
    data = episode_data(n_users=12, n_items=15, k=4, q=3)
    # spread the history over ten weeks, so that tasks see different windows
    h = data.history
    data.history = h.assign(timestamp=(h["user_idx"] * 6 * DAY_S + h["timestamp"] % 1000)
                            .astype(np.int64))
    kw = network_kwargs(data.items, data.users, data.rating_range,
                        ModelParams(recent_days=14, recent_step_days=7, embedding_dim=4))
    net = build_network(kw).double()
    with torch.no_grad():
        net.recent_weight.fill_(0.7)
    batch = train_batch(data, n=6)
    batch.now = torch.arange(6) * 9 * DAY_S          # moments in different weeks
    return data, net, batch


def test_the_ranking_adds_the_weighted_recency_of_the_tasks_moment(recent_setup) -> None:
    data, net, batch = recent_setup
    store = double_store(data, net)
    assert store.recency is not None
    user = store.user_context(batch)
    period = store.recency.periods(batch.now)
    assert torch.equal(user["period"], period)
    items = store.items(batch.query_items)
    with_term = net(user, items, output="rank")
    without = net(user, {k: v for k, v in items.items() if k != "recent"}, output="rank")
    picked = store.recency.values[batch.query_items, period[:, None]]          # (T, Q)
    torch.testing.assert_close(with_term - without, 0.7 * picked.double())


@pytest.mark.parametrize("name", ["maml", "encoder"])
def test_both_catalogue_paths_give_the_same_scores(recent_setup, name) -> None:
    data, net, batch = recent_setup
    learner = build_algorithm(name, net, {"adapt": "vector", "fold_in": True,
                                          "inner_lr": 0.1, "inner_steps": 2,
                                          "objective": {"ranking_weight": 1.0}})
    store = double_store(data, net)
    learner.use_catalogue(store)
    fast = learner.adapt(learner.meta_params(), store.support(batch), create_graph=False)
    user = learner.prepare_user(store.user_context(batch))
    table = learner.item_table(store.items(torch.arange(store.n_items)))
    gemm = torch.cat([s.clone() for _, s in catalogue_blocks(learner, fast, user, table,
                                                              cells=16)], dim=1)
    direct = learner.catalogue_scores(fast, user, table).float()
    torch.testing.assert_close(gemm, direct, rtol=1e-5, atol=1e-5)
    if name == "maml":      # the weight is adapted per task: the tasks' weights differ
        assert fast["recent_weight"].unique().numel() > 1


def test_a_store_without_moments_refuses_to_guess(recent_setup) -> None:
    data, net, batch = recent_setup
    store = feature_store(data, net)
    batch = to_batch(data.select("train"))
    batch.now = None
    with pytest.raises(ValueError, match="no moment"):
        store.user_context(batch)


def test_a_network_without_recency_ignores_it() -> None:
    data = episode_data(n_users=6, n_items=10, k=2, q=3)
    net = build_network(network_kwargs(data.items, data.users, data.rating_range,
                                       ModelParams(recent_days=0)))
    assert not net.recency and "recent_weight" not in dict(net.named_parameters())
    assert feature_store(data, net).recency is None
    assert "recent" not in FeatureStore(data.users, data.items).items(torch.arange(3))


def test_popular_now_ranks_by_the_window_before_each_tasks_moment() -> None:
    from metarec.algorithms.popular_now import TIE_WEIGHT, PopularNow

    data = episode_data(n_users=6, n_items=10, k=2, q=3)
    # item 3 twice in week 0, item 5 three times in week 1, item 7 once in week 0
    data.history = data.history.iloc[:6].assign(
        item_idx=[3, 3, 5, 5, 5, 7], timestamp=np.array([1, 2, 8, 9, 10, 3]) * DAY_S)
    counts = torch.zeros(data.items.n_ids)
    counts[[3, 5, 7]] = torch.tensor([2.0, 3.0, 1.0])
    model = PopularNow(counts, window_days=7, step_days=7).bind(data)
    batch = to_batch(data.select("train"))
    batch.now = torch.tensor([9] + [16] * (len(batch) - 1)) * DAY_S       # weeks 1, 2
    scores = model.rank(model.adapt(batch))
    tie = TIE_WEIGHT * torch.log1p(counts) / torch.log1p(counts).max()
    week0 = torch.zeros(10)
    week0[[3, 7]] = torch.log1p(torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(scores[0], week0 + tie)
    week1 = torch.zeros(10)
    week1[5] = float(np.log1p(3.0))
    torch.testing.assert_close(scores[1], week1 + tie)
    # the night's counts replace the history's
    model.use_recency(recency_at(np.eye(10, dtype=np.int64)[2], 16 * DAY_S, 7))
    assert int(model.rank(batch)[1].argmax()) == 2
