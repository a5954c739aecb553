"""Platforms in the data layer: a log's platform column, its vocabulary, the synthetic planting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from metarec.config import IngestParams, SyntheticSource, TableSource, ValidateParams
from metarec.data.sources.synthetic import synthesize
from metarec.errors import DataError
from metarec.stages import ingest, validate


def _log(tmp_path: Path, platforms: list[str | None]) -> Path:
    n = len(platforms)
    pd.DataFrame({"user_id": [f"u{i % 3}" for i in range(n)],
                  "item_id": [f"i{i}" for i in range(n)],
                  "rating": [4] * n, "timestamp": [1_000_000_000 + i for i in range(n)],
                  "surface": platforms}).to_csv(tmp_path / "log.csv", index=False)
    return tmp_path / "log.csv"


def _run(tmp_path: Path, spec: TableSource) -> dict:
    ingest.run(IngestParams(source="table", table=spec), tmp_path / "canonical")
    return validate.run(ValidateParams(min_timestamp="2000-01-01"), tmp_path / "canonical",
                        tmp_path / "validated", tmp_path / "quarantine", tmp_path / "report")


def test_unknown_and_missing_platforms_are_quarantined_with_their_reason(tmp_path: Path) -> None:
    log = _log(tmp_path, ["web", "app", "tv", None, "web", "APP"])
    summary = _run(tmp_path, TableSource(interactions=str(log), platform_col="surface",
                                         platforms=("web", "app")))
    schema = json.loads((tmp_path / "canonical" / "schema.json").read_text())
    assert schema["platforms"] == ["web", "app"]
    kept = pq.read_table(tmp_path / "validated" / "interactions.parquet").to_pandas()
    assert kept["platform"].tolist() == ["web", "app", "web"]
    assert kept["source_row"].tolist() == [1, 2, 5]
    q = pq.read_table(tmp_path / "quarantine" / "interactions.parquet").to_pandas()
    assert dict(zip(q["source_row"], q["reason"], strict=True)) == {
        3: "platform not one of web, app", 4: "platform missing",
        6: "platform not one of web, app"}        # ids are case-sensitive, like every id
    t = summary["tables"]["interactions"]
    assert (t["rows_in"], t["rows_kept"], t["rows_quarantined"]) == (6, 3, 3)
    gx = {e["reason"]: e["success"] for e in summary["expectations"]
          if e["column"] == "platform"}
    assert gx == {"platform missing": False, "platform not one of web, app": False}


def test_without_a_declared_vocabulary_every_platform_in_the_log_is_one(tmp_path: Path) -> None:
    log = _log(tmp_path, ["web", "tv", "web", " "])
    _run(tmp_path, TableSource(interactions=str(log), platform_col="surface"))
    schema = json.loads((tmp_path / "canonical" / "schema.json").read_text())
    assert schema["platforms"] == ["tv", "web"]
    q = pq.read_table(tmp_path / "quarantine" / "interactions.parquet").to_pandas()
    assert q["reason"].tolist() == ["platform missing"]       # a blank id is no id


def test_a_log_without_platforms_has_no_platform_column(tmp_path: Path) -> None:
    log = _log(tmp_path, ["web", "tv"])
    _run(tmp_path, TableSource(interactions=str(log)))
    schema = json.loads((tmp_path / "canonical" / "schema.json").read_text())
    assert "platforms" not in schema
    kept = pq.read_table(tmp_path / "validated" / "interactions.parquet")
    assert "platform" not in kept.column_names


def test_a_platform_column_named_in_params_must_exist(tmp_path: Path) -> None:
    log = _log(tmp_path, ["web"])
    with pytest.raises(DataError, match=r"log\.csv.*column 'device'"):
        _run(tmp_path, TableSource(interactions=str(log), platform_col="device"))


def test_validation_rejects_a_schema_with_platforms_but_no_platform_column(
        tmp_path: Path) -> None:
    log = _log(tmp_path, ["web"])
    ingest.run(IngestParams(source="table", table=TableSource(interactions=str(log))),
               tmp_path / "canonical")
    path = tmp_path / "canonical" / "schema.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "platforms": ["web"]}))
    with pytest.raises(DataError, match=r"interactions\.parquet.*column 'platform'"):
        validate.run(ValidateParams(), tmp_path / "canonical", tmp_path / "validated",
                     tmp_path / "quarantine", tmp_path / "report")


@pytest.mark.parametrize("choice", [0.0, 1.0])
def test_synthetic_platforms_plant_users_on_several_platforms(choice: float) -> None:
    spec = SyntheticSource(users=400, items=60, interactions=6000, seed=2, choice=choice,
                           platforms=3, platform_share=0.5)
    raw = synthesize(spec)
    inter = raw.interactions.frame()
    assert raw.platforms == ["p0", "p1", "p2"]
    assert set(inter["platform"]) == {"p0", "p1", "p2"} and inter["platform"].notna().all()
    per_user = inter.groupby("user_id")["platform"].nunique()
    # home platform + each other with chance 1/2: 1, 2 and 3 platforms all common
    share = per_user.value_counts(normalize=True)
    assert all(share.get(k, 0) > 0.1 for k in (1, 2, 3))
    assert synthesize(spec).interactions.frame().equals(inter)   # deterministic


def test_a_platform_shifts_taste_and_no_platforms_leaves_the_log_unchanged() -> None:
    base = SyntheticSource(users=400, items=60, interactions=6000, seed=2)
    plain = synthesize(base).interactions.frame()
    flat = synthesize(SyntheticSource(**{**base.__dict__, "platforms": 3,
                                         "platform_shift": 0.0})).interactions.frame()
    key = ["user_id", "item_id", "rating", "timestamp"]
    # popularity-only choice: platforms drawn from their own stream change no other value
    pd.testing.assert_frame_equal(flat[key], plain[key])
    shifted = synthesize(SyntheticSource(**{**base.__dict__, "platforms": 3,
                                            "platform_shift": 3.0})).interactions.frame()
    pd.testing.assert_frame_equal(shifted[key[:2] + key[3:]], plain[key[:2] + key[3:]])
    moved = (shifted["rating"] != plain["rating"]).mean()
    assert moved > 0.3
    # the shift is per platform: the same item is rated differently on different platforms
    by = shifted.groupby(["item_id", "platform"])["rating"].mean().unstack()
    spread = (by.max(axis=1) - by.min(axis=1)).dropna()
    flat_by = flat.groupby(["item_id", "platform"])["rating"].mean().unstack()
    assert spread.mean() > (flat_by.max(axis=1) - flat_by.min(axis=1)).dropna().mean() + 0.3
    assert np.isfinite(spread).all()
