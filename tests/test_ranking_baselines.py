"""Ranking baselines (most popular, ItemKNN, EASE) against dense references on tiny matrices,
tuned on validation only, and the item side fitted on the training history only."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metarec import algorithms
from metarec.algorithms.ease import Ease, EaseParams
from metarec.algorithms.itemknn import ItemKNN, ItemKNNParams, top_neighbours
from metarec.algorithms.most_popular import MostPopular, MostPopularParams
from metarec.algorithms.popular_now import PopularNow
from metarec.config import ModelParams, TrainParams
from metarec.data.encoding import encode_entity
from metarec.data.tasks import EpisodeData, to_batch, validation_tasks
from metarec.errors import ParamsError
from metarec.models.base import FitContext
from metarec.models.statistical import interaction_matrix, scores_ndcg, validation_ndcg

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


def dense_b(model: Ease) -> np.ndarray:
    """The model's B over every item code (codes outside ``model.items``: zero rows, columns)."""
    b = np.zeros((model.n_codes, model.n_codes))
    b[np.ix_(model.items.numpy(), model.items.numpy())] = model.weights.numpy()
    return b


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
    np.testing.assert_allclose(dense_b(model), b, rtol=1e-5, atol=1e-6)
    assert model.items.tolist() == [1, 2, 3, 4, 5, 6]       # code 0 has no interactions
    batch = to_batch(data.select("val"))
    support = np.zeros((2, x.shape[1]))
    support[0, 1], support[1, 4] = 1.0, 1.0                 # v0: i0, v1: i3 (codes)
    np.testing.assert_allclose(model.rank(model.adapt(batch)).numpy(), (support @ b)[:, 1:],
                               rtol=1e-5, atol=1e-6)
    assert not model.predicts_ratings


def test_ease_refuses_a_catalogue_past_max_items(data: EpisodeData) -> None:
    with pytest.raises(ParamsError, match=r"train.ease: 6 items with interactions \(window 0\)"
                                          r".*max_items \(5\); set train.ease.top_items to "
                                          r"at most 5 \(EASE over that many most-interacted "
                                          r"items, every other item ranked after them by "
                                          r"popularity\)"):
        fit("ease", data, EaseParams(lam=(2.0,), window=(0,), max_items=5))


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
    assert isinstance(a, (Ease, ItemKNN, MostPopular, PopularNow)) or a.predicts_ratings


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
    assert "search" not in rec["window, lam"]                 # every value scored
    assert [model.window, model.lam] == [rec["window"], rec["lam"]]


def test_ease_on_a_history_window_is_the_closed_form_of_that_window(data: EpisodeData) -> None:
    model = fit("ease", data, EaseParams(lam=(2.0,), window=(2,)))
    assert model.window == 2
    x = dense_x(data, 2)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(dense_b(model), b, rtol=1e-5, atol=1e-6)
    assert np.abs(b).max() > 0.01                             # a non-trivial B


def test_ease_fits_at_max_items_and_names_the_memory_past_it(data: EpisodeData) -> None:
    assert fit("ease", data, EaseParams(lam=(2.0,), max_items=6)).weights.shape == (6, 6)
    ids = [f"j{i}" for i in range(40_000)]
    wide = pd.DataFrame({"user_id": "t0", "item_id": ids, "rating": 5})
    big = EpisodeData(tasks=data.tasks, users=data.users, vocab=data.vocab,
                      items=encode_entity(pd.DataFrame({"item_id": ids}), "item_id",
                                          {"ids": ids, "features": {}}),
                      history=wide.assign(timestamp=np.arange(40_000), user_idx=0,
                                          item_idx=np.arange(40_000)))
    # 40,000 items with interactions: G, G + lam I and its factor, 3 x 40,000^2 float64
    with pytest.raises(ParamsError, match=r"40,000 items .*\(~35\.8 GiB at the peak\)"):
        fit("ease", big, EaseParams(lam=(2.0,), window=(0,), max_items=39_999))


