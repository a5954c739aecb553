"""The evaluate stage's jobs (each model's validation choices, each group of test tasks, the
inner-steps curve) spread over worker processes write the same bytes as one process."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import build_project, small_params

from metarec.eval.ensembles import ENSEMBLE_SEED
from metarec.stages import evaluate

pytestmark = pytest.mark.slow


def _files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*"))
            if f.is_file()}


def test_two_evaluate_workers_write_the_same_bytes_as_one_process(
        tmp_path: Path) -> None:
    """eval.json (but its seconds), selection.json, the report and the plots: equal between
    one process and two workers, on two seeds with meta-learners, baselines and the
    seed-ensembles."""
    p = small_params(users=160, items=50, interactions=4_000)
    p = replace(p, train=replace(p.train, algorithms=("maml", "ridge"), max_steps=10),
                evaluate=replace(p.evaluate, bootstrap_samples=50, ensemble_size=2))
    build_project(tmp_path, p, evaluate=False)
    outs = {}
    for w in (1, 2):
        ev = replace(p.evaluate, workers=w, threads=1)
        evaluate.run(ev, tmp_path / "episodes", tmp_path / "models", tmp_path / f"eval{w}.json",
                     tmp_path / f"report{w}", tmp_path / f"selection{w}.json")
        metrics = json.loads((tmp_path / f"eval{w}.json").read_text())
        assert metrics.pop("seconds") >= 0          # the one value that may differ
        outs[w] = (metrics, (tmp_path / f"selection{w}.json").read_bytes(),
                   _files(tmp_path / f"report{w}"))
    one, two = outs[1], outs[2]
    assert one[0] == two[0] and one[1] == two[1]
    assert one[2].keys() == two[2].keys() and one[2]
    for name in one[2]:
        assert one[2][name] == two[2][name], name
    models = {row["model"] for row in one[0]["results"]}
    assert {"maml", "ridge", "item_mean"} <= models
    assert any(row["seed"] == ENSEMBLE_SEED for row in one[0]["results"])
