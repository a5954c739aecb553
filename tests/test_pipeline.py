"""Smoke test: the real pipeline, from the real params.yaml, shrunk to a small synthetic log.

ingest -> validate -> episodes -> train -> evaluate run through the same stage functions the
CLI and dvc.yaml call; assertions are on the files each stage hands to the next.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metarec.data.tasks import SCENARIOS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipeline(synthetic_project: dict) -> dict:
    return {"tmp": synthetic_project["root"], "data": synthetic_project["data"],
            "eval": synthetic_project["eval"], "params": synthetic_project["params"]}


def test_every_model_scenario_k_and_seed_is_evaluated(pipeline: dict) -> None:
    result = json.loads((pipeline["tmp"] / "eval.json").read_text())
    assert result["dataset"] == "synthetic" and result["protocol"] == "temporal"
    models = {r["model"] for r in result["results"] if r["seed"] >= 0}
    params = pipeline["params"]
    assert models == {*params.train.baselines, *params.train.algorithms}
    ensembles = {r["model"] for r in result["results"] if r["seed"] == -1}
    assert ensembles == {"maml-ens", "reptile-ens", "meta-ens"}
    present = {s for s, per_k in pipeline["data"]["tasks"]["test"].items()}
    # the synthetic catalogue has no new items in the test period: no item-cold tasks
    assert {"warm", "user_cold"} <= present <= set(SCENARIOS)
    keys = {(r["model"], r["scenario"], r["k"], r["seed"]) for r in result["results"]}
    for scenario in present:
        for k in pipeline["data"]["tasks"]["test"][scenario]:
            for model in models:
                for seed in (0, 1):
                    assert (model, scenario, int(k), seed) in keys
            for model in ensembles:
                assert (model, scenario, int(k), -1) in keys
    row = result["results"][0]
    for metric in ("mae", "rmse", "ndcg@1", "ndcg@3", "ndcg@5", "recall@20", "ndcg@20",
                   "hit@20"):
        assert metric in row


NON_META = {"global_mean", "item_mean", "user_mean", "item_user_bias", "biased_mf", "pretrain",
            "finetune", "most_popular", "itemknn", "ease"}


def test_comparisons_against_the_best_baseline(pipeline: dict) -> None:
    result = pipeline["eval"]
    base = result["best_baseline"]
    assert set(base) == {"accuracy", "ranking"} and set(base.values()) <= NON_META
    # each family's baseline is the validation winner of that family (majority over seeds)
    for seed in ("0", "1"):
        chosen = result["choices"][seed]["best_baseline"]
        assert chosen["accuracy"]["name"] == min(chosen["accuracy"]["val_mae"],
                                                 key=chosen["accuracy"]["val_mae"].get)
        assert chosen["ranking"]["name"] == max(chosen["ranking"]["val_ndcg@20"],
                                                key=chosen["ranking"]["val_ndcg@20"].get)
    comps = result["comparisons"]
    assert comps
    for c in comps:
        fam = "accuracy" if c["metric"] in ("mae", "rmse") else "ranking"
        assert c["baseline"] == base[fam] and c["model"] != c["baseline"]
        assert c["ci_low"] <= c["diff"] + 1e-9 and c["diff"] <= c["ci_high"] + 1e-9
    # diff = model - baseline, seed-averaged per user: check one against the result rows
    c = next(c for c in comps if c["metric"] == "mae" and c["scenario"] == "user_cold")
    rows = [r for r in result["results"] if r["scenario"] == "user_cold" and r["k"] == c["k"]]
    mean = {m: sum(r["mae"] for r in rows if r["model"] == m) / 2
            for m in (c["model"], c["baseline"])}
    assert c["diff"] == pytest.approx(mean[c["model"]] - mean[c["baseline"]], abs=1e-4)


def test_ensembles_average_the_seeds_and_meta_ens_is_chosen_on_validation(
        pipeline: dict) -> None:
    result = pipeline["eval"]
    chosen = result["choices"]["ensembles"]
    score = chosen["val_score"]        # validation catalogue nDCG of each seed-ensemble
    assert set(score) == {"maml-ens", "reptile-ens"}
    assert chosen["meta-ens"] == sorted(score, key=lambda n: (-score[n], n))[:2]
    # a seed-ensemble's MAE is not worse than the mean of its members' MAEs (convexity)
    for row in (r for r in result["results"] if r["model"] == "maml-ens"):
        members = [r["mae"] for r in result["results"] if r["model"] == "maml"
                   and r["scenario"] == row["scenario"] and r["k"] == row["k"]]
        assert row["mae"] <= sum(members) / len(members) + 1e-6


def test_choices_come_from_validation_and_curves_are_written(pipeline: dict) -> None:
    result, tmp = pipeline["eval"], pipeline["tmp"]
    ck = f"val_ndcg@{pipeline['params'].evaluate.catalogue_k}"
    for seed in ("0", "1"):
        steps = result["choices"][seed]["inner_steps"]
        assert set(steps) == {"finetune", "maml", "reptile"}
        for name, v in steps.items():      # the best of the grid on validation, not any
            assert set(v["val_mse"]) == set(v[ck]) == {"1", "5"}, name
            assert v["val_mse"][str(v["steps"])] == min(v["val_mse"].values()), name
            assert v[ck][str(v["rank_steps"])] == max(v[ck].values()), name
    assert {r["steps"] for r in result["steps_curve"]} == set(range(11))
    for name in ("mae_vs_k.png", "ndcg_at_20_vs_k.png", "mae_vs_steps.png",
                 "ndcg_at_20_vs_steps.png"):
        assert (tmp / "eval" / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp / "eval" / "report.md").read_text()
    assert "paired bootstrap" in report
    assert f"**{result['best_baseline']['accuracy']}** for MAE/RMSE" in report
    assert f"**{result['best_baseline']['ranking']}** for ranking metrics" in report


def test_readme_results_are_generated_from_the_evaluation(pipeline: dict, tmp_path) -> None:
    from metarec.readme import END, START, results_markdown, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold numbers\n{END}\noutro\n")
    update_readme(readme, results_markdown(pipeline["eval"]))
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("intro") and text.endswith("outro\n")
    row = next(r for r in pipeline["eval"]["results"] if r["model"] == "maml"
               and r["scenario"] == "user_cold" and r["k"] == 3)
    both = [r["mae"] for r in pipeline["eval"]["results"] if r["model"] == "maml"
            and r["scenario"] == "user_cold" and r["k"] == 3]
    assert row and f"{sum(both) / 2:.3f}" in text


def test_the_selection_records_what_the_batch_must_serve(pipeline: dict) -> None:
    """metrics/selection.json: the served model, each model's best seed on validation and
    every adaptive model's chosen test-time steps per seed (what score applies)."""
    result = pipeline["eval"]
    selection = json.loads((pipeline["tmp"] / "selection.json").read_text())
    assert selection == result["serving"]
    for seed in ("0", "1"):
        for name, rec in result["choices"][seed]["inner_steps"].items():
            assert selection["inner_steps"][seed][name] == {"rate": rec["steps"],
                                                            "rank": rec["rank_steps"]}
    assert set(selection["seeds"]) == {*pipeline["params"].train.baselines,
                                       *pipeline["params"].train.algorithms}
    assert set(selection["seeds"].values()) <= {0, 1}