def test_ease_top_items_is_the_closed_form_of_the_most_interacted(data: EpisodeData) -> None:
    """top_items = 3: i0 and i1 (3 users each) and i2, the lowest code of the three items
    with 2 users; every other item ranks after them by popularity (count / (1 + 3)),
    also for a task whose support has none of them."""
    model = fit("ease", data, EaseParams(lam=(2.0,), window=(0,), top_items=3, max_items=3))
    assert model.items.tolist() == [1, 2, 3]
    x = dense_x(data)[:, 1:4]
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(3))
    b = np.eye(3) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights.numpy(), b, rtol=1e-5, atol=1e-6)
    batch = to_batch(data.select("val"))                    # v0: i0 (code 1), v1: i3 (code 4)
    head = np.r_[0.0, b[0, 1:]]                             # v0's scores of codes 1, 2, 3
    below = head.min() - 1.0 + np.array([0.5, 0.5, 0.25])   # codes 4, 5, 6: 2, 2, 1 users
    expect = np.array([[*head, *below], [0.0, 0.0, 0.0, -0.5, -0.5, -0.75]])
    np.testing.assert_allclose(model.rank(model.adapt(batch)).numpy(), expect, atol=1e-6)


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


# ---- cheap grids choose what the dense per-value fits choose -------------------------------


