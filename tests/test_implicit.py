"""Implicit feedback end to end: a play-count log (counts up to 10^4) through ingest, validate,
episodes, train and evaluate, ranking metrics only; and a run that cannot train fails clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from metarec.cli import app
from metarec.params import parse
from metarec.stages import episodes, evaluate, ingest, train, validate

pytestmark = pytest.mark.slow  # trains implicit-label projects (~10 s): not in make test-fast

ROOT = Path(__file__).resolve().parents[1]


def play_counts(path: Path, users: int = 240, items: int = 60, seed: int = 0) -> Path:
    """Users with two tastes (even / odd items), heavy-tailed counts, one play day each."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        taste = u % 2
        n = int(rng.integers(8, 20))
        liked = rng.choice(np.arange(taste, items, 2), size=n, replace=False)
        counts = np.minimum(rng.pareto(1.2, n) * 30 + 1, 10_000).astype(int)
        counts[0] = 10_000
        for j, (i, c) in enumerate(zip(liked, counts, strict=True)):
            rows.append((f"u{u}", f"i{i}", int(c), 86_400 * (u + j)))
    pd.DataFrame(rows, columns=["user", "item", "plays", "ts"]).to_csv(path, index=False)
    return path


def implicit_params(log: Path) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ingest"].update(source="table", table={
        **raw["ingest"]["table"], "interactions": str(log), "user_col": "user",
        "item_col": "item", "rating_col": "plays", "label": "count", "timestamp_col": "ts"})
    raw["validate"]["min_timestamp"] = "1969-12-01"
    raw["episodes"].update(support_sizes=[3, 5], train_draws=2)
    raw["train"].update(algorithms=["maml"], baselines=["item_mean", "most_popular", "ease",
                                                        "pretrain"],
                        seeds=[0], max_steps=40, val_every=20, draws=["temporal"])
    raw["evaluate"].update(bootstrap_samples=50, inner_steps_grid=[0, 2], curve_k=3)
    return raw


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("implicit")
    raw = implicit_params(play_counts(root / "plays.csv"))
    p = parse(raw)
    ingest.run(p.ingest, root / "canonical")
    validate.run(p.validate, root / "canonical", root / "validated", root / "q", root / "r")
    episodes.run(p.episodes, root / "validated", root / "episodes", root / "data.json")
    train.run(p.model, p.train, root / "episodes", root / "models", root / "train.json")
    result = evaluate.run(p.evaluate, root / "episodes", root / "models", root / "eval.json",
                          root / "report", root / "selection.json")
    return {"root": root, "result": result, "raw": raw}


def test_counts_are_log1p_treated_and_every_play_is_relevant(project: dict) -> None:
    vocab = json.loads((project["root"] / "episodes/vocab.json").read_text())
    rating = vocab["rating"]
    assert rating["kind"] == "count" and rating["transform"] == "log1p"
    assert rating["max"] == pytest.approx(np.log1p(10_000), rel=1e-6)
    assert rating["raw_max"] == 10_000.0
    assert 0.0 < rating["relevant"] < 1e-30                  # any interaction is relevant
    assert np.float32(rating["relevant"]) > 0
    tasks = pd.read_parquet(project["root"] / "episodes/episodes.parquet")
    assert tasks["rating"].max() == pytest.approx(np.log1p(10_000), rel=1e-6)


def test_training_is_finite_and_evaluation_reports_ranking_only(project: dict) -> None:
    metrics = json.loads((project["root"] / "train.json").read_text())["seeds"]["seed0"]
    for name in ("maml", "pretrain"):
        assert np.isfinite(metrics[name]["initial_val_loss"])
        assert metrics[name]["best_val_loss"] <= metrics[name]["initial_val_loss"]
    rows = project["result"]["results"]
    assert rows and all(r["mae"] is None and r["rmse"] is None for r in rows)
    ndcg = [r["ndcg@20"] for r in rows if r["scenario"] == "user_cold"]
    assert ndcg and all(0.0 <= v <= 1.0 for v in ndcg)
    assert project["result"]["best_baseline"]["accuracy"] is None
    assert {c["metric"] for c in project["result"]["comparisons"]} <= {
        "ndcg@1", "ndcg@3", "ndcg@5", "ndcg@20", "recall@20"}
    # the planted two-taste structure is learned: far better than a random ranking (~0.15)
    maml = [r["ndcg@20"] for r in rows if r["model"] == "maml" and r["scenario"] == "user_cold"]
    assert min(maml) > 0.3, maml


def test_a_threshold_above_every_binary_label_is_refused_at_load(tmp_path: Path) -> None:
    raw = implicit_params(tmp_path / "x.csv")
    raw["ingest"]["table"]["label"] = "binary"
    raw["episodes"]["relevance_threshold"] = 4.0
    with pytest.raises(Exception, match=r"relevance_threshold: 4.0 marks nothing relevant"):
        parse(raw)


def test_evaluate_fails_saying_why_when_nothing_is_relevant(project: dict,
                                                            tmp_path: Path) -> None:
    from metarec.errors import DataError

    root = project["root"]
    ep = tmp_path / "episodes"
    ep.mkdir()
    for f in (root / "episodes").iterdir():
        (ep / f.name).write_bytes(f.read_bytes())
    tasks = pd.read_parquet(ep / "episodes.parquet")
    test = tasks["split"] == "test"
    tasks.loc[test, "rating"] = np.float32(0.0)                # no play at all: nothing relevant
    tasks.to_parquet(ep / "episodes.parquet", index=False)
    p = parse(project["raw"])
    with pytest.raises(DataError, match=r"no test task has a query item rated >= .*"
                                        r"lower episodes.relevance_threshold"):
        evaluate.run(p.evaluate, ep, root / "models", tmp_path / "e.json",
                     tmp_path / "r")


def test_a_diverging_run_fails_the_train_stage_and_writes_no_checkpoint(
        project: dict, tmp_path: Path) -> None:
    """The divergence plant: outer_lr 1e38 with SGD on tiny data, through the CLI."""
    raw = project["raw"]
    raw = {**raw, "train": {**raw["train"], "outer_optimizer": "sgd", "outer_lr": 1e38,
                            "baselines": ["pretrain"], "algorithms": ["fomaml"]}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "models"
    result = CliRunner().invoke(app, ["train", "--params", str(params), "--episodes",
                                      str(project["root"] / "episodes"), "--out", str(out),
                                      "--metrics", str(tmp_path / "train.json")])
    assert result.exit_code == 2, result.output
    assert "diverged" in result.output and "(seed 0)" in result.output
    assert "pretrain" in result.output or "fomaml" in result.output
    assert not out.exists() or not list(out.rglob("*.pt"))     # no checkpoint at all
    assert not (tmp_path / "train.json").exists()
