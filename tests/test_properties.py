"""Property-based tests (Hypothesis) of the data rules and metric invariants.

Each property holds for every input Hypothesis draws, not for one hand-picked fixture: random
draws stay inside each user's pre-test history and differ between seeds, temporal tasks never
query before their support, quarantine accounts for every row, ids round-trip through their
codes, and the catalogue metrics of a constant predictor equal the random-ranking expectation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarec.config import EpisodesParams
from metarec.data.draws import draw_tasks
from metarec.data.encoding import encode_entity, fit_entity_vocab
from metarec.data.protocols.temporal import temporal
from metarec.metrics import catalogue_metrics, catalogue_targets

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def histories(draw: st.DrawFn, min_users: int = 1) -> pd.DataFrame:
    """Interactions (user_idx, item_idx, rating, timestamp) without repeated (user, item)."""
    n_users = draw(st.integers(min_users, 12))
    n_items = draw(st.integers(3, 15))
    rows = []
    for u in range(n_users):
        items = draw(st.lists(st.integers(0, n_items - 1), min_size=1, max_size=n_items,
                              unique=True))
        for i in items:
            rows.append((u, i, draw(st.integers(1, 5)), draw(st.integers(0, 50))))
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating", "timestamp"])


def _task_pairs(batch, part: str) -> set[tuple[int, int]]:
    items, mask = getattr(batch, f"{part}_items"), getattr(batch, f"{part}_mask")
    users = batch.user_idx[:, None].expand_as(items)
    return set(zip(users[mask].tolist(), items[mask].tolist(), strict=True))


@SETTINGS
@given(hist=histories(), seed=st.integers(0, 2**31 - 1),
       sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), q=st.integers(1, 5),
       mode=st.sampled_from(["random", "temporal"]))
def test_draws_stay_inside_the_history_and_keep_support_and_query_apart(
        hist: pd.DataFrame, seed: int, sizes: list[int], q: int, mode: str) -> None:
    batch = draw_tasks(hist.astype({"item_idx": "int32"}), tuple(sizes), q, mode,
                       np.random.default_rng(seed))
    assert torch.equal(batch.task_id, torch.arange(len(batch.user_idx)))
    assert batch.support_items.dtype == batch.query_items.dtype == torch.int64
    rows = set(zip(hist["user_idx"], hist["item_idx"], strict=True))
    rating = dict(zip(zip(hist["user_idx"], hist["item_idx"], strict=True), hist["rating"],
                      strict=True))
    for part in ("support", "query"):   # every task row carries the user's own rating
        items, mask = getattr(batch, f"{part}_items"), getattr(batch, f"{part}_mask")
        got = getattr(batch, f"{part}_ratings")[mask].tolist()
        users = batch.user_idx[:, None].expand_as(items)[mask].tolist()
        assert got == [rating[(u, i)] for u, i in zip(users, items[mask].tolist(),
                                                      strict=True)]
    sup, qry = _task_pairs(batch, "support"), _task_pairs(batch, "query")
    assert sup <= rows and qry <= rows
    assert not sup & qry
    k = batch.support_mask.sum(1)
    assert set(k.tolist()) <= set(sizes)
    n_q = batch.query_mask.sum(1)
    assert bool(((n_q >= 1) & (n_q <= q)).all())
    # a user has a task when it has more rows than any K, none with fewer than the least K,
    # and at most one
    counts = hist.groupby("user_idx").size()
    have = set(batch.user_idx.tolist())
    assert set(counts.index[counts > max(sizes)]) <= have <= set(counts.index[counts > min(sizes)])
    assert len(set(batch.user_idx.tolist())) == len(batch.user_idx)
    if mode == "temporal":   # no query row before a support row of the same task
        ts = dict(zip(zip(hist["user_idx"], hist["item_idx"], strict=True), hist["timestamp"],
                      strict=True))
        for t in range(len(batch.user_idx)):
            u = int(batch.user_idx[t])
            s_ts = [ts[(u, int(i))] for i in batch.support_items[t][batch.support_mask[t]]]
            q_ts = [ts[(u, int(i))] for i in batch.query_items[t][batch.query_mask[t]]]
            assert max(s_ts) <= min(q_ts)


@SETTINGS
@given(hist=histories(min_users=4), seed=st.integers(0, 2**31 - 1))
def test_random_draws_differ_between_seeds(hist: pd.DataFrame, seed: int) -> None:
    # a user with 6 rows has 6!/(1!*...) distinct (support, query) orders for K=2, Q=4: over
    # 8 seeds, a draw that ignores its generator (e.g. time order) gives one task set only
    extra = pd.DataFrame({"user_idx": 99, "item_idx": range(6), "rating": 3,
                          "timestamp": range(6)})
    hist = pd.concat([hist, extra], ignore_index=True)
    seen = set()
    for s in range(seed, seed + 8):
        b = draw_tasks(hist, (2,), 4, "random", np.random.default_rng(s))
        seen.add((frozenset(_task_pairs(b, "support")), frozenset(_task_pairs(b, "query"))))
    assert len(seen) > 1
    t = draw_tasks(hist, (2,), 4, "temporal", np.random.default_rng(seed))
    assert _task_pairs(t, "support") == _task_pairs(
        draw_tasks(hist, (2,), 4, "temporal", np.random.default_rng(seed + 1)), "support")


@st.composite
def interactions(draw: st.DrawFn) -> pd.DataFrame:
    """Integer-coded interactions with distinct (user, item), users spread over time."""
    n_users = draw(st.integers(8, 20))
    n_items = draw(st.integers(4, 12))
    rows = []
    for u in range(n_users):
        start = draw(st.integers(0, 100))
        items = draw(st.lists(st.integers(0, n_items - 1), min_size=2, max_size=n_items,
                              unique=True))
        for i in items:
            rows.append((u, i, float(draw(st.integers(1, 5))), start + draw(st.integers(0, 60))))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).astype(
        {"user_id": np.int64, "item_id": np.int64, "timestamp": np.int64})


@SETTINGS
@given(df=interactions(), draw_mode=st.sampled_from(["random", "temporal"]),
       seed=st.integers(0, 1000))
def test_temporal_tasks_never_query_before_support_or_leak_the_test_period(
        df: pd.DataFrame, draw_mode: str, seed: int) -> None:
    p = EpisodesParams(split_fractions=(0.5, 0.25, 0.25), support_sizes=(1, 2), query_size=3,
                       train_draw=draw_mode, train_draws=2, seed=seed)
    split = temporal(df, p)
    tasks, test_start = split.tasks, split.info["test_start"]
    early = tasks[tasks["split"].astype(str).isin(["train", "val"])]
    assert (early["timestamp"] < test_start).all()
    assert (split.history["timestamp"] < test_start).all()
    keys = ["split", "scenario", "k", "draw", "user_id"]
    tasks = tasks.assign(split=tasks["split"].astype(str), scenario=tasks["scenario"].astype(str),
                         role=tasks["role"].astype(str))
    sup = tasks[tasks["role"] == "support"].groupby(keys, observed=True)["timestamp"].max()
    qry = tasks[tasks["role"] == "query"].groupby(keys, observed=True)["timestamp"].min()
    both = pd.concat([sup.rename("s"), qry.rename("q")], axis=1).dropna()
    assert len(both) == len(sup) == len(qry)       # every task has both roles
    ordered = both[~both.index.get_level_values("split").isin(["train"])
                   | (draw_mode == "temporal")]
    assert (ordered["s"] <= ordered["q"]).all()
    # support and query of a task never share an item
    pairs = tasks.groupby([*keys, "item_id"], observed=True)["role"].nunique()
    assert (pairs == 1).all()


@SETTINGS
@given(ids=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=20, unique=True),
       known=st.data())
def test_ids_round_trip_through_their_codes(ids: list[str], known: st.DataObject) -> None:
    table = pd.DataFrame({"user_id": pd.array(ids, dtype="string")})
    fit_ids = known.draw(st.lists(st.sampled_from(ids), unique=True, min_size=1))
    vocab = fit_entity_vocab(table, "user_id", {}, pd.Series(fit_ids, dtype="string"))
    enc = encode_entity(table, "user_id", vocab)
    codes = enc.id_code.numpy()
    assert enc.ids == ids
    assert enc.n_ids == len(set(fit_ids)) + 1
    for i, code in zip(ids, codes, strict=True):   # known ids: their vocabulary slot; others 0
        assert (vocab["ids"][code - 1] == i) if i in fit_ids else code == 0
    assert list(enc.index_of(pd.Series(ids[::-1], dtype="string"))) == list(
        range(len(ids)))[::-1]


@st.composite
def ranking_tasks(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidates, relevant) (T, N) with at least one relevant candidate per task."""
    t, n = draw(st.integers(1, 6)), draw(st.integers(2, 25))
    cand = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n),
                                      min_size=t, max_size=t)))
    rel = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n),
                                     min_size=t, max_size=t))) & cand
    first = cand.float().argmax(1)
    cand[torch.arange(t), first] = True
    rel[torch.arange(t), first] = True
    return cand, rel


