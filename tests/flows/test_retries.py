"""Failures classified once, counted through a flow: a deterministic failure of a stage
(a bug's ValueError, an unknown encoding's LookupError, a RuntimeError such as validate's GX
disagreement, a full disk) exits 2 and its task runs once; a transient one (an I/O error)
is retried ``prefect.retries`` times. The failures are planted at ingest's first write with
``METAREC_CRASH_AT=ingest:mid-write=<fault>`` in a real ``dvc repro -s ingest``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prefect import flow

from metarec.config import PrefectParams
from metarec.orchestration.stages import run_stage, sync_pipeline, with_retries

from .flow_helpers import make_project, task_runs

RETRIES = 2


@flow(name="metarec-retry-probe")
def probe(project_dir: str) -> str:
    """The flows' own stage task with their retry policy, on one stage."""
    sync_pipeline(project_dir)
    stage = with_retries(run_stage, PrefectParams(retries=RETRIES, retry_backoff_s=0.0))
    return stage("ingest", project_dir)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("retries") / "project")


@pytest.mark.parametrize("fault, attempts, words", [
    ("ValueError", 1, "internal error ValueError at"),
    ("LookupError", 1, "internal error LookupError at"),
    ("RuntimeError", 1, "internal error RuntimeError at"),
    ("ENOSPC", 1, "disk full writing"),
    ("EIO", 1 + RETRIES, "Input/output error"),
])
def test_each_failure_is_retried_only_when_a_retry_can_help(small: Path, tmp_path: Path,
                                                            monkeypatch, fault: str,
                                                            attempts: int, words: str) -> None:
    project = tmp_path / "project"
    shutil.copytree(small, project)
    monkeypatch.setenv("METAREC_CRASH_AT", f"ingest:mid-write={fault}")
    state = probe(project_dir=str(project), return_state=True)
    assert state.is_failed()
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["ingest"].run_count == attempts, (fault, runs["ingest"].run_count)
    message = " ".join(str(runs["ingest"].state.message).split())
    assert ("possibly transient" in message) is (attempts > 1), message
    with pytest.raises(Exception) as caught:
        state.result()
    assert words in " ".join(str(caught.value).split())
    assert not (project / "data/canonical").exists()      # nothing half-written in place
