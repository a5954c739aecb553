"""The nightly flow on the small project: completes, publishes its artifacts, and its sharded
batch is byte-identical to the single-process ``score.run`` with either task runner."""

from __future__ import annotations

import json
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
    return score.run(load_params(project / "params.yaml").score,
                     str(project / "data/validated"), str(project / "models/seed0"), out, AS_OF,
                     str(project / "metrics/selection.json"))


def run_nightly(project: Path, runner: str) -> tuple[UUID, Path]:
    state = load_flow("nightly", project)(as_of=AS_OF, project_dir=str(project),
                                          task_runner=runner, return_state=True)
    assert state.is_completed(), state.message
    return state.state_details.flow_run_id, Path(state.result()["batch"])


def test_nightly_completes_with_artifacts_and_identical_bytes(project: Path,
                                                              single: Path) -> None:
    run_id, batch = run_nightly(project, "thread")
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
    assert isinstance(table[0]["seconds"], float)
    examples = found["nightly-examples"].data
    assert examples.count("## user ") == 3 and examples.count("| 5 |") == 3
    assert not list((project / "data/recommendations").glob(".*"))  # no shard leftovers


def test_dask_runner_gives_the_same_bytes(project: Path, single: Path) -> None:
    # the second nightly run for the same date: still one batch, byte-identical
    _, batch = run_nightly(project, "dask")
    for name in FILES:
        assert (batch / name).read_bytes() == (single / name).read_bytes(), name
    assert [p.name for p in (project / "data/recommendations").iterdir()] == [AS_OF]


def test_shards_cover_every_chunk_once() -> None:
    assert split_chunks(0, 4) == [(0, 0)]
    assert split_chunks(2, 4) == [(0, 1), (1, 2)]
    assert split_chunks(10, 3) == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError):
        split_chunks(5, 0)


def test_serve_schedules_on_the_params_cron(project: Path) -> None:
    flow = load_flow("nightly", project)
    cron = load_params(project / "params.yaml").prefect.nightly_cron
    deployment = flow.to_deployment(name="metarec-nightly", cron=cron,
                                    parameters={"project_dir": str(project)})
    assert [s.schedule.cron for s in deployment.schedules] == [cron]
