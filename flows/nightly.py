"""Nightly flow: ingest and validate the day's data, score its cold-start users in shards,
record the batch in DVC, publish what it recommends.

Scoring is a subflow whose task runner is a parameter: ``thread`` (default) or ``dask``
(prefect-dask; a LocalCluster, or the scheduler at ``dask_address``). Shards are runs of whole
scoring chunks, so the merged batch is byte-identical to ``metarec score --as-of DATE``.
Without a date the night comes from ``prefect.clock`` (:mod:`metarec.orchestration.nightly`).
Every path comes from ``dvc.yaml``; params.yaml is read once per run. The run holds the
project lock from before it picks the night to after the batch is tracked, so two runs (or a
run and the weekly retraining) never score the same night or read a model being replaced.

Run once: ``python flows/nightly.py run [--as-of YYYY-MM-DD]``; serve the nightly and the
retraining deployments on their cron schedules: ``make serve`` (``metarec serve``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from metarec.config import parse_params, to_dict
from metarec.data.landing import landing_format
from metarec.errors import DataError
from metarec.orchestration import nightly as plan
from metarec.orchestration.local import serve_project, use_local_server
from metarec.orchestration.project import ProjectPaths, project_locked
from metarec.orchestration.runners import RunnerKind, make_task_runner
from metarec.orchestration.stages import run_stage, sync_pipeline, with_retries
from metarec.orchestration.tasks import (
    merge_shards,
    plan_shards,
    publish_batch_artifacts,
    score_shard,
)
from metarec.params import load_params


@flow(name="metarec-score-shards")
def score_shards(project_dir: str, as_of: str, params: dict[str, Any], shards: int) -> str:
    """Plan chunk ranges (the landing files validated), score each shard as a mapped task,
    merge into the dated batch. ``params``: the score, validate and ingest sections. Run
    by :func:`nightly`, under its project lock."""
    paths = ProjectPaths.of(project_dir)
    p = parse_params(params)
    out_root = str(paths.batches)
    inputs, stats, ranges, folder = plan_shards(
        p.score, str(paths.validated), str(paths.models), out_root, as_of, shards,
        str(paths.selection), p.validate, landing_format(p.ingest.source, p.ingest.table))
    futures = score_shard.map(inputs, [lo for lo, _ in ranges], [hi for _, hi in ranges],
                              folder)
    return merge_shards(inputs, stats, futures.result(), folder, out_root)


@task(name="check-landing", cache_policy=NO_CACHE)
def check_landing(params: Any, day: str) -> None:
    """Fail the run, with an artifact naming the day, when the day's log is not there."""
    try:
        plan.check_landing(params, day)
    except plan.MissingDay as exc:
        create_markdown_artifact(key="missing-landing-day", markdown=f"# {day}: no data\n\n"
                                 f"{exc}\n\nNo batch was written for this night.",
                                 description=f"nightly {day}: landing data missing")
        raise
    except DataError as exc:
        create_markdown_artifact(key="unreadable-landing-day", markdown=f"# {day}: the "
                                 f"landing file cannot be read\n\n{exc}\n\nNo batch was "
                                 "written for this night.",
                                 description=f"nightly {day}: landing file unreadable")
        raise


@task(name="track-batch", cache_policy=NO_CACHE)
def track_batch(root: str, batch: str, params: Any) -> str:
    """The batch as a DVC output (pushed by ``dvc push``)."""
    return plan.track_batch(Path(root), Path(batch), params)


@flow(name="metarec-nightly")
def nightly(as_of: str | None = None, project_dir: str = ".",
            task_runner: RunnerKind | None = None, dask_address: str | None = None,
            shards: int | None = None) -> dict[str, Any]:
    """Ingest, validate, score ``as_of`` (default: the clock's next night), record the batch
    in DVC and publish its artifacts. ``task_runner``, ``dask_address`` and ``shards``
    default to params.yaml's ``prefect`` section."""
    paths = ProjectPaths.of(project_dir)
    params = load_params(paths.root / "params.yaml")
    p = params.prefect
    with project_locked(paths.root, "the nightly flow", params):
        day = as_of or plan.next_night(params, paths.batches)
        check_landing(params, day)
        stage = with_retries(run_stage, p)
        sync_pipeline(str(paths.root))
        stage("ingest", str(paths.root))
        stage("validate", str(paths.root))
        start = time.perf_counter()
        runner = make_task_runner(task_runner or p.task_runner,
                                  dask_address or p.dask_address, p.dask_workers)
        sections = {k: to_dict(getattr(params, k)) for k in ("score", "validate", "ingest")}
        batch = score_shards.with_options(task_runner=runner)(
            str(paths.root), day, sections, shards or p.shards)
        tracked = track_batch(str(paths.root), batch, params)
    row = publish_batch_artifacts(batch, str(paths.validated), time.perf_counter() - start)
    return {**row, "dvc": tracked}


def main(argv: list[str] | None = None) -> None:
    """``run`` one nightly batch now, or ``serve`` the deployments on their schedules."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "serve"))
    parser.add_argument("--as-of", default=None, help="YYYY-MM-DD (UTC); default: the clock")
    parser.add_argument("--project", default=".", help="project folder (params.yaml, dvc.yaml)")
    parser.add_argument("--task-runner", choices=("thread", "dask"), default=None)
    parser.add_argument("--dask-address", default=None, help="Dask scheduler address")
    args = parser.parse_args(argv)
    project = Path(args.project).resolve()
    if args.command == "serve":
        serve_project(project)
    else:
        use_local_server(load_params(project / "params.yaml").prefect, project)
        nightly(as_of=args.as_of, project_dir=str(project), task_runner=args.task_runner,
                dask_address=args.dask_address)


if __name__ == "__main__":
    main()