def random_data(seed: int, n_items: int = 40, n_train: int = 60, n_val: int = 24
                ) -> EpisodeData:
    """A planted taste (two halves of the catalogue) over ``n_items`` items, the last three
    never rated in training (zero Gram rows: B's zero rows and columns); validation users with
    supports of 1 to 5 items (one repeated) and 6 rated query items."""
    rng = np.random.default_rng(seed)
    items = [f"i{i}" for i in range(n_items)]
    users = [f"t{u}" for u in range(n_train)] + [f"v{u}" for u in range(n_val)]
    rated = n_items - 3
    hist = []
    for u in range(n_train):
        half = rng.integers(2)
        pref = np.r_[np.full(rated // 2, 3.0 if half else 1.0),
                     np.full(rated - rated // 2, 1.0 if half else 3.0)]
        picks = rng.choice(rated, size=rng.integers(3, 15), replace=False, p=pref / pref.sum())
        hist += [(f"t{u}", f"i{i}", int(rng.integers(1, 6))) for i in picks]
    tasks = []
    for u in range(n_val):
        picks = rng.choice(n_items, size=11, replace=False)
        k = 1 + u % 5
        support = [*picks[:k], picks[0]] if u % 7 == 0 else picks[:k]   # a repeated item
        tasks += [(u, f"v{u}", "val", "user_cold", k, "support", f"i{i}", 4) for i in support]
        tasks += [(u, f"v{u}", "val", "user_cold", k, "query", f"i{i}", int(rng.integers(1, 6)))
                  for i in picks[5:]]
    enc_u = encode_entity(pd.DataFrame({"user_id": users}), "user_id",
                          {"ids": users, "features": {}})
    enc_i = encode_entity(pd.DataFrame({"item_id": items}), "item_id",
                          {"ids": items, "features": {}})
    h = pd.DataFrame(hist, columns=["user_id", "item_id", "rating"])
    h["timestamp"] = np.arange(len(h), dtype=np.int64)
    h = h.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    h["user_idx"], h["item_idx"] = enc_u.index_of(h["user_id"]), enc_i.index_of(h["item_id"])
    t = pd.DataFrame(tasks, columns=["task_id", "user_id", "split", "scenario", "k", "role",
                                     "item_id", "rating"])
    t["timestamp"] = 10_000 + np.arange(len(t), dtype=np.int64)
    t["rating"] = t["rating"].astype("float32")
    t["user_idx"], t["item_idx"] = enc_u.index_of(t["user_id"]), enc_i.index_of(t["item_id"])
    vocab = {"rating": {"kind": "explicit", "min": 1.0, "max": 5.0, "relevant": 4.0}}
    return EpisodeData(tasks=t, users=enc_u, items=enc_i, vocab=vocab, history=h)


def dense_choice(data: EpisodeData, models: dict[tuple, object]) -> tuple[tuple, list[float]]:
    """What fitting every grid value on its own chooses: each model ranks the validation
    tasks, the first of the highest nDCG@3 wins. (choice, scores in grid order)."""
    batch = validation_tasks(data)
    scores = [validation_ndcg(m, batch, data.relevance_threshold, 3) for m in models.values()]
    return list(models)[int(np.argmax(scores))], scores


@pytest.mark.parametrize(("seed", "top"), [(0, 0), (1, 0), (2, 0), (0, 20), (1, 12)])
def test_the_cheap_ease_grid_is_the_dense_grid(seed: int, top: int) -> None:
    """Every (window, lam) fitted on its own (a float64 dense inverse, the model ranking the
    tasks) chooses what the cheap grid chooses (Gram matrices over the items with
    interactions, scores from the rows of P), with the same validation scores and the same
    B; with ``top_items`` the head is the ``top`` most interacted (lower code first) and the
    rest are ranked by popularity."""
    data = random_data(seed)
    section = EaseParams(lam=(0.5, 2.0, 8.0, 30.0, 200.0), window=(0, 4), top_items=top)
    model = fit("ease", data, section)
    n = data.items.n_ids
    dense = {}
    for w, lam in itertools.product(section.window, section.lam):
        x = interaction_matrix(data, w).to_dense().double()
        counts = x.sum(0)
        items = torch.nonzero(counts > 0).squeeze(1)
        popularity = torch.zeros(0)
        if top:
            order = np.argsort(-counts[items].numpy(), kind="stable")[:top]
            items, popularity = items[np.sort(order)], counts / (1 + counts.max())
        x = x[:, items]
        p = torch.linalg.inv(x.T @ x + lam * torch.eye(len(items), dtype=torch.float64))
        b = -p / torch.diagonal(p)
        b.fill_diagonal_(0.0)
        dense[(w, lam)] = Ease(items, b, n, popularity, lam, w).bind(data)
    batch = validation_tasks(data)                 # the ranking: each support row x B
    x = torch.zeros(len(batch), n)
    x[torch.arange(len(batch))[:, None].expand_as(batch.support_items)[batch.support_mask],
      model.codes[batch.support_items][batch.support_mask]] = 1.0
    head = x[:, model.items] @ model.weights
    ranked = model.rank(batch)
    pos = torch.full((n,), -1)
    pos[model.items] = torch.arange(model.items.numel())
    cols = torch.nonzero(pos[model.codes] >= 0).squeeze(1)
    torch.testing.assert_close(ranked[:, cols], head[:, pos[model.codes[cols]]], rtol=0,
                               atol=1e-5)
    choice, scores = dense_choice(data, dense)
    record = model.tuning["window, lam"]
    assert (model.window, model.lam) == choice
    np.testing.assert_allclose(record["val_ndcg@3"], scores, rtol=0, atol=1e-6)
    assert len(set(np.round(scores, 6))) > 3                   # the grid tells values apart
    assert torch.equal(model.items, dense[choice].items)
    assert model.items.numel() == top if top else 0 not in model.items.tolist()
    np.testing.assert_allclose(model.weights.numpy(), dense[choice].weights.numpy(),
                               atol=1e-6)
    torch.testing.assert_close(model.popularity, dense[choice].popularity)


# ---- a large catalogue: float32 inverses, the penalties walked -----------------------------

LAMS = (0.5, 2.0, 8.0, 30.0, 100.0, 300.0, 1000.0)


def walked(grid: tuple[float, ...], curve: list[float]) -> list[int]:
    """The indices :func:`hill_climb` scores on ``curve``, each read only once yielded."""
    from metarec.algorithms.ease import hill_climb

    out: list[int] = []

    def score(i: int) -> float:
        assert i in out, f"{i} read before it was scored"
        return curve[i]

    for i in hill_climb(grid, score):
        assert i not in out
        out.append(i)
    return out


def first_best(curve: list[float], at: list[int]) -> int:
    """tune_product's rule over the indices ``at``: the highest, NaN last, first in order."""
    return max(sorted(at), key=lambda i: -1.0 if curve[i] != curve[i] else curve[i])


@pytest.mark.parametrize("seed", range(20))
def test_the_walk_finds_the_best_of_a_unimodal_curve_with_fewer_scores(seed: int) -> None:
    """A curve rising to a peak and not rising after it (plateaus there, the peak's
    included): the walk scores the middle value first and ends at the grid's best, the
    first of equal ones, one more score per step past the first three. (A plateau before
    the peak would stop it: a local maximum.)"""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    peak = int(rng.integers(n))
    up, down = rng.integers(1, 3, size=peak + 1), rng.integers(0, 3, size=n - peak - 1)
    curve = np.r_[np.cumsum(up), up.sum() - np.cumsum(down)].astype(float).tolist()
    grid = tuple(float(v) for v in np.sort(rng.uniform(0, 1e4, n)))
    seen = walked(grid, curve)
    assert seen[0] == (n - 1) // 2
    assert first_best(curve, seen) == first_best(curve, list(range(n)))
    assert len(seen) <= n and len(seen) <= 3 + abs(first_best(curve, seen) - (n - 1) // 2)


def test_the_walk_stops_at_a_local_maximum_and_breaks_ties_as_tune_product() -> None:
    grid = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
    assert walked(grid, [9, 0, 1, 2, 1, 0, 0]) == [3, 2, 4]     # the peak at 0 is missed
    assert walked(grid, [0, 1, 2, 2, 2, 1, 0]) == [3, 2, 4, 1]   # a tie: the earlier
    assert walked(grid, [0, 1, 2, 1, 2, 3, 4]) == [3, 2, 4, 1]
    assert walked(grid, [float("nan")] * 7) == [3, 2, 4, 1, 0]   # all NaN: the first
    assert walked(grid, [0, 0, 1, float("nan"), 0, 0, 0]) == [3, 2, 4, 1]
    # an unsorted grid is walked in ascending value; equal values: the earlier index first
    assert walked((30.0, 1.0, 10.0, 3.0, 100.0), [5, 1, 4, 3, 0]) == [2, 3, 0, 4]
    assert walked((2.0,), [1.0]) == [0] and walked((2.0, 1.0), [1, 1]) == [1, 0]


def test_a_large_catalogue_walks_the_penalties_to_the_full_grid_choice() -> None:
    """Past large_items (37 items with interactions here), each window's validation curve
    (unimodal on this fixture, its peak off the middle value) is walked: the choice is the
    full grid's, from fewer scores, each the full grid's score of that value; the record
    lists only those and says why. The middle value (30) would choose differently."""
    data = random_data(0)
    full = fit("ease", data, EaseParams(lam=LAMS, window=(0, 4)))
    walk = fit("ease", data, EaseParams(lam=LAMS, window=(0, 4), large_items=36))
    whole, part = full.tuning["window, lam"], walk.tuning["window, lam"]
    assert "search" not in whole and len(whole["grid"]) == 14
    curves = np.array(whole["val_ndcg@3"]).reshape(2, len(LAMS))
    for curve in curves:                                      # the fixture's premise
        top = int(np.argmax(curve))
        assert (np.diff(curve[:top + 1]) >= 0).all() and (np.diff(curve[top:]) <= 0).all()
        assert top != len(LAMS) // 2
    assert (walk.window, walk.lam) == (full.window, full.lam) == (4, 8.0)
    assert [walk.tuning["window"], walk.tuning["lam"]] == [4, 8.0]
    scored = dict(zip(map(tuple, whole["grid"]), whole["val_ndcg@3"], strict=True))
    assert part["grid"] == [g for g in whole["grid"] if tuple(g) in map(tuple, part["grid"])]
    assert part["grid"] == [[0, 0.5], [0, 2.0], [0, 8.0], [0, 30.0], [0, 100.0],
                            [4, 2.0], [4, 8.0], [4, 30.0], [4, 100.0]]
    np.testing.assert_allclose(part["val_ndcg@3"], [scored[tuple(g)] for g in part["grid"]],
                               rtol=0, atol=1e-6)
    assert part["search"] == ("walked: lam hill-climbed from the middle, in float32, where G "
                              "has more than large_items 36 (window 0: 37 items, window 4: "
                              "37 items)")
    assert walk.weights.shape == full.weights.shape
    np.testing.assert_allclose(walk.weights.numpy(), full.weights.numpy(), rtol=0, atol=1e-5)


def test_only_the_windows_past_large_items_are_walked() -> None:
    data = random_data(1)                                     # window 0: 37 items, 4: 36
    model = fit("ease", data, EaseParams(lam=LAMS, window=(0, 4), large_items=36))
    record = model.tuning["window, lam"]
    assert [g for g in record["grid"] if g[0] == 4] == [[4, lam] for lam in LAMS]
    assert 0 < len([g for g in record["grid"] if g[0] == 0]) < len(LAMS)
    assert record["search"].endswith("large_items 36 (window 0: 37 items)")
    at = fit("ease", data, EaseParams(lam=LAMS, window=(0, 4), large_items=37))
    assert "search" not in at.tuning["window, lam"]           # m <= large_items: whole grid
    full = fit("ease", data, EaseParams(lam=LAMS, window=(0, 4)))
    assert at.tuning == full.tuning and torch.equal(at.weights, full.weights)


def test_the_float32_inverse_is_within_its_rounding_of_the_float64_one() -> None:
    """float32 Cholesky inverse: ||P32 - P64|| / ||P64|| within a few m eps32 cond(G + lam I)
    (the inversion's forward error bound); B = -P / diag(P) with it. A float32 G whose
    factorisation breaks down (1e8 + 1 rounds to 1e8: singular) is redone in float64."""
    from metarec.algorithms.ease import weights
    from metarec.models.linalg import ridge_inverse

    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(400, 120, generator=gen) < torch.linspace(0.01, 0.5, 120)).double()
    g = x.T @ x                                                 # counts: exact in float32
    for lam in (1.0, 10.0, 1000.0):
        p64, p32 = ridge_inverse(g, lam), ridge_inverse(g.float(), lam)
        assert p32.dtype == torch.float32
        a = g + lam * torch.eye(120, dtype=torch.float64)
        bound = 4 * 120 * torch.finfo(torch.float32).eps * torch.linalg.cond(a)
        err = torch.linalg.matrix_norm(p32.double() - p64) / torch.linalg.matrix_norm(p64)
        assert err < bound, (lam, err, bound)
        b64, b32 = weights(p64.clone()), weights(p32.clone())
        assert torch.linalg.matrix_norm(b32.double() - b64) < bound * torch.linalg.matrix_norm(
            b64)
    singular = torch.full((2, 2), 1e8, dtype=torch.float64)
    torch.testing.assert_close(ridge_inverse(singular.float(), 1.0),
                               ridge_inverse(singular, 1.0), rtol=0, atol=0)


@pytest.mark.parametrize(("name", "section"), [
    ("ease", EaseParams(lam=(0.5, 8.0, 200.0), window=(0, 4))),
    ("itemknn", ItemKNNParams(neighbours=(8, 2, 60), window=(0, 4))),
])
def test_the_grids_are_the_same_in_any_blocks(monkeypatch: pytest.MonkeyPatch, name: str,
                                              section: object) -> None:
    """Blocks of one task (the memory bound) change no score and no choice."""
    data = random_data(3)
    whole = fit(name, data, section)
    monkeypatch.setattr(sys.modules[type(whole).__module__], "CHUNK_CELLS", 1)
    blocks = fit(name, data, section)
    assert blocks.tuning == whole.tuning
    for key, value in whole.state().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(blocks.state()[key], value), key


def test_grid_scores_cover_every_task_of_every_value_in_order() -> None:
    """Blocks of tasks may interleave values; a gap or a missing value fails loudly; the
    first of equal scores in grid order wins."""
    from metarec.models.statistical import tune_product

    data = random_data(5)
    t, n = len(validation_tasks(data)), len(data.items)

    def make(v: int, w: int) -> MostPopular:
        return MostPopular(torch.zeros(data.items.n_ids), v).bind(data)

    def blocks(skip: int = -1, values: tuple = (2, 1)) -> Callable:
        def scores(batch: object) -> Iterator:
            for a in range(0, t, 5):                  # blocks of 5, values interleaved
                for v in values:
                    if a != skip:
                        yield (v, 0), a, torch.arange(n).float().expand(min(5, t - a), n)
        return scores

    best, record = tune_product(make, {"v": (1, 2), "w": (0,)}, data, 3, blocks())
    assert (record["v"], best.window) == (1, 1)       # the same ranking: the first value
    scores = record["v, w"]["val_ndcg@3"]
    assert scores[0] == scores[1] == scores_ndcg(torch.arange(n).float().expand(t, n),
                                                 validation_tasks(data), 4.0, 3)
    with pytest.raises(ValueError, match=r"grid scores of \(2, 0\): tasks from 10, "
                                         r"expected 5"):
        tune_product(make, {"v": (1, 2), "w": (0,)}, data, 3, blocks(skip=5))
    with pytest.raises(ValueError, match="the grid scores cover"):
        tune_product(make, {"v": (1, 2), "w": (0,)}, data, 3, blocks(values=(2,)))


def test_a_searched_grid_is_chosen_among_and_records_only_what_was_scored() -> None:
    """With ``search`` the scorer reads each finished combination's score to pick the next;
    the record lists the scored ones in grid order and why; none scored fails loudly."""
    from metarec.models.statistical import tune_product

    data = random_data(5)
    batch = validation_tasks(data)
    t, n = len(batch), len(data.items)
    ranks = [torch.arange(n).float().expand(t, n), torch.arange(n).flip(0).float().expand(t, n)]
    (high, better), (low, worse) = sorted(((scores_ndcg(r, batch, 4.0, 3), r) for r in ranks),
                                          key=lambda pair: -pair[0])
    assert high > low

    def make(v: int, w: int) -> MostPopular:
        return MostPopular(torch.zeros(data.items.n_ids), v).bind(data)

    def scores(batch: object, score: Callable) -> Iterator:
        yield (3, 0), 0, worse[:5]
        with pytest.raises(ValueError, match=r"grid scores of \(3, 0\): 5 of \d+ tasks"):
            score((3, 0))
        yield (3, 0), 5, worse[5:]
        assert score((3, 0)) == low
        yield (1, 0), 0, better

    best, record = tune_product(make, {"v": (1, 2, 3), "w": (0,)}, data, 3, scores, "why")
    assert record["v, w"] == {"grid": [[1, 0], [3, 0]], "val_ndcg@3": [high, low],
                              "search": "why"}
    assert (record["v"], best.window) == (1, 1)
    with pytest.raises(ValueError, match="the grid scores cover"):
        tune_product(make, {"v": (1, 2), "w": (0,)}, data, 3, lambda b, s: iter(()), "why")


def test_validation_ndcg_is_the_same_in_any_blocks() -> None:
    data = random_data(4)
    batch = validation_tasks(data)
    scores = torch.randn(len(batch), len(data.items)).round(decimals=1)   # with ties
    whole = scores_ndcg(scores, batch, 4.0, 3)
    assert whole == scores_ndcg(scores, batch, 4.0, 3, cells=len(data.items) * 5)
    assert whole == scores_ndcg(scores, batch, 4.0, 3, cells=1)


def dense_itemknn_scores(data: EpisodeData, window: int, k: int) -> torch.Tensor:
    """(T, N) validation scores of ItemKNN with ``k`` neighbours from a dense cosine matrix:
    float32 similarities, each row's k best (equal ones: the lower code first), sums of the
    clipped similarities over each task's support items (a repeated one twice, as today)."""
    x = interaction_matrix(data, window).to_dense()                     # (U, n) float32
    norms = x.sum(0).sqrt()
    sim = (x.T @ x) / (norms[:, None] * norms[None, :]).clamp_min(1e-12)
    sim.fill_diagonal_(-1.0)
    sim = sim.numpy()
    batch = validation_tasks(data)
    codes = data.items.id_code.long().numpy()
    out = np.zeros((len(batch), data.items.n_ids))
    for t in range(len(batch)):
        for j in codes[batch.support_items[t][batch.support_mask[t]].numpy()]:
            top = np.argsort(-sim[j], kind="stable")[:k]
            out[t, top] += np.clip(sim[j, top], 0.0, None)
    return torch.from_numpy(out[:, codes]).float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_itemknn_grid_from_one_similarity_pass_is_the_dense_grid(seed: int) -> None:
    """Every (window, neighbours) scored on its own from a dense cosine matrix chooses what
    the one-pass grid chooses (neighbours in any order, one past the catalogue), with the
    same validation scores; the chosen model ranks as the dense reference does."""
    data = random_data(seed)
    section = ItemKNNParams(neighbours=(8, 2, 60, 4, 16), window=(0, 4))
    model = fit("itemknn", data, section)
    batch = validation_tasks(data)
    grid = list(itertools.product(section.window, section.neighbours))
    dense = {v: dense_itemknn_scores(data, *v) for v in grid}
    scores = [scores_ndcg(dense[v], batch, data.relevance_threshold, 3) for v in grid]
    record = model.tuning["window, neighbours"]
    assert (model.window, model.k) == grid[int(np.argmax(scores))]
    np.testing.assert_allclose(record["val_ndcg@3"], scores, rtol=0, atol=1e-6)
    assert len(set(np.round(scores, 6))) > 3                   # the grid tells values apart
    torch.testing.assert_close(model.rank(model.adapt(batch)),
                               dense[(model.window, model.k)], rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ndcg_from_the_columns_that_reach_the_top_is_the_catalogue_ndcg(seed: int) -> None:
    """Ties at the k-th score (a group of 0 scores here), relevant items far below it, tasks
    with fewer candidates than k: every task's metrics are the whole catalogue's."""
    from metarec.metrics import catalogue_metrics, reach_top

    gen = torch.Generator().manual_seed(seed)
    t, n, k = 40, 300, 5
    scores = torch.randint(-3, 40, (t, n), generator=gen).float().clamp_min(0.0) / 7
    cands = torch.rand(t, n, generator=gen) < 0.9
    cands[:3, 4:] = False                                  # fewer candidates than k
    rel = (torch.rand(t, n, generator=gen) < 0.03) & cands
    rel[5, scores[5].argmin()] = True
    cut = reach_top(scores, cands, rel, k)
    assert cut[0].shape[1] < n // 2                        # far fewer columns
    whole, part = catalogue_metrics(scores, cands, rel, k), catalogue_metrics(*cut, k)
    for name in ("ndcg", "recall", "hit_rate", "evaluated"):
        torch.testing.assert_close(getattr(part, name), getattr(whole, name), rtol=0,
                                   atol=1e-6, equal_nan=True)
