"""The nightly flow on the small project: completes, publishes its artifacts, and its sharded
batch is byte-identical to the single-process ``score.run`` with either task runner."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.schemas.objects import StateType

from metarec.orchestration import load_flow
from metarec.orchestration.sharding import split_chunks
from metarec.params import load_params
from metarec.stages import score

from .flow_helpers import AS_OF, artifacts, flow_run, subflow_runs, task_runs

FILES = ("recommendations.parquet", "manifest.json")


@pytest.fixture(scope="module")
def single(trained: UUID, project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same day scored by the score stage in one process (the reference bytes)."""
    out = tmp_path_factory.mktemp("single")
    p = load_params(project / "params.yaml")
    return score.run(p.score, p.validate, p.ingest,
                     str(project / "data/validated"), str(project / "models"), out, AS_OF,
                     str(project / "metrics/selection.json"))


def run_nightly(project: Path, runner: str) -> tuple[UUID, Path]:
    state = load_flow("nightly", project)(as_of=AS_OF, project_dir=str(project),
                                          task_runner=runner, return_state=True)
    assert state.is_completed(), state.message
    return state.state_details.flow_run_id, Path(state.result()["batch"])


def test_nightly_completes_with_artifacts_and_identical_bytes(project: Path,
                                                              single: Path) -> None:
    started = time.perf_counter()
    run_id, batch = run_nightly(project, "thread")
    elapsed = time.perf_counter() - started
    assert flow_run(run_id).state_type == StateType.COMPLETED
    assert batch == project / "data/recommendations" / AS_OF
    manifest = json.loads((batch / "manifest.json").read_text())
    assert manifest["users"] > 3 * 4  # more than one chunk per shard to interleave
    for name in FILES:
        assert (batch / name).read_bytes() == (single / name).read_bytes(), name
    sub = subflow_runs(run_id)
    assert [r.name for r in sub] and all(r.state_type == StateType.COMPLETED for r in sub)
    shards = sorted(n for n in task_runs(sub[0].id) if n.startswith("chunks-"))
    assert len(shards) == 3, shards  # prefect.shards in the test params
    found = artifacts(run_id)
    table = json.loads(found["nightly-batch"].data)
    assert table[0]["users_scored"] == manifest["users"] and table[0]["batch"] == str(batch)
    assert 0.0 < table[0]["seconds"] < elapsed   # the scoring time, measured inside the run
    examples = found["nightly-examples"].data
    assert examples.count("## user ") == 3 and examples.count("| 5 |") == 3
    assert not list((project / "data/recommendations").glob(".*"))  # no shard leftovers


def test_dask_runner_gives_the_same_bytes(project: Path, single: Path) -> None:
    # the second nightly run for the same date: still one batch, byte-identical
    _, batch = run_nightly(project, "dask")
    for name in FILES:
        assert (batch / name).read_bytes() == (single / name).read_bytes(), name
    assert sorted(p.name for p in (project / "data/recommendations").iterdir()
                  if not p.name.startswith(".")) == [AS_OF]


def test_shards_cover_every_chunk_once() -> None:
    assert split_chunks(0, 4) == [(0, 0)]
    assert split_chunks(2, 4) == [(0, 1), (1, 2)]
    assert split_chunks(10, 3) == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError):
        split_chunks(5, 0)


def test_the_batch_is_a_dvc_output_and_dvc_status_is_clean(project: Path) -> None:
    """The night of score.as_of is the score stage's own output, committed by the flow."""
    import subprocess
    import sys

    dvc = str(Path(sys.executable).parent / "dvc")
    lock = (project / "dvc.lock").read_text()
    assert f"data/recommendations/{AS_OF}" in lock
    # the score stage and everything upstream of it (the flows never run the backtest)
    status = subprocess.run([dvc, "status", "--json", "score"], cwd=project,
                            capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}


