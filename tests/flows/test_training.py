"""The training flow on a small project: completes, publishes artifacts, retries only what is
transient (an OSError once: retried and completed; a metarec error: failed at once)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.schemas.objects import StateType

from metarec import dag
from metarec.orchestration import load_flow
from metarec.orchestration import stages as stages_mod

from .flow_helpers import artifacts, flow_run, run_logs, task_runs, write_params

STAGES = dag.until("evaluate")


def test_training_completes_with_its_artifacts(trained: UUID, project: Path) -> None:
    assert flow_run(trained).state_type == StateType.COMPLETED
    runs = task_runs(trained)
    assert all(runs[s].state_type == StateType.COMPLETED for s in STAGES)
    assert (project / "dvc.lock").is_file() and (project / "models/seed0/maml.pt").is_file()
    found = artifacts(trained)
    assert {"validation-summary", "evaluation-report", "evaluation-report-link",
            "evaluation-headline", "curve-ndcg-at-20-vs-k"} <= set(found)
    table = found["validation-summary"]
    assert table.type == "table"
    rows = json.loads(table.data)
    summary = json.loads((project / "reports/validation/summary.json").read_text())
    assert len(rows) == len(summary["expectations"]) and {"table", "success"} <= set(rows[0])
    report = found["evaluation-report"]
    assert report.type == "markdown"
    on_disk = (project / "reports/eval/report.md").read_text()
    assert report.data.startswith(on_disk[:on_disk.index("## The models")])  # the answer
    assert report.data.count("](data:image/png;base64,") == on_disk.count("![")  # inlined
    headline = json.loads(found["evaluation-headline"].data)
    assert headline and {"scenario", "meta-learner", "baseline", "CI"} <= set(headline[0])
    curve = found["curve-ndcg-at-20-vs-k"]       # a Markdown image: the UI prints no URI
    assert curve.type == "markdown" and curve.data.startswith("![ndcg@20 against K")
    assert curve.data.count("](data:image/png;base64,") == 1
    link = found["evaluation-report-link"]
    assert "reports/eval/index.html" in link.data  # stored as Markdown: [text](file://...)


def test_the_run_log_has_one_whole_record_per_event(trained: UUID) -> None:
    """What the stages print reaches the run log as whole records at their level: progress
    lines with the time left, no line cut by rich, no 'INFO:metarec...' inside a message.
    Planted: the stages' rich handler kept under Prefect failed this (timestamps and levels
    inside the messages)."""
    from metarec.orchestration.uicheck import log_problems

    messages = run_logs(trained)
    stage_lines = [m for m in messages if m.split(":")[0] in STAGES]
    assert any(m.startswith("train: metarec.progress: train maml seed 0: 10/10")
               and m.endswith(" s left") for m in stage_lines), stage_lines
    assert log_problems(messages) == []


def test_a_transient_oserror_is_retried(trained: UUID, project: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_popen = subprocess.Popen
    failed: list[str] = []

    def flaky(cmd: list[str], *args: object, **kwargs: object) -> object:
        if cmd[-1] == "validate" and not failed:
            failed.append("validate")
            raise OSError("injected: resource temporarily unavailable")
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(stages_mod.subprocess, "Popen", flaky)
    state = load_flow("training", project)(project_dir=str(project), return_state=True)
    assert failed == ["validate"]
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["validate"].run_count == 2 and runs["episodes"].run_count == 1


def test_a_metarec_error_fails_the_flow_without_retries(trained: UUID, project: Path,
                                                        tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(project, broken)
    write_params(broken, {"episodes": {"protocol": "predefined",
                                       "predefined_path": str(tmp_path / "no-such-split.csv")}})
    state = load_flow("training", broken)(project_dir=str(broken), return_state=True)
    assert state.is_failed()
    assert "episodes.predefined_path names a file or folder that does not exist" in \
        state.message
    run_id = state.state_details.flow_run_id
    assert flow_run(run_id).state_type == StateType.FAILED
    runs = task_runs(run_id)           # the pipeline's sync fails before any stage runs
    sync = [r for name, r in runs.items() if name.startswith("sync-pipeline-")]
    assert len(sync) == 1 and sync[0].state_type == StateType.FAILED      # (named sync-
    assert sync[0].run_count == 1 and "ingest" not in runs                # pipeline-<key>)
    assert "evaluation-report" not in artifacts(run_id)
    # a metarec error inside a stage (exit 2) is permanent: one attempt, no retries
    (tmp_path / "no-such-split.csv").write_text("user_id,split\n")
    state = load_flow("training", broken)(project_dir=str(broken), return_state=True)
    assert state.is_failed()
    runs = task_runs(state.state_details.flow_run_id)
    assert runs["episodes"].state_type == StateType.COMPLETED      # an empty split: no tasks
    assert runs["train"].state_type == StateType.FAILED            # nothing to train on: exit 2
    assert runs["train"].run_count == 1 and "exit 2" in str(runs["train"].state.message)
    assert "evaluate" not in runs


def test_bad_params_fail_the_flow_before_any_stage_runs(trained: UUID, project: Path,
                                                       tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(project, broken)
    write_params(broken, {"train": {"algorithms": ["no-such-algorithm"]}})
    state = load_flow("training", broken)(project_dir=str(broken), return_state=True)
    assert state.is_failed()
    assert "train.algorithms: unknown 'no-such-algorithm' (valid: encoder, fomaml" in state.message
    assert task_runs(state.state_details.flow_run_id) == {}


def test_stage_failures_are_classified_by_the_stage_exit_code() -> None:
    out = "ERROR: failed to reproduce 'train': failed to run: metarec train, exited with {}"
    assert stages_mod.StageFailed("train", 255, out.format(2)).permanent
    assert not stages_mod.StageFailed("train", 255, out.format(-9)).permanent
    assert not stages_mod.StageFailed("train", 255, "ERROR: Unable to acquire lock").permanent
