"""Ranking baselines (most popular, ItemKNN, EASE) against dense references on tiny matrices,
tuned on validation only, and the item side fitted on the training history only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metarec import algorithms
from metarec.algorithms.ease import Ease, EaseParams
from metarec.algorithms.itemknn import ItemKNN, ItemKNNParams, top_neighbours
from metarec.algorithms.most_popular import MostPopular, MostPopularParams
from metarec.config import ModelParams, TrainParams
from metarec.data.encoding import encode_entity
from metarec.data.tasks import EpisodeData, to_batch
from metarec.errors import ParamsError
from metarec.models.base import FitContext
from metarec.models.statistical import interaction_matrix

ITEMS = [f"i{i}" for i in range(6)]
USERS = [f"t{u}" for u in range(5)] + ["v0", "v1", "x0"]
# the meta-train users' history: (user, item, rating), one a day in this order
HISTORY = [("t0", "i0", 5), ("t0", "i1", 4), ("t0", "i2", 1),
           ("t1", "i0", 4), ("t1", "i1", 5),
           ("t2", "i1", 2), ("t2", "i3", 5), ("t2", "i4", 4),
           ("t3", "i3", 4), ("t3", "i4", 5), ("t3", "i0", 3),
           ("t4", "i2", 5), ("t4", "i5", 4)]
# validation / test tasks: (task, user, split, scenario, k, role, item, rating)
TASKS = [(0, "v0", "val", "user_cold", 1, "support", "i0", 5),
         (0, "v0", "val", "user_cold", 1, "query", "i1", 5),
         (0, "v0", "val", "user_cold", 1, "query", "i5", 2),
         (1, "v1", "val", "user_cold", 1, "support", "i3", 4),
         (1, "v1", "val", "user_cold", 1, "query", "i4", 5),
         (2, "x0", "test", "user_cold", 1, "support", "i2", 4),
         (2, "x0", "test", "user_cold", 1, "query", "i5", 5)]


def make_data(history: list[tuple] = HISTORY, tasks: list[tuple] = TASKS) -> EpisodeData:
    users = encode_entity(pd.DataFrame({"user_id": USERS}), "user_id",
                          {"ids": USERS, "features": {}})
    items = encode_entity(pd.DataFrame({"item_id": ITEMS}), "item_id",
                          {"ids": ITEMS, "features": {}})
    hist = pd.DataFrame(history, columns=["user_id", "item_id", "rating"])
    hist["timestamp"] = np.arange(len(hist), dtype=np.int64)
    hist = hist.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    hist["user_idx"] = users.index_of(hist["user_id"])
    hist["item_idx"] = items.index_of(hist["item_id"])
    t = pd.DataFrame(tasks, columns=["task_id", "user_id", "split", "scenario", "k", "role",
                                     "item_id", "rating"])
    t["timestamp"] = 1000 + np.arange(len(t), dtype=np.int64)
    t["rating"] = t["rating"].astype("float32")
    t["user_idx"] = users.index_of(t["user_id"])
    t["item_idx"] = items.index_of(t["item_id"])
    vocab = {"rating": {"kind": "explicit", "min": 1.0, "max": 5.0, "relevant": 4.0}}
    return EpisodeData(tasks=t, users=users, items=items, vocab=vocab, history=hist)


def fit(name: str, data: EpisodeData, section: object) -> object:
    train = TrainParams(sections={name: section}, val_ndcg_k=3)
    ctx = FitContext(data=data, model=ModelParams(), train=train, log_dir=Path("."))
    return algorithms.get(name).fit(ctx)


def dense_x(data: EpisodeData, window: int = 0) -> np.ndarray:
    """(users, item codes) binary matrix built by hand from HISTORY."""
    x = np.zeros((len(data.users), data.items.n_ids))
    for user, rows in data.history.groupby("user_idx"):
        rows = rows.head(window) if window else rows
        x[user, rows["item_idx"].to_numpy() + 1] = 1.0      # code = row + 1 in this fixture
    return x


@pytest.fixture(scope="module")
def data() -> EpisodeData:
    return make_data()


def test_interaction_matrix_reads_the_history_window(data: EpisodeData) -> None:
    np.testing.assert_array_equal(interaction_matrix(data).to_dense().numpy(), dense_x(data))
    np.testing.assert_array_equal(interaction_matrix(data, 2).to_dense().numpy(),
                                  dense_x(data, 2))
    pos = interaction_matrix(data, positive=True).to_dense().numpy()
    assert pos.sum() == sum(r >= 4 for *_, r in HISTORY) and pos[0, 3] == 0.0  # t0's i2 = 1


def test_ease_equals_the_closed_form(data: EpisodeData) -> None:
    model = fit("ease", data, EaseParams(lam=(2.0,), window=(0,)))
    x = dense_x(data)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights.numpy(), b, rtol=1e-5, atol=1e-6)
    batch = to_batch(data.select("val"))
    support = np.zeros((2, x.shape[1]))
    support[0, 1], support[1, 4] = 1.0, 1.0                 # v0: i0, v1: i3 (codes)
    np.testing.assert_allclose(model.rank(model.adapt(batch)).numpy(), (support @ b)[:, 1:],
                               rtol=1e-5, atol=1e-6)
    assert not model.predicts_ratings


def test_ease_refuses_a_catalogue_past_max_items(data: EpisodeData) -> None:
    with pytest.raises(ParamsError, match=r"train.ease: 7 item codes .*max_items \(6\)"):
        fit("ease", data, EaseParams(lam=(2.0,), max_items=6))


def test_itemknn_equals_dense_cosine_top_k(data: EpisodeData) -> None:
    model = fit("itemknn", data, ItemKNNParams(neighbours=(2,), window=(0,)))
    x = dense_x(data)
    norms = np.sqrt(x.sum(0))
    sim = (x.T @ x) / np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(sim, -1.0)
    batch = to_batch(data.select("val"))
    expect = np.zeros((2, x.shape[1]))
    for task, code in ((0, 1), (1, 4)):                     # each task's one support item
        top = np.argsort(-sim[code], kind="stable")[:2]
        expect[task, top] += np.clip(sim[code, top], 0, None)
    np.testing.assert_allclose(model.rank(model.adapt(batch)).numpy(), expect[:, 1:],
                               rtol=1e-5, atol=1e-6)
    # blocks change nothing
    a = top_neighbours(interaction_matrix(data), 3, block=2)
    b = top_neighbours(interaction_matrix(data), 3, block=100)
    assert torch.equal(a[1], b[1])


def test_most_popular_counts_users_in_the_window(data: EpisodeData) -> None:
    model = fit("most_popular", data, MostPopularParams(window=(0,), positive_only=(False,)))
    assert model.counts.tolist() == [0, 3, 3, 2, 2, 2, 1]   # code 0 = unknown
    early = fit("most_popular", data, MostPopularParams(window=(1,), positive_only=(False,)))
    assert early.counts.tolist() == [0, 2, 1, 1, 1, 0, 0]   # each user's first interaction
    batch = to_batch(data.select("val"))
    assert model.rank(model.adapt(batch)).shape == (2, 6)


def test_grids_are_chosen_on_validation_only(data: EpisodeData) -> None:
    section = MostPopularParams(window=(0, 1, 2), positive_only=(False, True))
    model = fit("most_popular", data, section)
    record = model.tuning["window, positive_only"]
    scores = record["val_ndcg@3"]
    best = record["grid"][int(np.argmax(scores))]
    assert [model.window, model.positive_only] == best
    # changing every test rating changes no choice
    changed = [t if t[2] != "test" else (*t[:7], 1) for t in TASKS]
    again = fit("most_popular", make_data(tasks=changed), section)
    assert again.tuning == model.tuning


@pytest.mark.parametrize("name", [n for n in algorithms.names("baseline")
                                  if not algorithms.get(n).capabilities.gradient])
def test_a_planted_test_interaction_changes_no_item_side_fit(name: str) -> None:
    """The item side reads the meta-train users' history only: a test user's interactions
    (support and query) never enter it."""
    base = make_data()
    planted = make_data(tasks=[*TASKS, (2, "x0", "test", "user_cold", 1, "query", "i0", 5),
                               (2, "x0", "test", "user_cold", 1, "query", "i3", 5)])
    def fitted(data: EpisodeData) -> object:      # after what it is fitted on top of
        done: dict = {}
        for n in algorithms.fit_order([*algorithms.requirements(name), name]):
            done[n] = algorithms.get(n).fit(FitContext(
                data=data, model=ModelParams(), train=TrainParams(val_ndcg_k=3),
                log_dir=Path("."), fitted=done))
        return done[name]

    a, b = fitted(base), fitted(planted)
    sa, sb = a.state(), b.state()
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert sa[key] == sb[key], key
    assert isinstance(a, (Ease, ItemKNN, MostPopular)) or a.predicts_ratings


# ---- contracts the mutation run found untested ------------------------------------------


@pytest.mark.parametrize(("name", "section"), [
    ("most_popular", MostPopularParams(window=(0, 2), positive_only=(False, True))),
    ("itemknn", ItemKNNParams(neighbours=(1, 3), window=(0, 2))),
    ("ease", EaseParams(lam=(2.0, 20.0), window=(0, 2))),
])
def test_a_ranking_baseline_loads_from_its_state_unchanged(data: EpisodeData, name: str,
                                                           section: object) -> None:
    """What a checkpoint holds is what the model needs: load(state) ranks the same items
    the same way and gives back the same state (tuning record, chosen values, tables)."""
    model = fit(name, data, section)
    again = type(model).load(model.state(), data)
    batch = to_batch(data.select("val"))
    torch.testing.assert_close(again.rank(again.adapt(batch)), model.rank(model.adapt(batch)))
    sa, sb = model.state(), again.state()
    assert sa.keys() == sb.keys() and "tuning" in sa
    for key in sa:
        if isinstance(sa[key], torch.Tensor):
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert sa[key] == sb[key], key


def test_the_tuning_record_names_each_axis_and_the_chosen_values(data: EpisodeData) -> None:
    model = fit("ease", data, EaseParams(lam=(2.0, 20.0), window=(0, 2)))
    rec = model.tuning
    assert set(rec) == {"window, lam", "window", "lam"}
    assert rec["window, lam"]["grid"] == [[0, 2.0], [0, 20.0], [2, 2.0], [2, 20.0]]
    assert [model.window, model.lam] == [rec["window"], rec["lam"]]


def test_ease_on_a_history_window_is_the_closed_form_of_that_window(data: EpisodeData) -> None:
    model = fit("ease", data, EaseParams(lam=(2.0,), window=(2,)))
    assert model.window == 2
    x = dense_x(data, 2)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights.numpy(), b, rtol=1e-5, atol=1e-6)
    assert np.abs(b).max() > 0.01                             # a non-trivial B


def test_ease_fits_at_max_items_and_names_the_memory_past_it(data: EpisodeData) -> None:
    assert fit("ease", data, EaseParams(lam=(2.0,), max_items=7)).weights.shape == (7, 7)
    ids = [f"j{i}" for i in range(39_999)]
    big = EpisodeData(tasks=data.tasks, users=data.users, vocab=data.vocab,
                      history=data.history,
                      items=encode_entity(pd.DataFrame({"item_id": ids}), "item_id",
                                          {"ids": ids, "features": {}}))
    # 40,000 codes: 40,000^2 float64 = 11.9 GiB
    with pytest.raises(ParamsError, match=r"40,000 item codes .*\(~11\.9 GiB to invert\)"):
        fit("ease", big, EaseParams(lam=(2.0,), max_items=39_999))


def test_most_popular_positive_only_counts_relevant_interactions(data: EpisodeData) -> None:
    model = fit("most_popular", data, MostPopularParams(window=(0,), positive_only=(True,)))
    # ratings >= 4 per item i0..i5: 2, 2, 1, 2, 2, 1 (code 0 = unknown)
    assert model.counts.tolist() == [0, 2, 2, 1, 2, 2, 1]
    assert model.positive_only is True


def test_itemknn_keeps_at_most_every_other_item_as_neighbours(data: EpisodeData) -> None:
    x = interaction_matrix(data)
    idx, sim = top_neighbours(x, 100, block=3)[:2]
    assert idx.shape == sim.shape == (7, 6)              # 7 codes: 6 others each, never 100
    assert not (idx == torch.arange(7)[:, None]).any()   # never itself


def test_a_repeated_history_pair_keeps_its_first_rating() -> None:
    from metarec.models.statistical import training_ratings

    data = make_data(history=[*HISTORY, ("t0", "i0", 1)])   # t0 rates i0 again, later
    users, items, ratings = training_ratings(data)
    assert len(users) == len(HISTORY)
    first = (users == 0) & (items == 0)
    assert ratings[first].tolist() == [5.0]


def test_tuning_without_validation_tasks_fails_saying_so(data: EpisodeData) -> None:
    from metarec.errors import DataError

    no_val = make_data(tasks=[t for t in TASKS if t[2] != "val"])
    with pytest.raises(DataError, match="^no validation tasks to tune the baselines on$"):
        fit("most_popular", no_val, MostPopularParams(window=(0,), positive_only=(False,)))


def test_without_a_relevant_validation_item_the_first_grid_value_is_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging

    low = [(*t[:7], 1) if t[2] == "val" and t[5] == "query" else t for t in TASKS]
    with caplog.at_level(logging.WARNING):
        model = fit("most_popular", make_data(tasks=low),
                    MostPopularParams(window=(2, 0), positive_only=(True, False)))
    assert isinstance(model, MostPopular)
    assert (model.window, model.positive_only) == (2, True)
    record = model.tuning["window, positive_only"]
    assert record["note"] == "no relevant validation item: first grid value kept"
    assert all(s != s for s in record["val_ndcg@3"])      # every score NaN
    assert "keeps the first grid value (2, True)" in caplog.text


EXPLAIN_TASKS = [*TASKS, (3, "x0", "test", "item_cold", 2, "support", "i0", 5),
                 (3, "x0", "test", "item_cold", 2, "support", "i3", 4),
                 (3, "x0", "test", "item_cold", 2, "query", "i5", 5)]


def _expected_because(weight: np.ndarray, batch: object, items: torch.Tensor) -> np.ndarray:
    """By hand: the position of the real support item j with the largest weight[j, i]
    toward each recommended item i (codes = row + 1 in this fixture); -1 without support."""
    out = np.full(items.shape, -1)
    for t in range(items.shape[0]):
        real = [s for s in range(batch.support_items.shape[1]) if batch.support_mask[t, s]]
        for j in range(items.shape[1]):
            vals = [weight[int(batch.support_items[t, s]) + 1, int(items[t, j]) + 1]
                    for s in real]
            out[t, j] = real[int(np.argmax(vals))] if real else -1
    return out


@pytest.mark.parametrize("name", ["ease", "itemknn"])
def test_the_support_item_that_explains_each_pick_is_the_strongest_link(name: str) -> None:
    data = make_data(tasks=EXPLAIN_TASKS)
    x = dense_x(data)
    if name == "ease":
        model = fit(name, data, EaseParams(lam=(2.0,), window=(0,)))
        p = np.linalg.inv(x.T @ x + 2.0 * np.eye(x.shape[1]))
        weight = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
        np.fill_diagonal(weight, 0.0)
    else:
        model = fit(name, data, ItemKNNParams(neighbours=(6,), window=(0,)))
        norms = np.sqrt(x.sum(0))
        weight = (x.T @ x) / np.maximum(np.outer(norms, norms), 1e-12)
        np.fill_diagonal(weight, 0.0)
    batch = to_batch(data.select("test"))                 # task 2: one support; 3: two
    assert batch.support_mask.sum(1).tolist() == [1, 2]
    items = torch.tensor([[1, 4, 5], [1, 4, 5]])
    got = model.explain(batch, items).numpy()
    np.testing.assert_array_equal(got, _expected_because(weight, batch, items))
    assert set(got[1].tolist()) == {0, 1}                 # both support items explain a pick
