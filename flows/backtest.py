"""Backtest flow: replay the nights of params' window and publish the window's table
(``metarec backtest`` as a flow, visible night by night in the Prefect UI).

Each night builds that night's batches and judges them on the following days
(:func:`metarec.stages.backtest.night`); the parent writes the same files as the DVC stage
(:func:`metarec.stages.backtest.finish`) and adds the table as an artifact. Paths come from
``dvc.yaml``'s ``backtest`` stage. With the ``thread`` task runner (params ``prefect``) the
nights are subflows, one after another; with ``dask`` they are mapped tasks of a subflow on a
Dask cluster (a LocalCluster of ``dask_workers`` processes, or the scheduler at
``dask_address``), replayed in parallel, with the same bytes out.

Run: ``python flows/backtest.py [--project DIR] [--task-runner dask] [--dask-address ADDR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from metarec.backtest import judge as bt_judge
from metarec.backtest import report as bt_report
from metarec.orchestration.backtest import night_task, plan_of
from metarec.orchestration.local import use_local_server
from metarec.orchestration.project import project_locked
from metarec.orchestration.runners import RunnerKind, make_task_runner
from metarec.params import load_params
from metarec.stages import backtest as stage


@flow(name="metarec-backtest-night", flow_run_name="night {day}")
def backtest_night(project_dir: str, day: str) -> pd.DataFrame:
    """One replayed night: its batches and their per-user metrics (the plan is rebuilt from
    the project, so the run's parameters are two strings)."""
    return stage.night(plan_of(Path(project_dir))[0], day)


@flow(name="metarec-backtest-nights")
def backtest_nights(project_dir: str, days: list[str]) -> list[pd.DataFrame]:
    """Every night as a mapped task on this subflow's task runner; results in night order."""
    return night_task.map(unmapped(project_dir), days).result()


@flow(name="metarec-backtest")
def backtest(project_dir: str = ".", task_runner: RunnerKind | None = None,
             dask_address: str | None = None) -> dict[str, Any]:
    """Every night of ``backtest.from_date`` .. ``to_date``, then the window's summary.
    ``task_runner`` and ``dask_address`` default to params.yaml's ``prefect`` section."""
    root = Path(project_dir).resolve()
    params = load_params(root / "params.yaml")
    p = params.prefect
    kind = task_runner or p.task_runner
    with project_locked(root, "the backtest flow", params):   # models may be retrained
        pl, opts = plan_of(root)
        if kind == "dask":
            runner = make_task_runner(kind, dask_address or p.dask_address, p.dask_workers)
            rows = backtest_nights.with_options(task_runner=runner)(str(root), pl.nights)
        else:
            rows = [backtest_night(str(root), day) for day in pl.nights]
        summary = stage.finish(pl, rows, root / opts["metrics"], root / opts["report"])
    table = [{"users": f"{kind} ({block['users']})", "method": summary["methods"][m],
              **{x: block[m][x] for x in bt_judge.METRICS}}
             for kind, block in summary["overall"].items() for m in bt_report.METHODS if m in block]
    create_table_artifact(key="backtest", table=table,
                          description=f"backtest {pl.nights[0]} .. {pl.nights[-1]}")
    create_markdown_artifact(key="backtest-comparisons", markdown=bt_report.markdown(summary),
                             description="paired-bootstrap comparisons over users")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project folder (params.yaml, dvc.yaml)")
    parser.add_argument("--task-runner", choices=("thread", "dask"), default=None)
    parser.add_argument("--dask-address", default=None, help="Dask scheduler address")
    args = parser.parse_args(argv)
    project = Path(args.project).resolve()
    use_local_server(load_params(project / "params.yaml").prefect, project)
    backtest(project_dir=str(project), task_runner=args.task_runner,
             dask_address=args.dask_address)


if __name__ == "__main__":
    main()
