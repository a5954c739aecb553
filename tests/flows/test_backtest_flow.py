"""The backtest flow on the small project: one completed subflow per night, named after it,
the window's table as an artifact, and the same metrics file as the ``backtest`` stage."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from uuid import UUID

from prefect.client.schemas.objects import StateType

from metarec.backtest.plan import trained_until
from metarec.orchestration import load_flow
from metarec.params import load_params
from metarec.stages import backtest as stage

from .flow_helpers import artifacts, subflow_runs, task_runs, write_params


def _weekly_window(project: Path) -> list[str]:
    """Three weekly nights from the end of training, written to the project's params."""
    end = trained_until(project / "data/episodes")
    first = dt.datetime.fromtimestamp(end, dt.UTC).date()
    days = [str(first + dt.timedelta(days=7 * i)) for i in range(3)]
    write_params(project, {"backtest": {"from_date": days[0], "to_date": days[-1],
                                        "every_days": 7, "bootstrap_samples": 50}})
    return days


def test_backtest_flow_runs_a_subflow_per_night(trained: UUID, project: Path,
                                               tmp_path: Path) -> None:
    days = _weekly_window(project)
    state = load_flow("backtest", project)(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    nights = subflow_runs(run_id)
    assert sorted(r.name for r in nights) == [f"night {d}" for d in days]
    assert all(r.state_type == StateType.COMPLETED for r in nights)

    summary = json.loads((project / "metrics/backtest.json").read_text())
    assert summary["window"] == {"from": days[0], "to": days[-1], "every_days": 7,
                                 "nights": 3, "horizon_days": 7, "k": 20,
                                 "retrain_every_days": None}
    table = json.loads(artifacts(run_id)["backtest"].data)
    cold = [r for r in table if r["users"].startswith("cold")]
    assert {r["method"] for r in cold} >= {summary["methods"]["model"],
                                           summary["methods"]["popularity"]}
    assert {r["ndcg"] for r in cold} == {summary["overall"]["cold"][m]["ndcg"]
                                         for m in summary["overall"]["cold"] if m != "users"}

    # the DVC stage's code path writes the same metrics
    p = load_params(project / "params.yaml")
    again = stage.run(p.backtest, p.score, p.validate, p.ingest, p.episodes, p.model, p.train,
                      project / "data/validated",
                      project / "data/episodes", project / "models",
                      project / "metrics/selection.json", tmp_path / "backtest.json",
                      tmp_path / "report")
    assert (tmp_path / "backtest.json").read_bytes() == \
        (project / "metrics/backtest.json").read_bytes()
    assert again["per_night"] and {r["night"] for r in again["per_night"]} <= set(days)


def test_backtest_nights_on_a_dask_cluster_give_the_same_bytes(trained: UUID, project: Path,
                                                              tmp_path: Path) -> None:
    days = _weekly_window(project)
    p = load_params(project / "params.yaml")
    stage.run(p.backtest, p.score, p.validate, p.ingest, p.episodes, p.model, p.train,
              project / "data/validated", project / "data/episodes", project / "models",
              project / "metrics/selection.json", tmp_path / "backtest.json",
              tmp_path / "report")
    state = load_flow("backtest", project)(project_dir=str(project), task_runner="dask",
                                           return_state=True)
    assert state.is_completed(), state.message
    # the nights ran as mapped tasks of one subflow on the cluster, not as night subflows
    runs = subflow_runs(state.state_details.flow_run_id)
    assert len(runs) == 1 and not runs[0].name.startswith("night ")
    nights = task_runs(runs[0].id)
    assert sorted(nights) == [f"night {d}" for d in days]
    assert all(r.state_type == StateType.COMPLETED for r in nights.values())
    assert (project / "metrics/backtest.json").read_bytes() == \
        (tmp_path / "backtest.json").read_bytes()
