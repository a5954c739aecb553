"""Tasks per (user, platform): platform_cold tasks, their cross-platform history (never a
leak of the query), and their two evaluation groups (with and without that history)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from meta_fixtures import fit_algorithm

from metarec import algorithms
from metarec.config import (
    EvaluateParams,
    IngestParams,
    ModelParams,
    ObjectiveParams,
    SyntheticSource,
    TrainParams,
    ValidateParams,
)
from metarec.data.protocols.platforms import platform_tasks
from metarec.data.tasks import TaskBatch, cat_batches, load_episodes, to_batch
from metarec.eval.compare import compare_variants
from metarec.eval.groups import TestGroup, cross_pairs, groups_of
from metarec.meta.features import FeatureStore
from metarec.params import load_params
from metarec.stages import episodes, ingest, validate
from metarec.train.data import EpisodeDataModule

ROOT = Path(__file__).resolve().parents[1]


def _log() -> pd.DataFrame:
    rows = [  # user, item, timestamp, platform
        (1, 10, 1, 0), (1, 11, 2, 0), (1, 12, 3, 0),                 # home platform 0
        (1, 20, 4, 1), (1, 11, 5, 1), (1, 21, 6, 1), (1, 22, 7, 1),  # new on platform 1
        (1, 13, 6, 0),                                               # platform 0 again
        (2, 10, 1, 0), (2, 11, 2, 0), (2, 12, 3, 0),                 # one platform only
        (3, 10, 1, 0), (3, 20, 2, 1), (3, 21, 3, 1),                 # a meta-train user
    ]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "platform"])
    return df.assign(rating=np.float32(4.0)).astype({"user_id": np.int32,
                                                    "item_id": np.int32})


def _roles(tasks: pd.DataFrame, k: int) -> dict[str, list[int]]:
    t = tasks[tasks["k"] == k].sort_values(["timestamp", "item_id"])
    return {r: t.loc[t["role"] == r, "item_id"].tolist() for r in ("support", "query", "cross")}


def test_a_task_is_a_user_new_on_a_platform_with_its_earlier_history_elsewhere():
    p = replace(load_params(ROOT / "params.yaml").episodes, support_sizes=(1, 3),
                query_size=10, cross_max=20)
    tasks, too_few = platform_tasks(_log(), pd.Index([1, 2]), p)
    assert set(tasks["user_id"]) == {1}                # 2: one platform; 3: not a test user
    assert set(tasks["platform"]) == {1} and set(tasks["draw"]) == {1}
    assert set(tasks["scenario"].astype(str)) == {"platform_cold"}
    assert set(tasks["split"].astype(str)) == {"test"}
    # K=1: support 20; query 11, 21, 22 on platform 1; elsewhere before the query began (t=5):
    # 10 and 12, never 11 (a query item, seen on platform 0) and never 13 (t=6, later)
    assert _roles(tasks, 1) == {"support": [20], "query": [11, 21, 22], "cross": [10, 12]}
    # K=3: the query starts at t=7; 11 is support now, so its platform-0 row may be history
    assert _roles(tasks, 3) == {"support": [20, 11, 21], "query": [22],
                                "cross": [10, 11, 12, 13]}
    assert too_few == {"platform_cold_k1": 0, "platform_cold_k3": 0}
    capped, _ = platform_tasks(_log(), pd.Index([1]), replace(p, cross_max=1))
    assert _roles(capped, 1)["cross"] == [12] and _roles(capped, 3)["cross"] == [13]
    none, _ = platform_tasks(_log(), pd.Index([1]), replace(p, cross_max=0))
    assert (none["role"].astype(str) != "cross").all()


def test_a_pair_with_too_few_interactions_on_the_platform_is_counted():
    p = replace(load_params(ROOT / "params.yaml").episodes, support_sizes=(4,), query_size=10)
    tasks, too_few = platform_tasks(_log(), pd.Index([1, 2]), p)
    assert tasks.empty or not (tasks["k"] == 4).any()
    assert too_few == {"platform_cold_k4": 1}          # user 1 on platform 1: 4 rows, no query


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("platforms")
    p = load_params(ROOT / "params.yaml")
    spec = SyntheticSource(users=500, items=80, interactions=12000, seed=3, choice=1.0,
                           platforms=3, platform_share=0.6)
    ingest.run(IngestParams(source="synthetic", synthetic=spec), root / "canonical")
    validate.run(ValidateParams(), root / "canonical",
                 root / "validated", root / "quarantine", root / "report")
    episodes.run(replace(p.episodes, support_sizes=(1, 3), cross_max=5), root / "validated",
                 root / "episodes", root / "data.json")
    return root


def test_cross_history_never_leaks_the_query_and_comes_from_other_platforms(project):
    log = pd.read_parquet(project / "validated" / "interactions.parquet")
    data = load_episodes(project / "episodes")
    cold = data.select("test", "platform_cold").astype({"role": "string"})
    assert cold["task_id"].nunique() > 50
    train_users = set(data.select("train")["user_id"])
    assert not set(cold["user_id"]) & train_users
    where = log.set_index(["user_id", "item_id", "timestamp"])["platform"]
    at = pd.MultiIndex.from_frame(cold[["user_id", "item_id", "timestamp"]])
    row_platform = where.reindex(at).to_numpy()
    assert pd.notna(row_platform).all()                 # every task row is a logged row
    on_task = row_platform == cold["platform"].to_numpy()
    role = cold["role"].to_numpy()
    assert on_task[role != "cross"].all() and not on_task[role == "cross"].any()
    for _, task in cold.groupby("task_id"):
        q = task[task["role"] == "query"]
        x = task[task["role"] == "cross"]
        assert (task["role"] == "support").sum() == task["k"].iloc[0]
        assert len(x) <= 5
        assert x.empty or x["timestamp"].max() < q["timestamp"].min()
        assert not set(x["item_id"]) & set(q["item_id"])
    # the user had used another platform before this one
    first = log.groupby("user_id")["timestamp"].min()
    first_here = log.groupby(["user_id", "platform"])["timestamp"].min()
    one = cold.drop_duplicates("task_id")
    assert (first_here.loc[list(zip(one["user_id"], one["platform"], strict=True))].to_numpy()
            > first.loc[one["user_id"]].to_numpy()).all()
    # other tasks carry no platform; the summary names the platforms
    assert data.select("test", "user_cold")["platform"].isna().all()


def test_evaluation_scores_each_platform_cold_task_with_and_without_its_history(project):
    data = load_episodes(project / "episodes")
    groups = groups_of(data)
    names = {g.label for g in groups}
    assert {"platform_cold", "platform_cold+cross", "platform_cold@p0",
            "platform_cold+cross@p2"} <= names
    assert {TestGroup("platform_cold", 3), TestGroup("platform_cold", 3, True)} <= set(groups)
    assert cross_pairs(groups) == [("platform_cold", "platform_cold+cross"),
                                   *[(f"platform_cold@p{i}", f"platform_cold+cross@p{i}")
                                     for i in range(3)]]
    plain = TestGroup("platform_cold", 3).batch(data)
    cross = TestGroup("platform_cold", 3, cross=True).batch(data)
    assert torch.equal(plain.task_id, cross.task_id)
    assert torch.equal(plain.query_items, cross.query_items)       # the same query
    tasks = data.select("test", "platform_cold", 3)
    n_cross = tasks[tasks["role"] == "cross"].groupby("task_id").size()
    extra = cross.support_mask.sum(1) - plain.support_mask.sum(1)
    assert (plain.support_mask.sum(1) == 3).all()
    assert extra.tolist() == n_cross.reindex(plain.task_id.numpy(), fill_value=0).tolist()
    assert extra.sum() > 0
    # to_batch never makes a cross row a query item
    assert torch.equal(to_batch(tasks).query_items, plain.query_items)
    p0 = TestGroup("platform_cold", None, platform="p0").batch(data)
    assert 0 < len(p0) < len(TestGroup("platform_cold", 1).batch(data)) * 2


def test_the_cross_platform_comparison_is_each_model_with_minus_without():
    ev = EvaluateParams(bootstrap_samples=200)
    base = torch.linspace(0.1, 0.5, 20)
    per_user = {("m", "platform_cold", 3): [{"ndcg@20": base}],
                ("m", "platform_cold+cross", 3): [{"ndcg@20": base + 0.1}],
                ("m", "user_cold", 3): [{"ndcg@20": base}]}
    rows = compare_variants(per_user, [("platform_cold", "platform_cold+cross")], "ndcg@20", ev)
    assert len(rows) == 1
    r = rows[0]
    assert (r["model"], r["without"], r["with"], r["k"], r["users"]) == (
        "m", "platform_cold", "platform_cold+cross", 3, 20)
    assert r["diff"] == pytest.approx(0.1, abs=1e-6)
    assert r["ci_low"] == pytest.approx(0.1, abs=1e-6) and r["ci_high"] == pytest.approx(0.1,
                                                                                        abs=1e-6)
    assert r["value_with"] - r["value_without"] == pytest.approx(0.1, abs=1e-6)


def test_a_cross_marked_batch_marks_exactly_the_other_platforms_rows(project):
    data = load_episodes(project / "episodes")
    tasks = data.select("test", "platform_cold", 3)
    batch = to_batch(tasks, cross=True)
    assert batch.support_cross is not None and to_batch(tasks).support_cross is None
    n_cross = tasks[tasks["role"] == "cross"].groupby("task_id").size().reindex(
        batch.task_id.numpy(), fill_value=0)
    assert batch.support_cross.sum(1).tolist() == n_cross.tolist()
    assert not (batch.support_cross & ~batch.support_mask).any()
    # the task's own support is never marked: the unmarked items are its K rows
    assert ((batch.support_mask & ~batch.support_cross).sum(1) == 3).all()
    part = batch.take([2, 0])
    assert torch.equal(part.support_cross, batch.support_cross[[2, 0], :part.support_cross
                                                               .shape[1]])
    assert batch.slice(1, 3).support_cross.shape[0] == 2


def test_joined_batches_pad_each_side_and_keep_the_marks(project):
    data = load_episodes(project / "episodes")
    val = data.select("val")
    plain = to_batch(val[val["task_id"].isin(sorted(val["task_id"].unique())[:4])])
    marked = to_batch(data.select("test", "platform_cold", 1), cross=True).take([0, 1, 2])
    both = cat_batches(plain, marked)
    assert len(both) == len(plain) + 3
    assert both.task_id.unique().numel() == len(both)
    s = max(plain.support_mask.shape[1], marked.support_mask.shape[1])
    assert both.support_items.shape == (len(both), s)
    assert not both.support_cross[:len(plain)].any()
    w = marked.support_cross.shape[1]
    assert torch.equal(both.support_cross[len(plain):, :w], marked.support_cross)
    assert torch.equal(both.query_items[len(plain):, :marked.query_items.shape[1]],
                       marked.query_items)
    assert both.support_mask.sum() == plain.support_mask.sum() + marked.support_mask.sum()


MODEL = ModelParams(interaction="dot", embedding_dim=8, hidden=(8,), adapt="user",
                    fold_in=True, warm_start="none")
TRAIN = TrainParams(max_steps=20, val_every=10, meta_batch=16, inner_steps=2, inner_lr=0.1,
                    outer_lr=0.05, patience=0, objective=ObjectiveParams(), draws=("random",))


def _adapted(algo, store, batch):
    fast = algo.adapt(algo.meta_params(), store.support(batch), create_graph=False)
    return algo.predict(fast, store.query(batch), "rank")


def test_the_learned_trust_weighs_the_other_platforms_support_items(project):
    data = load_episodes(project / "episodes")
    store = FeatureStore(data.users, data.items)
    torch.manual_seed(0)
    algo = algorithms.get("maml").create(data, MODEL, TRAIN)
    algo.use_catalogue(store)
    tasks = data.select("test", "platform_cold", 1)
    marked, alone = to_batch(tasks, cross=True), to_batch(tasks)
    assert marked.support_cross.any()
    unmarked = TaskBatch(**{**marked.__dict__, "support_cross": None})
    with torch.no_grad():
        algo.cross_trust.fill_(0.0)                 # weight 1: as the task's own items
    torch.testing.assert_close(_adapted(algo, store, marked), _adapted(algo, store, unmarked))
    with torch.no_grad():
        algo.cross_trust.fill_(-40.0)               # weight ~0: as if they were not there
    torch.testing.assert_close(_adapted(algo, store, marked), _adapted(algo, store, alone),
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_adapted(algo, store, unmarked), _adapted(algo, store, alone),
                              rtol=1e-3, atol=1e-3)


def test_meta_training_sees_marked_platform_tasks_and_moves_the_trust(project, tmp_path):
    data = load_episodes(project / "episodes")
    dm = EpisodeDataModule(data, 16, draw="random")
    dm.setup("fit")
    assert dm.cross_tasks is not None and dm.cross_tasks.support_cross.any()
    assert len(dm._epoch_tasks()) > len(dm.cross_tasks)
    fit = fit_algorithm("maml", data, MODEL, TRAIN, tmp_path, draw="random")
    assert fit.best_step > 0
    assert float(fit.learner.cross_trust.detach()) != 0.0, "no meta-gradient reached the trust"


def test_a_checkpoint_from_before_the_trust_loads_with_weight_one(project):
    data = load_episodes(project / "episodes")
    torch.manual_seed(0)
    algo = algorithms.get("maml").create(data, MODEL, TRAIN)
    with torch.no_grad():
        algo.cross_trust.fill_(-1.0)
    state = algo.state()
    old = {**state, "state_dict": {k: v for k, v in state["state_dict"].items()
                                   if k != "cross_trust"}}
    loaded = algorithms.get("maml").load(old, data).learner
    assert float(loaded.cross_trust.detach()) == 0.0          # 2 sigmoid(0) = 1
    kept = algorithms.get("maml").load(state, data).learner
    assert float(kept.cross_trust.detach()) == -1.0
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in old["state_dict"].items())


def test_validation_sees_the_validation_users_platform_tasks_with_their_marks(project):
    from metarec.data.tasks import validation_tasks

    data = load_episodes(project / "episodes")
    vcold = data.select("val", "platform_cold")
    assert vcold["task_id"].nunique() > 5
    assert not set(vcold["user_id"]) & set(data.select("train")["user_id"])
    summary = json.loads((project / "episodes" / "summary.json").read_text())
    assert (vcold["timestamp"] < summary["test_start"]).all()   # nothing from the test period
    val = validation_tasks(data)
    plain = data.select("val")
    assert len(val) == plain["task_id"].nunique()
    assert val.support_cross is not None
    n_cross = int((vcold["role"] == "cross").sum())
    assert int(val.support_cross.sum()) == n_cross > 0
    dm = EpisodeDataModule(data, 16, draw="random")
    dm.setup("fit")
    assert torch.equal(dm.val_tasks.support_cross, val.support_cross)
