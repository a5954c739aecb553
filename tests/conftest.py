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


# Tests that share one xdist worker, by path prefix: the group's session fixtures are built
# once, and its tests run in file order (the flows tests build on the project that earlier
# tests trained and scored).
GROUPS = {
    "tests/flows/": "prefect",              # one Prefect server, one flows project
    "tests/test_ui.py": "prefect",
    "tests/test_train_fit.py": "test_train_fit",           # its trained fixtures
    "tests/test_evaluate.py": "test_evaluate",             # the session project's worker
    "tests/test_evaluate_cache.py": "test_evaluate",
    "tests/test_reliability.py": "reliability",            # one project for the crash points
    "tests/test_train_workers.py": "test_train_workers",   # one tiny project per session
}


def group_of(nodeid: str) -> str | None:
    return next((g for prefix, g in GROUPS.items() if nodeid.startswith(prefix)), None)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``make test``'s scheduler: each group of :data:`GROUPS` on one worker, every other test
    on its own. Not ``--dist loadgroup``: under pytest 9 its group suffix never reaches the
    test ids (xdist 3.8 writes ``item._nodeid``, which pytest 9 no longer reads), so the groups
    were silently split over both workers and tests that build on an earlier one failed by
    chance (CI of stop 40)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid

    return ByGroup(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Prefect-server tests (tests/flows, test_ui) are slow: ``make test-fast`` skips
    them."""
    for item in items:
        if group_of(item.nodeid) == "prefect":
            item.add_marker(pytest.mark.slow)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one intra-op thread each, not two threads per worker
    import torch

    torch.set_num_threads(1)
