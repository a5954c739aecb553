"""Helpers of the flow tests: the shrunk throwaway project and Prefect client queries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentTaskRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import Artifact, FlowRun, TaskRun
from prefect.client.schemas.sorting import LogSort

ROOT = Path(__file__).resolve().parents[2]
AS_OF = "1998-10-01"  # synthetic timeline starts 1998-01-01; users keep arriving all year

SHRINK: dict[str, dict[str, Any]] = {
    "ingest": {"source": "synthetic", "allow_download": False,
               "synthetic": {"users": 300, "items": 100, "interactions": 6000, "seed": 1}},
    "episodes": {"support_sizes": [3, 5]},
    "train": {"algorithms": ["maml", "ridge"], "max_steps": 10, "val_every": 5, "seeds": [0],
              "finetune": {"steps": [1], "lrs": [0.05]}, "accelerator": "cpu"},
    "evaluate": {"inner_steps_grid": [1, 3], "curve_k": 3, "bootstrap_samples": 50},
    "score": {"as_of": AS_OF, "chunk_users": 4},
    "prefect": {"retries": 2, "retry_backoff_s": 0.1, "shards": 3},
}


def write_params(project: Path, changes: dict[str, dict[str, Any]]) -> None:
    """Merge ``changes`` (section -> keys; nested mappings merged) into project/params.yaml."""

    def merge(base: dict[str, Any], upd: dict[str, Any]) -> None:
        for key, value in upd.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    merge(params, changes)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def make_project(dest: Path) -> Path:
    """A runnable copy of the pipeline definition under ``dest`` (no data yet)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", dest / "src", ignore=ignore)
    shutil.copytree(ROOT / "flows", dest / "flows", ignore=ignore)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, dest / name)
    write_params(dest, SHRINK)
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=dest, check=True)
    return dest


def flow_run(run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def task_runs(run_id: UUID) -> dict[str, TaskRun]:
    """Task runs of a flow run by name (``dvc-stage`` runs are named after their stage)."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {r.name: r for r in runs}


def artifacts(run_id: UUID) -> dict[str, Artifact]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return {a.key: a for a in found if a.key}


def subflow_runs(run_id: UUID) -> list[FlowRun]:
    """Flow runs started inside ``run_id`` (each is the child of one of its task runs)."""
    parents = [r.id for r in task_runs(run_id).values()]
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(any_=parents)))


def run_logs(run_id: UUID) -> list[str]:
    """Every log message of a flow run and its task runs, oldest first."""
    out: list[str] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                    limit=200, offset=len(out), sort=LogSort.TIMESTAMP_ASC)
            out += [log.message for log in page]
            if len(page) < 200:
                return out
