"""Logs read in batches: ingest, validate and episodes give the same bytes whatever the batch.

One small synthetic log, damaged with every kind of bad row (quarantined with its reason),
duplicate keys whose copies lie in different batches, ids unknown to the feature tables first
used in a late batch, users and items set aside in their tables whose interactions spread over
many batches. It runs once with a batch larger than the log (the in-memory case) and once
with 97-row batches; every output file must be byte-identical.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metarec.config import EpisodesParams, IngestParams, SyntheticSource, ValidateParams
from metarec.data.batches import IdCodes
from metarec.data.protocols.common import sort_order
from metarec.data.sources.synthetic import choice, first_unique
from metarec.data.validation import duplicates
from metarec.stages import episodes, ingest, validate

SPEC = SyntheticSource(users=150, items=60, interactions=1800, days=40, seed=5)
WHOLE, SMALL = 10**9, 97
FOLDERS = ("canonical", "validated", "quarantine", "report", "episodes")


def _damage(folder: Path) -> dict[str, list[int]]:
    """Bad rows of every kind into a canonical folder; returns the rows (0-based) of the
    planted duplicates and unknown ids, to check they span batches."""
    path = folder / "interactions.parquet"
    log = pq.read_table(path).to_pydict()
    n = len(log["user_id"])
    cells = {"rating": {10: math.nan, 250: 9.0, 400: math.inf},
             "timestamp": {20: None, 620: 5},
             "user_id": {30: None, 1500: "ghost", 1700: "ghost", 1750: "ghost2"},
             "item_id": {40: None, 1400: "nowhere"}}
    for col, rows in cells.items():
        for row, value in rows.items():
            log[col][row] = value
    late = [3, 500, 1000]                 # copies of early rows appended at the end
    for col in log:
        log[col] += [log[col][r] for r in late]
    for col in ("user_id", "item_id", "timestamp"):   # a late row copied near the start
        log[col][50] = log[col][1600]
    log["rating"][3] = math.nan           # a duplicate whose first copy is bad: the later stays
    log["source_row"] = list(range(1, len(log["user_id"]) + 1))
    pq.write_table(pa.table(log, schema=pq.read_schema(path)), path)
    users = pq.read_table(folder / "users.parquet").to_pydict()
    users["gender"][7] = "X"              # outside the vocabulary: its rows cascade
    users["user_id"][12] = users["user_id"][13]
    pq.write_table(pa.table(users, schema=pq.read_schema(folder / "users.parquet")),
                   folder / "users.parquet")
    return {"duplicates": [3, 500, 1000, n, n + 1, n + 2, 50, 1600],
            "unknown": [1500, 1700, 1750, 1400], "rows": n}


def _run(root: Path, rows: int, damage: bool) -> dict:
    ingest.run(IngestParams(source="synthetic", synthetic=SPEC, batch_rows=rows),
               root / "canonical")
    planted = _damage(root / "canonical") if damage else {}
    summary = validate.run(ValidateParams(max_timestamp="2030-01-01", batch_rows=rows),
                           root / "canonical", root / "validated", root / "quarantine",
                           root / "report")
    episodes.run(EpisodesParams(support_sizes=(1, 3), query_size=4, train_draws=3,
                                text_cache=None, batch_rows=rows),
                 root / "validated", root / "episodes", root / "data.json",
                 root / "report" / "summary.json")
    return {"summary": summary, "planted": planted}


def _files(root: Path) -> dict[str, bytes]:
    """Every output file of the three stages (and the data metrics), by relative path."""
    paths = [p for name in FOLDERS for p in (root / name).rglob("*") if p.is_file()]
    return {str(p.relative_to(root)): p.read_bytes() for p in [*paths, root / "data.json"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    out = {}
    for rows in (WHOLE, SMALL):
        root = tmp_path_factory.mktemp(f"rows{rows}")
        out[rows] = {"root": root, **_run(root, rows, damage=True)}
    return out


def test_batched_pipeline_writes_the_bytes_of_the_whole_log(runs: dict) -> None:
    whole, small = _files(runs[WHOLE]["root"]), _files(runs[SMALL]["root"])
    assert sorted(whole) == sorted(small)
    assert len(whole) >= 20, sorted(whole)
    assert [name for name in whole if whole[name] != small[name]] == []


def test_the_damaged_log_exercises_every_rule_across_batches(runs: dict) -> None:
    summary, planted = runs[SMALL]["summary"], runs[SMALL]["planted"]
    failed = {e["reason"]: (e["unexpected_count"], e["rows_quarantined"])
              for e in summary["expectations"] if not e["success"]}
    assert failed == {
        "gender value outside vocabulary": (1, 1), "duplicate user_id": (2, 2),
        "user_id missing": (1, 1), "item_id missing": (1, 1),
        "rating missing (NaN)": (2, 2), "rating not finite": (1, 1),
        "rating out of scale [1, 5]": (2, 2), "timestamp missing or unparseable": (1, 1),
        "timestamp before 1990-01-01": (1, 1), "item_id not in items table": (1, 1),
        # GX flags all 8 copies; set aside: the later copies, but not the good copy of the
        # bad row 3 (its first copy goes for its NaN rating)
        "duplicate (user_id, item_id, timestamp)": (8, 3),
        # 3 distinct unknown ids (ghost, ghost2 and the one users.parquet no longer has)
        # over 10 rows of 9 batches; GX counts each id once, at its first use
        "user_id not in users table": (3, 10),
        # the rows of two users set aside in users.parquet, spread over the whole log
        "user_id quarantined from users table": (31, 31),
    }
    assert all(e["agrees_with_gx"] is not False for e in summary["expectations"])
    # the planted copies and unknown ids lie in several 97-row batches
    assert len({r // SMALL for r in planted["duplicates"]}) >= 5
    assert {r // SMALL for r in planted["unknown"]} == {14, 15, 17, 18}
    q = pq.read_table(runs[SMALL]["root"] / "quarantine" / "interactions.parquet")
    reasons = dict(zip(q.column("source_row").to_pylist(), q.column("reason").to_pylist(),
                       strict=True))
    n = planted["rows"]
    dup = "duplicate (user_id, item_id, timestamp)"
    assert [r for r, why in reasons.items() if why == dup] == [1601, n + 2, n + 3]
    batches = {why: sorted({(r - 1) // SMALL for r, w in reasons.items() if w == why})
               for why in ("user_id not in users table", "user_id quarantined from users table")}
    assert batches == {"user_id not in users table": [0, 9, 10, 11, 13, 15, 16, 17, 18],
                       "user_id quarantined from users table": [*range(1, 10), *range(11, 18)]}
    assert reasons[4] == "rating missing (NaN)" and n + 1 not in reasons
    assert reasons[401] == "rating not finite; rating out of scale [1, 5]"
    assert summary["tables"]["interactions"]["rows_in"] == n + 3 == (
        summary["tables"]["interactions"]["rows_kept"] + len(reasons))


def test_a_clean_log_in_batches_is_the_log_whole(tmp_path: Path) -> None:
    """No bad rows: validated = canonical content, and both batch sizes agree byte for byte."""
    for rows in (WHOLE, 600):
        _run(tmp_path / str(rows), rows, damage=False)
    a, b = _files(tmp_path / str(WHOLE)), _files(tmp_path / "600")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    canonical = pq.read_table(tmp_path / "600/canonical/interactions.parquet")
    assert pq.read_table(tmp_path / "600/validated/interactions.parquet").equals(canonical)
    data = json.loads((tmp_path / "600/data.json").read_text())
    assert data["interactions"] == canonical.num_rows and data["quarantined"] == 0


# --------------------------------------------------------------------------------------------
# the pieces that keep the whole log's state compact


def test_choice_draws_what_numpy_draws_and_leaves_the_same_state() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 3, 1000, 50_000):
        p = rng.lognormal(0, 1.5, n)
        p /= p.sum()
        for size in (0, 1, 5000):
            ours, theirs = np.random.default_rng(n), np.random.default_rng(n)
            assert np.array_equal(choice(ours, n, size, p, buckets=1 << 10),
                                  theirs.choice(n, size=size, p=p))
            assert ours.random() == theirs.random()


def test_first_unique_is_pandas_unique() -> None:
    rng = np.random.default_rng(1)
    for values in (np.zeros(0, np.int64), np.array([5]), rng.integers(0, 40, 3000),
                   rng.integers(0, 2**40, 5000), np.array([2**62, 3, 2**62])):
        assert np.array_equal(first_unique(values), pd.unique(values))


def test_id_codes_number_known_ids_then_unknown_ones_across_batches() -> None:
    codes = IdCodes(pa.array(["a", "b", None, "a", "c"]))
    assert codes(pa.array(["c", None, "x", "a", "x"])).tolist() == [2, -1, 3, 0, 3]
    assert codes(pa.chunked_array([["y", "x"], ["b", "q"]])).tolist() == [4, 3, 1, 5]
    assert codes.names().to_pylist() == ["a", "b", "c", "x", "y", "q"]
    assert codes.take(np.array([4, -1, 0])).to_pylist() == ["y", None, "a"]


def test_sort_order_is_a_stable_sort_across_packed_words() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(0, 400))
        df = pd.DataFrame({c: rng.integers(0, int(rng.choice([2, 7, 2**33])), n)
                           for c in "abc"})
        keys = list(rng.permutation(list("abc")))[: int(rng.integers(1, 4))]
        np.testing.assert_array_equal(sort_order(df, keys),
                                      df.sort_values(keys, kind="stable").index.to_numpy())


def test_duplicates_are_exact_even_when_every_hash_collides(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    rng = np.random.default_rng(3)
    n = 600
    user, item = rng.integers(-1, 6, n).astype(np.int32), rng.integers(-1, 5, n).astype(np.int32)
    ts, ts_null = rng.integers(0, 4, n), rng.random(n) < 0.1
    others = rng.random(n) < 0.2
    frame = pd.DataFrame({"u": user, "i": item,
                          "t": pd.Series(ts, dtype="Int64").mask(ts_null)})
    key = frame.astype({"u": "Int64", "i": "Int64"})
    key[["u", "i"]] = key[["u", "i"]].mask(key[["u", "i"]] < 0)
    missing = key.isna().all(axis=1).to_numpy()
    want_flagged = key.duplicated(keep=False).to_numpy() & ~missing
    good = key[~others]
    want_q = np.zeros(n, dtype=bool)
    want_q[~others] = good.duplicated(keep="first").to_numpy()
    want_q |= others & key.duplicated(keep="first").to_numpy() & want_flagged
    for hashing in (None, lambda values, **kw: np.zeros(len(values), np.uint64)):
        if hashing is not None:    # every row a candidate: the exact comparison decides
            monkeypatch.setattr(pd.util, "hash_array", hashing)
        got = duplicates(user, item, ts, ts_null, others)
        np.testing.assert_array_equal(got.flagged, want_flagged)
        np.testing.assert_array_equal(got.quarantine, want_q)
        first = {}
        for row, k in enumerate(map(tuple, key.astype(object).to_numpy())):
            first.setdefault(k, row)
        expect = [first[tuple(key.astype(object).iloc[r])] for r in got.rows]
        assert got.first.tolist() == expect


def test_gx_runs_without_its_batch_fingerprint_and_restores_the_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """GX's fingerprint (a hash of every cell, for its own metadata) is off only while GX
    runs: the verdict is GX's as before, and GX's setting is left as it was."""
    import great_expectations.execution_engine.pandas_execution_engine as engine

    from metarec.data.gx import GXRunner
    from metarec.data.validation import Rule

    hashed: list[int] = []
    monkeypatch.setattr(engine, "hash_pandas_dataframe", lambda df: hashed.append(len(df)))
    before = engine.HASH_THRESHOLD
    frame = pd.DataFrame({"x": [1.0, None, 3.0], "source_row": [1, 2, 3]})
    rule = Rule("t", "t", "x", "x missing", frame["x"].isna(),
                ("expect_column_values_to_not_be_null", {"column": "x"}))
    result = GXRunner(examples=2).run("t", frame, [(0, rule)])
    assert result[0]["unexpected_count"] == 1 and result[0]["examples"] == [
        {"source_row": 2, "x": "NaN"}]
    assert engine.HASH_THRESHOLD == before and hashed == []
