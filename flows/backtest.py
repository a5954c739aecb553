"""Backtest flow: replay the nights of params' window, one subflow per night, and publish the
window's table (``metarec backtest`` as a flow, visible night by night in the Prefect UI).

Each night's subflow builds that night's batches and judges them on the following days
(:func:`metarec.stages.backtest.night`); the parent writes the same files as the DVC stage
(:func:`metarec.stages.backtest.finish`) and adds the table as an artifact. Paths come from
``dvc.yaml``'s ``backtest`` stage.

Run: ``python flows/backtest.py [--project DIR]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from metarec.orchestration.local import use_local_server
from metarec.orchestration.project import stage_options
from metarec.params import load_params
from metarec.scoring import backtest as bt
from metarec.stages import backtest as stage


def _plan(root: Path) -> tuple[bt.Plan, dict[str, str]]:
    opts = stage_options(root, "backtest")
    params = load_params(root / "params.yaml")
    return stage.plan(params.backtest, params.score, params.episodes, params.model,
                      params.train, root / opts["in"], root / opts["episodes"],
                      root / opts["models"], root / opts["selection"]), opts


@flow(name="metarec-backtest-night", flow_run_name="night {day}")
def backtest_night(project_dir: str, day: str) -> pd.DataFrame:
    """One replayed night: its batches and their per-user metrics (the plan is rebuilt from
    the project, so the run's parameters are two strings)."""
    return stage.night(_plan(Path(project_dir))[0], day)


@flow(name="metarec-backtest")
def backtest(project_dir: str = ".") -> dict[str, Any]:
    """Every night of ``backtest.from_date`` .. ``to_date``, then the window's summary."""
    root = Path(project_dir).resolve()
    pl, opts = _plan(root)
    rows = [backtest_night(str(root), day) for day in pl.nights]
    summary = stage.finish(pl, rows, root / opts["metrics"], root / opts["report"])
    table = [{"users": f"{kind} ({block['users']})", "method": summary["methods"][m],
              **{x: block[m][x] for x in bt.METRICS}}
             for kind, block in summary["overall"].items() for m in bt.METHODS if m in block]
    create_table_artifact(key="backtest", table=table,
                          description=f"backtest {pl.nights[0]} .. {pl.nights[-1]}")
    create_markdown_artifact(key="backtest-comparisons", markdown=bt.markdown(summary),
                             description="paired-bootstrap comparisons over users")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="project folder (params.yaml, dvc.yaml)")
    args = parser.parse_args(argv)
    project = Path(args.project).resolve()
    use_local_server(load_params(project / "params.yaml").prefect, project)
    backtest(project_dir=str(project))


if __name__ == "__main__":
    main()