def test_scheduled_runs_replay_consecutive_nights_and_dvc_add_them(project: Path) -> None:
    """A scheduled run passes no date: with the replay clock each one scores the night after
    the latest batch, and that batch becomes a DVC-tracked file of its own."""
    days = []
    for _ in range(2):
        state = load_flow("nightly", project)(project_dir=str(project), return_state=True)
        assert state.is_completed(), state.message
        days.append(Path(state.result()["batch"]).name)
        assert state.result()["dvc"].startswith("dvc add")
    first = dt.date.fromisoformat(AS_OF) + dt.timedelta(days=1)
    assert days == [first.isoformat(), (first + dt.timedelta(days=1)).isoformat()]
    for day in days:
        assert (project / "data/recommendations" / f"{day}.dvc").is_file()


def test_a_missing_landing_day_fails_the_run_with_an_artifact(project: Path,
                                                               tmp_path: Path) -> None:
    from .flow_helpers import write_params

    broken = tmp_path / "p"
    import shutil

    shutil.copytree(project, broken)
    (broken / "landing").mkdir()
    write_params(broken, {"score": {"landing_dir": str(broken / "landing")}})
    state = load_flow("nightly", broken)(as_of="1998-10-05", project_dir=str(broken),
                                         return_state=True)
    assert state.is_failed()
    found = artifacts(state.state_details.flow_run_id)
    assert "1998-10-05" in found["missing-landing-day"].data
    assert not (broken / "data/recommendations/1998-10-05").exists()


def test_serve_registers_the_nightly_and_retraining_deployments(project: Path,
                                                                monkeypatch) -> None:
    """`metarec serve` (make serve) hands both deployments, on the params' crons, to
    prefect.serve; the call would block, so it is captured."""
    import prefect

    from metarec.orchestration import local

    captured = []
    monkeypatch.setattr(prefect, "serve", lambda *deps, **kw: captured.extend(deps))
    monkeypatch.setattr(local, "use_local_server", lambda p, d: local.Server(
        "http://127.0.0.1:1/api", d, None, started=False))
    monkeypatch.chdir(project)
    local.serve_project(project)
    params = load_params(project / "params.yaml").prefect
    by_name = {d.name: d for d in captured}
    assert set(by_name) == {"metarec-nightly", "metarec-retrain"}
    assert [s.schedule.cron for s in by_name["metarec-nightly"].schedules] == [
        params.nightly_cron]
    assert [s.schedule.cron for s in by_name["metarec-retrain"].schedules] == [
        params.retrain_cron]
    assert by_name["metarec-nightly"].parameters == {"project_dir": str(project)}


def test_two_nightly_runs_at_once_score_each_night_once(project: Path, tmp_path: Path) -> None:
    """Two scheduled runs started together (a slow night overlapping the next schedule):
    the project lock is taken before the night is chosen, so the second waits
    (prefect.lock_wait_s) and scores the night after the first's, never the same one."""
    import shutil
    import threading

    from metarec.orchestration import nightly as plan

    from .flow_helpers import write_params

    copy = tmp_path / "p"
    shutil.copytree(project, copy)
    write_params(copy, {"prefect": {"lock_wait_s": 600.0}})
    params = load_params(copy / "params.yaml")
    batches = copy / "data/recommendations"
    first = plan.next_night(params, batches)
    before = {p.name for p in batches.iterdir() if not p.name.startswith(".")}
    flow = load_flow("nightly", copy)
    states: list = []

    def run() -> None:
        states.append(flow(project_dir=str(copy), return_state=True))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert len(states) == 2 and all(s.is_completed() for s in states), \
        [s.message for s in states]
    nights = sorted(Path(s.result()["batch"]).name for s in states)
    second = (dt.date.fromisoformat(first) + dt.timedelta(days=1)).isoformat()
    assert nights == [first, second]
    after = {p.name for p in batches.iterdir() if not p.name.startswith(".")}
    assert after - before == {first, second, f"{first}.dvc", f"{second}.dvc"}
    assert not [p.name for p in batches.iterdir() if p.name.startswith(".")]
