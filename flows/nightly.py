"""Nightly flow: ingest and validate the day's data, score its cold-start users in shards.

Scoring is a subflow whose task runner is a parameter: ``thread`` (default) or ``dask``
(prefect-dask; a LocalCluster, or the scheduler at ``dask_address``). Shards are runs of whole
scoring chunks, so the merged batch is byte-identical to ``metarec score --as-of DATE``.

Run once: ``python flows/nightly.py run [--as-of YYYY-MM-DD]``; serve on the cron schedule of
params.yaml (``prefect.nightly_cron``): ``python flows/nightly.py serve`` or ``metarec serve``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path
from typing import Any

from prefect import flow

from metarec.orchestration.local import serve_nightly, use_local_server
from metarec.orchestration.runners import RunnerKind, make_task_runner
from metarec.orchestration.sharding import scoring_lock
from metarec.orchestration.stages import run_stage, with_retries
from metarec.orchestration.tasks import merge_shards, plan_shards, publish_batch, score_shard
from metarec.params import load_params


def yesterday_utc() -> str:
    """The default as-of date: the last complete UTC day."""
    return (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()


@flow(name="metarec-score-shards")
def score_shards(project_dir: str, as_of: str, models_dir: str, shards: int) -> str:
    """Plan chunk ranges, score each shard as a mapped task, merge into the dated batch."""
    root = Path(project_dir)
    params = load_params(root / "params.yaml").score
    out_root = str(root / "data/recommendations")
    with scoring_lock(out_root):
        inputs, stats, ranges, folder = plan_shards(
            params, str(root / "data/validated"), str(root / models_dir), out_root, as_of,
            shards, str(root / "metrics/selection.json"))
        futures = score_shard.map(inputs, [lo for lo, _ in ranges], [hi for _, hi in ranges],
                                  folder)
        return merge_shards(inputs, stats, futures.result(), folder, out_root)


@flow(name="metarec-nightly")
def nightly(as_of: str | None = None, project_dir: str = ".",
            task_runner: RunnerKind | None = None, dask_address: str | None = None,
            shards: int | None = None, models_dir: str | None = None) -> dict[str, Any]:
    """Ingest, validate, score ``as_of`` (default yesterday, UTC); publish batch artifacts.

    ``task_runner``, ``dask_address``, ``shards`` and ``models_dir`` default to params.yaml's
    ``prefect`` section.
    """
    root = Path(project_dir).resolve()
    p = load_params(root / "params.yaml").prefect
    day = as_of or yesterday_utc()
    stage = with_retries(run_stage, p)
    stage("ingest", str(root))
    stage("validate", str(root))
    start = time.perf_counter()
    runner = make_task_runner(task_runner or p.task_runner, dask_address or p.dask_address,
                              p.dask_workers)
    batch = score_shards.with_options(task_runner=runner)(
        str(root), day, models_dir or p.models_dir, shards or p.shards)
    return publish_batch(batch, str(root / "data/validated"), time.perf_counter() - start)


def serve(project_dir: str = ".") -> None:
    """Register the deployment on params.yaml's ``prefect.nightly_cron`` and run its schedule;
    each scheduled run scores yesterday, UTC. Same as ``metarec serve``."""
    serve_nightly(Path(project_dir))


def main(argv: list[str] | None = None) -> None:
    """``run`` one nightly batch now, or ``serve`` the deployment on its schedule."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("run", "serve"))
    parser.add_argument("--as-of", default=None, help="YYYY-MM-DD (UTC); default yesterday")
    parser.add_argument("--project", default=".", help="project folder (params.yaml, dvc.yaml)")
    parser.add_argument("--task-runner", choices=("thread", "dask"), default=None)
    parser.add_argument("--dask-address", default=None, help="Dask scheduler address")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.project)
    else:
        project = Path(args.project).resolve()
        use_local_server(load_params(project / "params.yaml").prefect, project)
        nightly(as_of=args.as_of, project_dir=args.project, task_runner=args.task_runner,
                dask_address=args.dask_address)


if __name__ == "__main__":
    main()
