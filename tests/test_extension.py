"""Adding an algorithm is one class: registered, it is parsed, trained, checkpointed and
evaluated without any other file knowing its name (the ARCHITECTURE.md example)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from metarec import algorithms
from metarec.config import ModelParams, TrainParams, bounded
from metarec.meta.checkpoint import load_model
from metarec.meta.gradient import MetaAlgorithm
from metarec.params import parse
from metarec.stages import evaluate, train


@dataclass(frozen=True)
class AnilParams:
    inner_lr: float = bounded(0.1, 0.0)


class ANIL(MetaAlgorithm):
    name = "anil_test"
    Params = AnilParams

    @classmethod
    def config_from(cls, model: ModelParams, train: TrainParams, data: Any = None) -> dict:
        return {**super().config_from(model, train, data), "adapt": "head",
                "inner_lr": cls.params_of(train).inner_lr}


@pytest.fixture()
def registered():
    algorithms.register(ANIL)
    yield ANIL
    algorithms._REGISTRY.pop(ANIL.name)


@pytest.mark.slow
def test_a_registered_algorithm_runs_through_train_and_evaluate(registered, synthetic_project,
                                                                tmp_path) -> None:
    params = parse({"train": {"algorithms": ["anil_test"], "anil_test": {"inner_lr": 0.2}}})
    assert params.train.sections["anil_test"] == AnilParams(inner_lr=0.2)
    root, base = synthetic_project["root"], synthetic_project["params"]
    run = replace(base.train, algorithms=("anil_test",), baselines=("most_popular",),
                  seeds=(0, 1), sections={**params.train.sections})
    metrics = train.run(base.model, run, root / "episodes", tmp_path / "models",
                        tmp_path / "train.json")
    assert "anil_test" in metrics["seeds"]["seed0"]
    from metarec.data.tasks import load_episodes

    loaded = load_model(tmp_path / "models/seed0/anil_test.pt", load_episodes(root / "episodes"))
    assert loaded.algorithm.adapt_names == ["out.weight", "out.bias", "rank_out.weight",
                                            "rank_out.bias"]
    assert loaded.algorithm.inner_lr == 0.2
    result = evaluate.run(base.evaluate, root / "episodes", tmp_path / "models",
                          tmp_path / "eval.json", tmp_path / "report")
    assert {r["model"] for r in result["results"]} >= {"anil_test", "anil_test-ens"}
    assert any(c["model"] == "anil_test" for c in result["comparisons"])
