"""The corpus of defective landing days (tests/landing_corpus.py) through the nightly flow.

Each case is its own night and landing folder on one copy of the small project. No case ends
in a traceback of metarec's: an unreadable day fails the run at its check with an artifact
saying what the file is; a partly bad day is scored with its bad rows quarantined (the counts
in the nightly-batch artifact and the night's landing-validation artifact); a night whose
every row is bad, or that holds no rows, fails with an artifact and writes no batch.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
from landing_corpus import CASES, Case, clock

from metarec.orchestration import load_flow

from .flow_helpers import AS_OF, artifacts, subflow_runs, write_params

FIRST = dt.date.fromisoformat(AS_OF) + dt.timedelta(days=30)   # after test_nightly's nights


@pytest.fixture(scope="module")
def copy(trained: UUID, project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("landing-flow") / "p"
    shutil.copytree(project, dest)
    return dest


def _items(project: Path) -> list[str]:
    items = pd.read_parquet(project / "data/validated/items.parquet")["item_id"]
    return sorted(items.astype(str))[:4]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_bad_landing_day_through_the_nightly_flow(copy: Path, case: Case) -> None:
    night = FIRST + dt.timedelta(days=CASES.index(case))
    landing = copy / "landing" / case.name
    landing.mkdir(parents=True)
    (landing / f"{night}{case.suffix}").write_bytes(case.build(clock(night), _items(copy)))
    write_params(copy, {"score": {"landing_dir": str(landing), "active_days": 3,
                                  "max_interactions": 20}})
    state = load_flow("nightly", copy)(as_of=night.isoformat(), project_dir=str(copy),
                                       return_state=True)
    run_id = state.state_details.flow_run_id
    found = {k: a for r in [run_id, *(f.id for f in subflow_runs(run_id))]
             for k, a in artifacts(r).items()}
    batch = copy / "data/recommendations" / night.isoformat()
    if case.error or case.rejected or case.empty:
        assert state.is_failed(), case.name
        text = "\n".join(a.data for key, a in found.items() if key.endswith("landing-day"))
        for part in case.error or (case.rejected or "holds no rows",):
            assert part in text, text
        assert not batch.exists()
        return
    assert state.is_completed(), state.message
    manifest = json.loads((batch / "manifest.json").read_text())
    day = manifest["landing"]["files"][-1]
    assert day["rows_in"] == day["rows_kept"] + day["rows_quarantined"]
    assert day["rows_quarantined"] == len(case.quarantine)
    table = json.loads(found["nightly-batch"].data)[0]
    assert table["landing_rows_quarantined"] == manifest["landing"]["rows_quarantined"]
    report = found["landing-validation"].data
    assert f"| {night}{case.suffix} | {night} | {day['rows_in']} |" in report
    for reason in case.quarantine.values():
        assert reason in report
    recs = pd.read_parquet(batch / "recommendations.parquet")
    assert set(case.good_users) <= set(recs["user_id"])
    assert (batch.parent / f"{night}.dvc").is_file()          # the batch is in DVC
