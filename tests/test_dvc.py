"""The DVC pipeline: a full `dvc repro` from scratch, a second one that runs nothing, and a
params change (score.top_k) that reruns only the stage that reads it.

Runs the real dvc.yaml in a throwaway git + DVC repo, on a small synthetic log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "GX_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z_]+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("dvcrepo")
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source="synthetic")
    params["ingest"]["synthetic"].update(users=300, items=80, interactions=6000, days=60)
    params["episodes"]["support_sizes"] = [3, 5]
    params["train"].update(algorithms=["maml"], max_steps=6, val_every=3, seeds=[0])
    params["evaluate"].update(bootstrap_samples=50, inner_steps_grid=[1, 3], curve_k=3)
    params["score"].update(as_of="1998-02-20", model="maml")
    # the synthetic log trains up to about 1998-02-19 and ends 1998-04-01
    params["backtest"].update(from_date="1998-02-20", to_date="1998-03-20", every_days=7)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.email", "t@t"], repo)
    _run(["git", "config", "user.name", "t"], repo)
    _run([str(BIN / "dvc"), "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "init"], repo)
    return repo


@pytest.mark.slow
def test_repro_runs_everything_then_nothing_then_only_what_changed(repo: Path) -> None:
    first = _ran(_run([str(BIN / "dvc"), "repro"], repo))
    assert first[:5] == ["ingest", "validate", "episodes", "train", "evaluate"]
    assert set(first[5:]) == {"score", "backtest"}  # both follow evaluate; DVC picks the order
    assert (repo / "data/recommendations/1998-02-20/recommendations.parquet").exists()
    assert (repo / "metrics/eval.json").exists()
    assert json.loads((repo / "metrics/backtest.json").read_text())["window"]["nights"] == 5

    assert _ran(_run([str(BIN / "dvc"), "repro"], repo)) == []

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["score"]["top_k"] = 7
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert sorted(_ran(_run([str(BIN / "dvc"), "repro"], repo))) == ["backtest", "score"]
    import pandas as pd

    recs = pd.read_parquet(repo / "data/recommendations/1998-02-20/recommendations.parquet")
    assert recs.groupby("user_id").size().max() == 7


def _merge(base: dict, upd: dict) -> None:
    for key, value in upd.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


@pytest.mark.slow
@pytest.mark.parametrize("config", ["implicit", "catalogue_k"])
def test_repro_evaluate_succeeds_whatever_the_labels_and_cut_off(
        tmp_path: Path, config: str) -> None:
    """The outputs dvc.yaml declares do not depend on params: implicit counts (no MAE
    curves) and another cut-off (other plot names) both end with every output in place."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if config == "implicit":     # the shipped implicit-count config, shrunk
        _merge(params, yaml.safe_load((ROOT / "benchmarks/params/implicit.yaml").read_text()))
    else:
        params["evaluate"]["catalogue_k"] = 10
        params["train"]["val_ndcg_k"] = 10
    params["ingest"]["source"] = "synthetic"
    params["ingest"]["synthetic"].update(users=300, items=80, interactions=6000, days=60)
    params["episodes"]["support_sizes"] = [3, 5]
    params["train"].update(algorithms=["maml"], max_steps=6, val_every=3, seeds=[0],
                           baselines=["most_popular", "ease", "pretrain", "finetune"])
    params["evaluate"].update(bootstrap_samples=50, inner_steps_grid=[1, 3], curve_k=3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([str(BIN / "dvc"), "init", "--no-scm", "-q"], repo)
    _run([str(BIN / "metarec"), "dag", "--write"], repo)
    ran = _ran(_run([str(BIN / "dvc"), "repro", "evaluate"], repo))
    assert ran == ["ingest", "validate", "episodes", "train", "evaluate"]
    plots = sorted(p.name for p in (repo / "reports/eval/plots").iterdir())
    if config == "implicit":
        result = json.loads((repo / "metrics/eval.json").read_text())
        assert all(r["mae"] is None for r in result["results"])
        assert plots == ["ndcg_at_20_vs_k.png", "ndcg_at_20_vs_steps.png"]
    else:
        assert plots == ["mae_vs_k.png", "mae_vs_steps.png", "ndcg_at_10_vs_k.png",
                         "ndcg_at_10_vs_steps.png"]
    assert _ran(_run([str(BIN / "dvc"), "repro", "evaluate"], repo)) == []
