"""Ingest: each source format read from small hand-written fixture files, exact values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec.config import IngestParams, SyntheticSource, TableSource
from metarec.data.sources import coarsen_zip, content_sha256
from metarec.errors import DataError
from metarec.io import read_json, read_parquet, sha256_file
from metarec.stages import ingest

FIX = Path(__file__).parent / "fixtures"


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    return (read_parquet(out / "interactions.parquet"), read_parquet(out / "users.parquet"),
            read_parquet(out / "items.parquet"), read_json(out / "schema.json"))


def test_movielens_1m_format(tmp_path: Path) -> None:
    ingest.run(IngestParams(source="movielens-1m", path=str(FIX / "ml-1m")), tmp_path)
    inter, users, items, schema = _tables(tmp_path)
    assert list(inter.columns) == ["user_id", "item_id", "rating", "timestamp", "source_row"]
    assert inter["user_id"].tolist() == ["1", "1", "2", "2", "3"]
    assert inter["rating"].tolist() == [5.0, 3.0, 4.0, 4.0, 2.0]
    assert inter["timestamp"].iloc[0] == 978300760
    assert inter["source_row"].tolist() == [1, 2, 3, 4, 5]
    assert users.set_index("user_id")["zip"].to_dict() == {"1": "4", "2": "7", "3": "other"}
    assert users["age"].tolist() == ["1", "56", "25"]          # ML-1M ages are bucket codes
    items = items.set_index("item_id")
    assert items.loc["661", "title"] == "James and the Giant Peach"
    assert items.loc["661", "release_year"] == 1996
    assert list(items.loc["661", "genres"]) == ["Animation", "Children's", "Musical"]
    assert items.loc["9999", "title"] == "Amélie"                # latin-1 decoded
    assert schema["users"]["age"]["kind"] == "categorical"
    assert schema["items"]["genres"] == {"kind": "multicategorical", "cardinality": 6,
                                         "vocabulary": None}
    assert schema["rating"] == {"kind": "explicit", "min": 1.0, "max": 5.0}


def test_movielens_latest_format(tmp_path: Path) -> None:
    ingest.run(IngestParams(source="movielens-latest", path=str(FIX / "ml-latest")), tmp_path)
    inter, users, items, schema = _tables(tmp_path)
    assert inter["rating"].tolist() == [4.0, 4.5, 0.5, 3.5]     # half stars kept
    assert sorted(users["user_id"]) == ["1", "2"]
    assert list(users.columns) == ["user_id"]                   # no user features
    items = items.set_index("item_id")
    assert items.loc["3", "title"] == "Grumpier Old Men, The"
    assert list(items.loc["3", "genres"]) == []                 # "(no genres listed)"
    assert schema["rating"]["min"] == 0.5


def test_table_source_parquet_with_mapping(tmp_path: Path) -> None:
    log = pd.DataFrame({"uid": [10, 10, 11], "sku": ["a", "b", "a"], "stars": [3, 5, 1],
                        "when": ["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z",
                                 "2024-01-03T12:00:00Z"]})
    log.to_parquet(tmp_path / "log.parquet")
    items = pd.DataFrame({"sku": ["a", "b"], "tags": ["x|y", "y"], "price": [1.5, 2.0]})
    items.to_csv(tmp_path / "items.csv", index=False)
    spec = TableSource(interactions=str(tmp_path / "log.parquet"), user_col="uid",
                       item_col="sku", rating_col="stars", timestamp_col="when",
                       timestamp_unit="iso", items=str(tmp_path / "items.csv"),
                       item_features={"tags": "multicategorical", "price": "numeric"})
    ingest.run(IngestParams(source="table", table=spec), tmp_path / "out")
    inter, users, items_out, schema = _tables(tmp_path / "out")
    assert inter["user_id"].tolist() == ["10", "10", "11"]
    assert inter["timestamp"].tolist() == [1704067200, 1704153600, 1704283200]
    assert inter["rating"].tolist() == [3.0, 5.0, 1.0]
    assert [list(v) for v in items_out["tags"]] == [["x", "y"], ["y"]]
    assert schema["items"]["tags"]["cardinality"] == 2
    assert schema["items"]["price"]["kind"] == "numeric"


def test_table_source_missing_column_names_file_and_column(tmp_path: Path) -> None:
    pd.DataFrame({"user": [1], "item": [2], "rating": [3], "ts": [4]}).to_csv(
        tmp_path / "log.csv", index=False)
    spec = TableSource(interactions=str(tmp_path / "log.csv"), timestamp_col="time")
    with pytest.raises(DataError, match=r"log\.csv.*column 'user_id'"):
        ingest.run(IngestParams(source="table", table=spec), tmp_path / "out")


def test_synthetic_is_deterministic_and_planted(tmp_path: Path) -> None:
    spec = SyntheticSource(users=300, items=80, interactions=6000, seed=3)
    ingest.run(IngestParams(source="synthetic", synthetic=spec), tmp_path / "a")
    ingest.run(IngestParams(source="synthetic", synthetic=spec), tmp_path / "b")
    for name in ("interactions.parquet", "users.parquet", "items.parquet", "schema.json"):
        assert sha256_file(tmp_path / "a" / name) == sha256_file(tmp_path / "b" / name)
    inter, users, _, _ = _tables(tmp_path / "a")
    assert len(inter) == 6000
    assert not inter.duplicated(["user_id", "item_id"]).any()
    assert inter["rating"].between(1, 5).all()
    # users arrive over time: first interactions spread over the timeline
    first = inter.groupby("user_id")["timestamp"].min()
    assert first.max() - first.min() > 200 * 86_400


def test_zip_codes_are_coarsened() -> None:
    out = coarsen_zip(pd.Series(["48067", "K1A0B", " 02139", None]))
    assert out.tolist()[:3] == ["4", "other", "0"]


def test_content_fingerprint_ignores_row_order() -> None:
    a = pd.DataFrame({"user_id": ["1", "2"], "item_id": ["5", "6"], "rating": [3.0, 4.0],
                      "timestamp": [10, 20]})
    assert content_sha256(a) == content_sha256(a.iloc[::-1])
    b = a.assign(rating=[3.0, 5.0])
    assert content_sha256(a) != content_sha256(b)


@pytest.mark.slow
def test_movielens_100k_from_the_recbole_wheel(tmp_path: Path) -> None:
    """The embedded default data set: exact counts and checksums (downloads the wheel once)."""
    cache = Path(".cache/metarec").resolve()
    schema = ingest.run(IngestParams(cache_dir=str(cache)), tmp_path)
    assert schema["counts"] == {"interactions": 100000, "users": 943, "items": 1682}
    inter = read_parquet(tmp_path / "interactions.parquet")
    assert np.isclose(inter["rating"].mean(), 3.52986)
