"""The evaluate stage follows its params, chooses the served model on validation only, and adds
a K = all row where support sizes vary per user."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_episodes import write_validated

from metarec.config import EpisodesParams, EvaluateParams, TrainParams
from metarec.eval import compare as compare_module
from metarec.eval.scoring import catalogue_metric
from metarec.readme import results_markdown
from metarec.stages import episodes, evaluate, train


@pytest.fixture(scope="module")
def knobs(synthetic_project: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every evaluate knob set to a non-default value, on the session's trained models."""
    root = synthetic_project["root"]
    params = replace(synthetic_project["params"].evaluate, catalogue_k=10,
                     query_ndcg_ks=(1, 5), bootstrap_confidence=0.8, bootstrap_samples=60,
                     ensemble_size=1, inner_steps_grid=(0, 2), curve_k=10)
    out = tmp_path_factory.mktemp("knobs")
    calls: list[tuple] = []            # every paired bootstrap the comparisons ran: inputs, CI
    real = compare_module.paired_bootstrap

    def spy(model, baseline, n_samples, seed=0, confidence=0.95, **kw):
        res = real(model, baseline, n_samples, seed=seed, confidence=confidence, **kw)
        calls.append((model.clone(), baseline.clone(), n_samples, seed, confidence, res))
        return res

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compare_module, "paired_bootstrap", spy)
        result = evaluate.run(params, root / "episodes", root / "models", out / "eval.json",
                              out / "report", out / "selection.json")
    return {"result": result, "out": out, "params": params, "bootstrap_calls": calls}


def test_metric_names_follow_the_cut_offs(knobs: dict) -> None:
    result, out = knobs["result"], knobs["out"]
    row = result["results"][0]
    assert {"ndcg@1", "ndcg@5", "ndcg@10", "recall@10", "hit@10"} <= set(row)
    assert not {"ndcg@3", "ndcg@20", "recall@20"} & set(row)
    assert {c["metric"] for c in result["comparisons"]} >= {"ndcg@1", "ndcg@5", "ndcg@10"}
    report = (out / "report" / "report.md").read_text()
    assert "ndcg@10" in report and "ndcg@20" not in report
    assert "80% CI" in report and "95% CI" not in report
    assert sorted(p.name for p in (out / "report" / "plots").iterdir()) == [
        "mae_vs_k.png", "mae_vs_steps.png", "ndcg_at_10_vs_k.png", "ndcg_at_10_vs_steps.png"]
    readme = results_markdown(json.loads((out / "eval.json").read_text()))
    assert "**ndcg@10**" in readme and "80% CI" in readme and "ndcg@20" not in readme


def test_search_grids_curves_and_ensembles_follow_their_knobs(knobs: dict) -> None:
    result, params = knobs["result"], knobs["params"]
    steps = result["choices"]["0"]["inner_steps"]
    assert steps and all(set(v["val_mse"]) == {"0", "2"} for v in steps.values())
    assert "meta-ens" not in {r["model"] for r in result["results"]}   # ensemble_size 1
    assert result["bootstrap"] == {"samples": 60, "confidence": 0.8}
    ks = {r["k"] for r in result["results"] if r["scenario"] == "user_cold"}
    curve_k = min(ks, key=lambda k: abs(k - params.curve_k))
    report = (knobs["out"] / "report" / "report.md").read_text()
    assert curve_k == 10 and "user-cold, K=10," in report and "meta-ens averages" not in report
    for c in result["comparisons"]:
        assert c["ci_low"] <= c["diff"] <= c["ci_high"]


def test_the_confidence_knob_sets_the_width_of_every_interval(knobs: dict) -> None:
    """evaluate.bootstrap_confidence 0.8 reaches every comparison: each interval is the 80%
    percentile interval of its resamples, inside the 95% one of the same resamples and
    narrower in total (a stage that ignored the knob would report the 95% intervals)."""
    calls, result = knobs["bootstrap_calls"], knobs["result"]
    assert calls and {c[4] for c in calls} == {0.8} and {c[2] for c in calls} == {60}
    narrower = 0.0
    for model, baseline, n, seed, _, at80 in calls:
        at95 = compare_module.paired_bootstrap(model, baseline, n, seed=seed, confidence=0.95)
        assert at95.low <= at80.low <= at80.diff <= at80.high <= at95.high
        narrower += (at95.high - at95.low) - (at80.high - at80.low)
    assert narrower > 0
    reported = {(round(c[5].low, 6), round(c[5].high, 6)) for c in calls}
    assert {(c["ci_low"], c["ci_high"]) for c in result["comparisons"]} <= reported


