"""The backtest's nights as Prefect tasks, so that a Dask cluster can replay them in parallel.

Nights are independent: each rebuilds the plan from the project's files (paths and a day
string travel, not objects) and returns its per-user metrics; the flow joins them in night
order, so the window's summary has the same bytes on one process or on many. This module is in
the package (not in ``flows/``) so that Dask workers unpickle the task by reference.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from metarec.backtest import plan as bt_plan
from metarec.params import load_params
from metarec.pipeline import stage_options
from metarec.stages import backtest as stage


def plan_of(root: Path) -> tuple[bt_plan.Plan, dict[str, str]]:
    """The backtest plan of the project at ``root`` and its stage's paths (``dvc.yaml``)."""
    opts = stage_options(root, "backtest")
    params = load_params(root / "params.yaml")
    return stage.plan(params.backtest, params.score, params.validate, params.ingest,
                      params.episodes, params.model, params.train, root / opts["in"],
                      root / opts["episodes"],
                      root / opts["models"], root / opts["selection"]), opts


@task(name="backtest-night", task_run_name="night {day}", cache_policy=NO_CACHE)
def night_task(project_dir: str, day: str) -> pd.DataFrame:
    """One replayed night's per-user metrics (:func:`metarec.stages.backtest.night`)."""
    return stage.night(plan_of(Path(project_dir))[0], day)