@SETTINGS
@given(tasks=ranking_tasks(), k=st.integers(1, 30), value=st.floats(-5, 5))
def test_a_constant_predictor_scores_the_random_ranking_expectation(
        tasks: tuple[torch.Tensor, torch.Tensor], k: int, value: float) -> None:
    cand, rel = tasks
    m = catalogue_metrics(torch.full(cand.shape, value), cand, rel, k=k)
    for t in range(cand.shape[0]):
        n, r = int(cand[t].sum()), int(rel[t].sum())
        kk = min(k, n)
        disc = [1.0 / math.log2(i + 2) for i in range(kk)]
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(r, k)))
        assert float(m.recall[t]) == pytest.approx(kk / n, abs=1e-5)
        assert float(m.ndcg[t]) == pytest.approx(r / n * sum(disc) / idcg, abs=1e-5)
        miss = math.comb(n - r, kk) / math.comb(n, kk)
        assert float(m.hit_rate[t]) == pytest.approx(1.0 - miss, abs=1e-5)


@SETTINGS
@given(tasks=ranking_tasks(), k=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_permuting_items_changes_no_metric(tasks: tuple[torch.Tensor, torch.Tensor], k: int,
                                           seed: int) -> None:
    cand, rel = tasks
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, cand.shape, generator=gen).float()   # ties included
    perm = torch.randperm(cand.shape[1], generator=gen)
    a = catalogue_metrics(scores, cand, rel, k=k)
    b = catalogue_metrics(scores[:, perm], cand[:, perm], rel[:, perm], k=k)
    for name in ("recall", "ndcg", "hit_rate"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-6)
    assert ((a.ndcg >= 0) & (a.ndcg <= 1 + 1e-6)).all()