@pytest.mark.slow
def test_auto_serves_the_best_validation_model_and_ignores_test_tasks(
        synthetic_project: dict, tmp_path: Path) -> None:
    root, params = synthetic_project["root"], synthetic_project["params"].evaluate
    result = synthetic_project["eval"]
    serving = result["serving"]
    ck = catalogue_metric(params)
    means = {}
    for seed in ("0", "1"):
        chosen = result["choices"][seed]
        assert chosen["best_baseline"]["ranking"]["name"] in serving[f"val_{ck}"]
    for name, value in serving[f"val_{ck}"].items():
        means[name] = value
    assert serving["model"] == max(means, key=means.get)
    # scramble every test rating: the served model (a validation choice) stays
    ep = tmp_path / "episodes"
    ep.mkdir()
    for f in (root / "episodes").iterdir():
        (ep / f.name).write_bytes(f.read_bytes())
    tasks = pd.read_parquet(ep / "episodes.parquet")
    test = tasks["split"] == "test"
    tasks.loc[test, "rating"] = (6.0 - tasks.loc[test, "rating"]).astype("float32")
    tasks.to_parquet(ep / "episodes.parquet", index=False)
    again = evaluate.run(params, ep, root / "models", tmp_path / "eval.json", tmp_path / "r",
                         tmp_path / "selection.json")
    assert again["serving"] == serving
    assert json.loads((tmp_path / "selection.json").read_text()) == serving
    assert again["results"] != result["results"]          # the test metrics did change


def test_variable_support_sizes_get_a_k_all_row(tmp_path: Path) -> None:
    """A predefined split whose test users have support sizes 1 and 2: per-K rows plus one
    row over every test user (K = all)."""
    src = write_validated(tmp_path / "validated")
    rows = [("u1", "train", "i1", "support"), ("u1", "train", "i2", "query"),
            ("u2", "train", "i1", "support"), ("u2", "train", "i5", "query"),
            ("u3", "val", "i1", "support"), ("u3", "val", "i3", "query"),
            ("u4", "test", "i2", "support"), ("u4", "test", "i3", "query"),
            ("u1", "test", "i1", "support"), ("u1", "test", "i2", "support"),
            ("u1", "test", "i3", "query")]
    split = pd.DataFrame(rows, columns=["user_id", "split", "item_id", "role"])
    split["scenario"] = split["split"].map({"train": "train", "val": "user_cold",
                                            "test": "user_cold"})
    split.to_csv(tmp_path / "split.csv", index=False)
    episodes.run(EpisodesParams(protocol="predefined", predefined_path=str(tmp_path /
                                                                          "split.csv")),
                 src, tmp_path / "episodes", tmp_path / "data.json")
    train.run(synthetic_model(), TrainParams(algorithms=(), seeds=(0,), baselines=(
        "global_mean", "item_mean", "most_popular")), tmp_path / "episodes",
        tmp_path / "models", tmp_path / "train.json")
    result = evaluate.run(EvaluateParams(bootstrap_samples=20), tmp_path / "episodes",
                          tmp_path / "models", tmp_path / "eval.json", tmp_path / "report")
    rows = [r for r in result["results"] if r["model"] == "item_mean"]
    by_k = {r["k"]: r["users"] for r in rows}
    assert by_k == {1: 1, 2: 1, "all": 2}
    assert "| user_cold | all | item_mean |" in (tmp_path / "report/appendix.md").read_text()


def synthetic_model():
    from metarec.config import ModelParams

    return ModelParams()


def test_warm_candidates_never_hold_an_item_the_user_had_before_the_query(synthetic_project
                                                                          ) -> None:
    """evaluate.exclude_history: a warm task's seen items are exactly its user's history,
    all of it dated before the task's query; the cold-start scenarios have none."""
    from metarec.data.tasks import load_episodes
    from metarec.eval.groups import TestGroup
    from metarec.eval.scoring import seen_items

    root, params = synthetic_project["root"], synthetic_project["params"].evaluate
    data = load_episodes(root / "episodes")
    batch = TestGroup("warm", 3).batch(data)
    seen = seen_items(data, batch, params)
    assert seen is not None and seen.any(1).all()
    tasks = data.select("test", "warm", 3)
    for t, task in enumerate(batch.task_id.tolist()):
        rows = tasks[tasks["task_id"] == task]
        user = int(rows["user_idx"].iloc[0])
        mine = data.history[data.history["user_idx"] == user]
        assert set(torch.nonzero(seen[t]).flatten().tolist()) == set(mine["item_idx"])
        query = rows[rows["role"] == "query"]
        assert mine["timestamp"].max() < query["timestamp"].min()
    assert seen_items(data, TestGroup("user_cold", 3).batch(data), params) is None
    off = replace(params, exclude_history=False)
    assert seen_items(data, batch, off) is None


def test_a_seen_item_is_no_candidate_and_no_relevant_item() -> None:
    """Ranked first but seen before: it is left out, so the relevant item ranked second
    scores as if first."""
    from metarec.data.tasks import TaskBatch
    from metarec.metrics import batch_catalogue_metrics

    batch = TaskBatch(task_id=torch.tensor([0]), user_idx=torch.tensor([0]),
                      support_items=torch.tensor([[4]]), support_ratings=torch.tensor([[5.0]]),
                      support_mask=torch.tensor([[True]]), query_items=torch.tensor([[1]]),
                      query_ratings=torch.tensor([[5.0]]), query_mask=torch.tensor([[True]]))
    scores = torch.tensor([[9.0, 8.0, 1.0, 0.5, 10.0]])     # item 0 seen, item 1 relevant
    seen = torch.tensor([[True, False, False, False, False]])
    plain = batch_catalogue_metrics(scores, batch, 4.0, 2)
    hidden = batch_catalogue_metrics(scores, batch, 4.0, 2, seen=seen)
    assert float(hidden.ndcg[0]) == 1.0 and float(plain.ndcg[0]) < 1.0
