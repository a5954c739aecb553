"""The day's landing data goes through the validate stage's rules: the corpus of defective
day files (tests/landing_corpus.py) through `metarec score`, on the tiny world of
tests/test_score.py. No case ends in a traceback: an unreadable file exits 2 saying what it is
and how to fix it; bad rows are quarantined with their reason (rows in = kept + quarantined,
in the manifest and in quarantine.parquet) and the rest of the day is scored; a night whose
every row is bad is a failed night, with no batch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml
from landing_corpus import CASES, Case, clock
from test_score import AS_OF, N_ITEMS, world  # noqa: F401  (the module's fixture)
from typer.testing import CliRunner

from metarec.cli import app
from metarec.config import ValidateParams
from metarec.data.landing import CANONICAL, check_landing, night_of

ITEMS = [f"i{i:02d}" for i in range(N_ITEMS)]


def test_the_corpus_is_large_and_covers_every_outcome() -> None:
    assert len(CASES) >= 20
    kinds = {"error": sum(bool(c.error) for c in CASES),
             "quarantine": sum(bool(c.quarantine) for c in CASES),
             "rejected": sum(c.rejected is not None for c in CASES)}
    assert kinds["error"] >= 8 and kinds["quarantine"] >= 8 and kinds["rejected"] >= 1


def _score(world: dict, tmp_path: Path, case: Case, policy: str = "quarantine"  # noqa: F811
           ) -> tuple[int, str, Path]:
    landing = tmp_path / "landing"
    landing.mkdir(exist_ok=True)
    day = night_of(Path(AS_OF + ".csv"))
    (landing / f"{AS_OF}{case.suffix}").write_bytes(case.build(clock(day), ITEMS))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "score": {"model": "maml", "top_k": 4, "max_interactions": 3, "active_days": 3,
                  "landing_dir": str(landing)},
        "validate": {"policy": policy}}), encoding="utf-8")
    out = tmp_path / "recs"
    result = CliRunner().invoke(app, ["score", "--as-of", AS_OF, "--in",
                                      str(world["validated"]), "--models",
                                      str(world["models"]), "--out", str(out), "--params",
                                      str(params), "--selection",   # not the project's own
                                      str(tmp_path / "no-selection.json")])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception            # a traceback is a failure of this test
    return result.exit_code, " ".join(result.output.split()), out / AS_OF


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_bad_landing_file_through_metarec_score(world, tmp_path: Path,  # noqa: F811
                                                     case: Case) -> None:
    code, out, batch = _score(world, tmp_path, case)
    if case.error or case.rejected:
        assert code == 2, out
        for text in case.error or (case.rejected,):
            assert text in out, out
        assert not batch.exists() and not [p for p in batch.parent.glob(".*")
                                           if p.exists()]    # nothing half-written
        return
    assert code == 0, out
    manifest = json.loads((batch / "manifest.json").read_text())
    landing = manifest["landing"]
    day = landing["files"][0]
    assert day["file"] == f"{AS_OF}{case.suffix}"
    assert day["rows_in"] == day["rows_kept"] + day["rows_quarantined"]
    assert landing["rows_in"] == landing["rows_kept"] + landing["rows_quarantined"]
    set_aside = pd.read_parquet(batch / "quarantine.parquet")
    assert len(set_aside) == day["rows_quarantined"] == len(case.quarantine)
    got = dict(zip(set_aside["source_row"], set_aside["reason"], strict=True))
    assert set(got) == set(case.quarantine)
    for row, reason in case.quarantine.items():
        assert reason in got[row], (row, got[row])
    if case.empty:
        assert day["rows_in"] == 0
    recs = pd.read_parquet(batch / "recommendations.parquet")
    assert set(case.good_users) <= set(recs["user_id"])     # the valid rows were scored
    # the expectations that set rows aside are in the manifest, with GX's verdict
    flagged = [e for e in landing["expectations"] if e["rows_quarantined"]]
    assert all(e["agrees_with_gx"] is not False for e in landing["expectations"])
    assert sum(e["rows_quarantined"] for e in flagged) >= day["rows_quarantined"]


def test_policy_fail_stops_at_the_first_bad_row(world, tmp_path: Path) -> None:  # noqa: F811
    case = next(c for c in CASES if c.name == "parquet_with_bad_rows")
    code, out, batch = _score(world, tmp_path, case, policy="fail")
    assert code == 2 and f"{AS_OF}.parquet, row 5, column 'rating'" in out, out
    assert "rating out of scale" in out and "2 landing row(s) failed validation" in out
    assert not batch.exists()


def test_every_landing_file_read_is_checked_not_only_the_nights(tmp_path: Path) -> None:
    """Two nights: each file's rows must fall on its own night; counts per file add up."""
    a, b = tmp_path / "2024-03-09.csv", tmp_path / "2024-03-10.csv"
    first, second = clock(night_of(a)), clock(night_of(b))
    a.write_text(f"user_id,item_id,rating,timestamp\nu,i01,4,{first(10)}\nu,i02,4,"
                 f"{second(10)}\n")
    b.write_text(f"user_id,item_id,rating,timestamp\nv,i01,4,{second(10)}\n")
    check = check_landing([a, b], CANONICAL, {"min": 1, "max": 5}, pa.array(ITEMS),
                          ValidateParams())
    assert [(f["file"], f["rows_in"], f["rows_kept"], f["rows_quarantined"])
            for f in check.summary["files"]] == [("2024-03-09.csv", 2, 1, 1),
                                                 ("2024-03-10.csv", 1, 1, 0)]
    assert check.kept.column("src").to_pylist() == [1, 2]
    assert check.quarantine.to_pylist()[0]["reason"].startswith("timestamp after its night")
