"""Tasks per (user, platform): platform_cold tasks, their cross-platform history (never a
leak of the query), and their two evaluation groups (with and without that history)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from metarec.config import EvaluateParams, IngestParams, SyntheticSource, ValidateParams
from metarec.data.protocols.platforms import platform_tasks
from metarec.data.tasks import load_episodes, to_batch
from metarec.eval.compare import compare_variants
from metarec.params import load_params
from metarec.stages import episodes, evaluate, ingest, validate

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
    groups = evaluate.test_groups(data)
    names = {s for s, _ in groups}
    assert {"platform_cold", "platform_cold+cross", "platform_cold@p0",
            "platform_cold+cross@p2"} <= names
    assert ("platform_cold", 3) in groups and ("platform_cold+cross", 3) in groups
    assert evaluate.cross_pairs(groups) == [("platform_cold", "platform_cold+cross"),
                                   *[(f"platform_cold@p{i}", f"platform_cold+cross@p{i}")
                                     for i in range(3)]]
    plain = evaluate.group_batch(data, "platform_cold", 3)
    cross = evaluate.group_batch(data, "platform_cold+cross", 3)
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
    p0 = evaluate.group_batch(data, "platform_cold@p0", "all")
    assert 0 < len(p0) < len(evaluate.group_batch(data, "platform_cold", 1)) * 2


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