@SETTINGS
@given(n=st.integers(2, 20), q=st.integers(1, 6), s=st.integers(1, 6), data=st.data())
def test_catalogue_targets_drop_the_support_and_keep_rated_query_items(
        n: int, q: int, s: int, data: st.DataObject) -> None:
    items = st.lists(st.integers(0, n - 1), min_size=1, max_size=min(s, n), unique=True)
    sup = data.draw(items)
    qry = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=min(q, n), unique=True))
    ratings = data.draw(st.lists(st.integers(1, 5), min_size=len(qry), max_size=len(qry)))
    cand, rel = catalogue_targets(torch.tensor([sup]), torch.ones(1, len(sup), dtype=torch.bool),
                                  torch.tensor([qry]), torch.tensor([ratings]).float(),
                                  torch.ones(1, len(qry), dtype=torch.bool), n, threshold=4.0)
    assert set(torch.nonzero(~cand[0]).flatten().tolist()) == set(sup)
    want = {i for i, r in zip(qry, ratings, strict=True) if r >= 4} - set(sup)
    assert set(torch.nonzero(rel[0]).flatten().tolist()) == want


def test_an_unknown_draw_mode_is_refused_with_the_valid_ones() -> None:
    hist = pd.DataFrame({"user_idx": [0, 0], "item_idx": [0, 1], "rating": [3, 4],
                         "timestamp": [0, 1]})
    with pytest.raises(ValueError, match=r"draw must be one of \('temporal', 'random'\), "
                                         r"got 'shuffle'"):
        draw_tasks(hist, (1,), 1, "shuffle", np.random.default_rng(0))


def test_sort_rows_equals_a_stable_multi_key_sort_across_packed_words() -> None:
    """Keys wider than one int64 word (41 + 31 + 2 bits) are sorted word by word; each pass
    must be stable, or rows tied on the leading word lose the order of the later keys."""
    from metarec.data.protocols.common import sort_rows

    rng = np.random.default_rng(0)
    n = 5_000
    df = pd.DataFrame({"a": rng.choice([0, 2**40], n), "b": rng.integers(0, 2**30, n),
                       "c": rng.integers(0, 3, n), "row": np.arange(n)})
    df.loc[: n // 2, "b"] = rng.integers(0, 4, n // 2 + 1)      # ties on (a, b) and (a, b, c)
    got = sort_rows(df, ["a", "b", "c"])["row"].to_numpy()
    want = df.sort_values(["a", "b", "c"], kind="stable")["row"].to_numpy()
    np.testing.assert_array_equal(got, want)
