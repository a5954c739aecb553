"""Shared fixtures: a small synthetic project run through the real stages once per session."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from metarec.config import Params, SyntheticSource
from metarec.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def small_params(users: int = 400, items: int = 120, interactions: int = 12_000,
                 days: int = 365) -> Params:
    """The real params.yaml, shrunk: a synthetic log, two K values, a few training steps."""
    p = load_params(ROOT / "params.yaml")
    return replace(
        p,
        ingest=replace(p.ingest, source="synthetic", synthetic=SyntheticSource(
            users=users, items=items, interactions=interactions, days=days, seed=1)),
        episodes=replace(p.episodes, support_sizes=(3, 10)),
        # one training process: xdist already runs the tests on both cores (the workers' bytes
        # are checked in test_train_workers.py)
        train=replace(p.train, algorithms=("maml", "reptile"), max_steps=20, val_every=10,
                      seeds=(0, 1), workers=1),
        evaluate=replace(p.evaluate, bootstrap_samples=200, inner_steps_grid=(1, 5),
                         curve_k=3, workers=1),
    )


def build_project(root: Path, params: Params, *, evaluate: bool = True) -> dict:
    """ingest -> validate -> episodes -> train (-> evaluate) into ``root``; returns paths."""
    from metarec.stages import episodes, ingest, train, validate
    from metarec.stages import evaluate as evaluate_stage

    ingest.run(params.ingest, root / "canonical")
    validate.run(params.validate, root / "canonical", root / "validated", root / "quarantine",
                 root / "report")
    data = episodes.run(params.episodes, root / "validated", root / "episodes",
                        root / "data.json", root / "report/summary.json")
    train.run(params.model, params.train, root / "episodes", root / "models",
              root / "train.json")
    out = {"root": root, "data": data, "params": params}
    if evaluate:
        out["eval"] = evaluate_stage.run(params.evaluate, root / "episodes", root / "models",
                                         root / "eval.json", root / "eval",
                                         root / "selection.json")
    return out


@pytest.fixture(scope="session")
def synthetic_project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_project(tmp_path_factory.mktemp("project"), small_params())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Prefect-server tests (tests/flows, test_ui) are slow and share one xdist worker, so
    that each session starts one server and trains one flows project."""
    for item in items:
        if "flows" in item.path.parts or item.path.name == "test_ui.py":
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("prefect"))


if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one intra-op thread each, not two threads per worker
    import torch

    torch.set_num_threads(1)
