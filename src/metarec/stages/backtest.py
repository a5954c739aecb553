"""Stage `backtest`: replay nights and judge each batch on the following days (wiring only).

The library is :mod:`metarec.backtest`; the CLI, ``dvc.yaml`` and the Prefect flow
``metarec-backtest`` (one subflow per night) all go through :func:`plan`, :func:`night` and
:func:`finish`, so they write the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from metarec.backtest import judge as bt_judge
from metarec.backtest import plan as bt_plan
from metarec.backtest import report as bt_report
from metarec.backtest.retrain import Training
from metarec.config import (
    BacktestParams,
    EpisodesParams,
    LandingSource,
    ModelParams,
    ScoreParams,
    TrainParams,
    ValidateParams,
)
from metarec.data.landing import landing_format
from metarec.io import write_json, write_parquet, write_text
from metarec.progress import progress

PLOT, TABLE, ROWS = "ndcg_per_night.png", "backtest.md", "users.parquet"


def plan(params: BacktestParams, score: ScoreParams, validate: ValidateParams,
         ingest: LandingSource, episodes: EpisodesParams, model: ModelParams,
         train: TrainParams, validated_dir: str | Path, episodes_dir: str | Path,
         models_dir: str | Path, selection: str | Path | None) -> bt_plan.Plan:
    """The checked window and the models it compares (episodes, model and train shape the
    models retrained inside the window, with ``backtest.retrain_every_days``; validate and
    ingest say how landing files are checked and read)."""
    return bt_plan.plan(params, score, Training(episodes, model, train), validated_dir,
                   episodes_dir, models_dir, selection, validate,
                   landing_format(ingest.source, ingest.table))


def night(pl: bt_plan.Plan, day: str) -> pd.DataFrame:
    """Per (user, method) metrics of one replayed night."""
    return bt_judge.judge_night(pl, day)


def finish(pl: bt_plan.Plan, rows: list[pd.DataFrame], metrics_out: str | Path,
           report_dir: str | Path) -> dict[str, Any]:
    """Summarise, and write the metrics JSON, the per-night plot, the table and the rows."""
    table = pd.concat(rows, ignore_index=True)
    summary = bt_report.summarise(pl, table)
    report = Path(report_dir)
    write_parquet(table, report / ROWS)
    bt_report.plot(summary, report / PLOT)
    write_text(bt_report.markdown(summary), report / TABLE)
    write_json(summary, metrics_out)
    return summary


def run(params: BacktestParams, score: ScoreParams, validate: ValidateParams,
        ingest: LandingSource, episodes: EpisodesParams, model: ModelParams,
        train: TrainParams, validated_dir: str | Path, episodes_dir: str | Path,
        models_dir: str | Path, selection: str | Path | None, metrics_out: str | Path,
        report_dir: str | Path) -> dict[str, Any]:
    """Every night of the window in turn, then the summary (see :mod:`metarec.backtest`)."""
    pl = plan(params, score, validate, ingest, episodes, model, train, validated_dir,
              episodes_dir, models_dir, selection)
    rows = []
    with progress("backtest", len(pl.nights)) as tick:
        for day in pl.nights:
            rows.append(night(pl, day))
            tick.advance(1, night=day)
    return finish(pl, rows, metrics_out, report_dir)
