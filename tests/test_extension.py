"""Adding an algorithm is one module and its params section.

In a temporary copy of the project, a toy meta-learner (ANIL: adapt only the output layers)
and a toy baseline (item popularity among the training users' first interactions) are added
as two new files under ``src/metarec/algorithms/`` and named in params.yaml; nothing else is
edited. The pipeline's check names exactly what dvc.yaml lacks and the command that mends it,
the flows' sync mends it, and train and evaluate fit, checkpoint, tune and compare both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

META = '''"""``anil_toy``: ANIL, the inner loop adapts only the output layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metarec.algorithms import register
from metarec.config import ModelParams, TrainParams, bounded
from metarec.train.entries import LearnerAlgorithm


@dataclass(frozen=True)
class AnilParams:
    inner_lr: float = bounded(0.1, 0.0)    # its own knob: train.anil_toy.inner_lr


@register
class ANIL(LearnerAlgorithm):
    name = "anil_toy"
    Params = AnilParams

    @classmethod
    def config_from(cls, model: ModelParams, train: TrainParams, data: Any = None) -> dict:
        return {**super().config_from(model, train, data), "adapt": "head",
                "inner_lr": cls.params_of(train).inner_lr}
'''

BASELINE = '''"""``popular_toy``: items ranked by how many training users interacted with them."""

from __future__ import annotations

from typing import Any

import torch

from metarec.algorithms import register
from metarec.models.base import Capabilities, FitContext
from metarec.models.statistical import RankingBaseline, interaction_matrix


@register
class PopularToy(RankingBaseline):
    name = "popular_toy"
    capabilities = Capabilities(seeded=False)

    def __init__(self, counts: torch.Tensor) -> None:
        super().__init__()
        self.counts = counts.float()                  # (n_ids,) by item code

    @classmethod
    def fit(cls, ctx: FitContext) -> PopularToy:
        counts = interaction_matrix(ctx.data).to_dense().sum(0)
        return cls(counts).bind(ctx.data)

    def rank(self, state: Any) -> torch.Tensor:
        return self.counts[self.codes].expand(len(state), -1)     # (T, N)

    def extra_state(self) -> dict[str, Any]:
        return {"counts": self.counts}
'''


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd / "src"), "OMP_NUM_THREADS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GX_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_a_new_algorithm_is_one_module_and_its_params_section(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "src/metarec/algorithms/anil_toy.py").write_text(META)
    (repo / "src/metarec/algorithms/popular_toy.py").write_text(BASELINE)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"].update(source="synthetic")
    params["ingest"]["synthetic"].update(users=300, items=80, interactions=6000, days=60)
    params["episodes"]["support_sizes"] = [3, 5]
    params["train"].update(algorithms=["maml", "anil_toy"], max_steps=6, val_every=3,
                           seeds=[0, 1], baselines=["most_popular", "popular_toy"],
                           anil_toy={"inner_lr": 0.2})
    params["evaluate"].update(bootstrap_samples=50, inner_steps_grid=[1, 3], curve_k=3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    metarec = str(BIN / "metarec")

    # the check says what dvc.yaml lacks and which command mends it; a stage refuses to run
    stale = _run([metarec, "dag"], repo, check=False)
    assert stale.returncode == 1
    for stage in ("train", "evaluate", "score", "backtest"):
        for module in ("anil_toy", "popular_toy"):
            assert (f"{stage}: missing code dependency src/metarec/algorithms/{module}.py"
                    in stale.stderr + stale.stdout)
    assert "metarec dag --write" in stale.stderr + stale.stdout
    assert "train.anil_toy" in stale.stderr + stale.stdout      # its params, per key
    _run([sys.executable, "-c", "from pathlib import Path; from metarec import pipeline; "
          "pipeline.sync(Path('dvc.yaml'))"], repo)             # what make run and flows do
    assert "src/metarec/algorithms/anil_toy.py" in (repo / "dvc.yaml").read_text()
    _run([metarec, "dag"], repo)

    for stage in ("ingest", "validate", "episodes", "train", "evaluate"):
        _run([metarec, stage], repo)
    fits = json.loads((repo / "metrics/train.json").read_text())["seeds"]["seed1"]
    assert {"anil_toy", "popular_toy"} <= set(fits)
    result = json.loads((repo / "metrics/eval.json").read_text())
    models = {r["model"] for r in result["results"]}
    assert {"anil_toy", "popular_toy", "anil_toy-ens"} <= models
    assert "anil_toy" in result["choices"]["0"]["inner_steps"]       # tunable: searched
    assert "popular_toy" in result["choices"]["0"]["best_baseline"]["ranking"]["val_ndcg@20"]
    steps = {r["model"] for r in result["steps_curve"]}
    assert "anil_toy" in steps and "popular_toy" not in steps
