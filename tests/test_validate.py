"""validate stage: one tiny hand-written canonical folder per data rule, exact assertions.

The clean fixture: 3 users (no source_row column, so rows are named by position in
users.parquet), 3 items (with source_row), 6 interactions (source rows 1..6) in 2000-2001.
Each malformed case changes one cell or row and states exactly which rows are quarantined
with which reason (policy quarantine) and which file/row/column the DataError names (policy
fail). Every run also checks that the pandas masks and Great Expectations agree.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metarec.config import ValidateParams
from metarec.errors import DataError
from metarec.stages import validate as stage

T0 = 946_684_800  # 2000-01-01T00:00:00Z
SOURCES = {"interactions": "raw/ratings.csv", "users": "raw/users.csv", "items": "raw/items.csv"}

INTER_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                          ("rating", pa.float64()), ("timestamp", pa.int64()),
                          ("source_row", pa.int64())])
USER_SCHEMA = pa.schema([("user_id", pa.string()), ("gender", pa.string()),
                         ("age", pa.float64())])
ITEM_SCHEMA = pa.schema([("item_id", pa.string()), ("title", pa.string()),
                         ("genres", pa.list_(pa.string())), ("source_row", pa.int64())])


def clean_tables() -> dict[str, dict[str, list[Any]]]:
    """Column-wise data of a valid canonical folder (edited in place by the cases)."""
    return {
        "interactions": {
            "user_id": ["u1", "u1", "u2", "u2", "u3", "u3"],
            "item_id": ["i1", "i2", "i1", "i3", "i2", "i3"],
            "rating": [4.0, 3.0, 5.0, 1.0, 2.0, 4.5],
            "timestamp": [T0 + 10, T0 + 20, T0 + 30, T0 + 40, T0 + 50, T0 + 60],
            "source_row": [1, 2, 3, 4, 5, 6],
        },
        "users": {"user_id": ["u1", "u2", "u3"], "gender": ["F", "M", None],
                  "age": [25.0, 31.0, 47.0]},
        "items": {"item_id": ["i1", "i2", "i3"], "title": ["A (1995)", "B (1996)", "C (1997)"],
                  "genres": [["Action"], ["Comedy", "Drama"], []], "source_row": [1, 2, 3]},
    }


def clean_schema() -> dict[str, Any]:
    return {
        "dataset": "tiny", "source_files": dict(SOURCES),
        "rating": {"kind": "explicit", "min": 1.0, "max": 5.0},
        "users": {"gender": {"kind": "categorical", "cardinality": 2, "vocabulary": ["F", "M"]},
                  "age": {"kind": "numeric", "cardinality": None, "vocabulary": None}},
        "items": {"title": {"kind": "text", "cardinality": None, "vocabulary": None},
                  "genres": {"kind": "multicategorical", "cardinality": 3,
                             "vocabulary": ["Action", "Comedy", "Drama"]}},
    }


def write_canonical(root: Path, data: dict[str, dict[str, list[Any]]] | None = None,
                    schema: dict[str, Any] | None = None,
                    arrow_schemas: dict[str, pa.Schema] | None = None) -> Path:
    """Write a canonical folder as ingest would (explicit Arrow types)."""
    data = data or clean_tables()
    types = {"interactions": INTER_SCHEMA, "users": USER_SCHEMA, "items": ITEM_SCHEMA}
    types.update(arrow_schemas or {})
    root.mkdir(parents=True, exist_ok=True)
    for name, cols in data.items():
        pq.write_table(pa.table(cols, schema=types[name]), root / f"{name}.parquet")
    (root / "schema.json").write_text(json.dumps(schema or clean_schema()), encoding="utf-8")
    return root


def run_stage(tmp_path: Path, policy: str = "quarantine", **kw: Any) -> dict[str, Any]:
    params = ValidateParams(policy=policy, **kw)  # type: ignore[arg-type]
    return stage.run(params, tmp_path / "canonical", tmp_path / "validated",
                     tmp_path / "quarantine", tmp_path / "report")


def quarantined(tmp_path: Path) -> dict[str, list[tuple[Any, str]]]:
    """Per table: (source_row or user_id, reason) of every quarantined row."""
    out = {}
    for name in ("interactions", "users", "items"):
        rows = pq.read_table(tmp_path / "quarantine" / f"{name}.parquet").to_pylist()
        key = "user_id" if name == "users" else "source_row"
        out[name] = [(r[key], r["reason"]) for r in rows]
    return out


def set_cell(table: str, column: str, i: int, value: Any) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        data[table][column][i] = value
    return edit


def add_row(table: str, row: dict[str, Any]) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        for k, val in row.items():
            data[table][k].append(val)
    return edit


def both(*edits: Callable[[dict], None]) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        for e in edits:
            e(data)
    return edit


FUTURE = int(time.time()) + 10 * 86_400
USERS_PARQUET = "users.parquet"  # users carry no source_row: the canonical file is named

# id, edit, expected quarantine {table: [(key, reason)]}, expected DataError (file, row, column)
CASES = [
    ("nan_rating", set_cell("interactions", "rating", 1, math.nan),
     {"interactions": [(2, "rating missing (NaN)")]},
     ("raw/ratings.csv", 2, "rating", "expect_column_values_to_not_be_null")),
    ("inf_rating", set_cell("interactions", "rating", 2, math.inf),
     {"interactions": [(3, "rating not finite; rating out of scale [1, 5]")]},
     ("raw/ratings.csv", 3, "rating", "expect_column_values_to_not_be_in_set")),
    ("rating_out_of_scale", set_cell("interactions", "rating", 3, 7.0),
     {"interactions": [(4, "rating out of scale [1, 5]")]},
     ("raw/ratings.csv", 4, "rating", "expect_column_values_to_be_between")),
    ("null_timestamp", set_cell("interactions", "timestamp", 0, None),
     {"interactions": [(1, "timestamp missing or unparseable")]},
     ("raw/ratings.csv", 1, "timestamp", "expect_column_values_to_not_be_null")),
    ("negative_timestamp", set_cell("interactions", "timestamp", 4, -5),
     {"interactions": [(5, "timestamp before 1990-01-01")]},
     ("raw/ratings.csv", 5, "timestamp", "expect_column_values_to_be_between")),
    ("too_old_timestamp", set_cell("interactions", "timestamp", 4, 315_532_800),  # 1980
     {"interactions": [(5, "timestamp before 1990-01-01")]},
     ("raw/ratings.csv", 5, "timestamp", "expect_column_values_to_be_between")),
    ("future_timestamp", set_cell("interactions", "timestamp", 5, FUTURE),
     {"interactions": [(6, "timestamp after now")]},
     ("raw/ratings.csv", 6, "timestamp", "expect_column_values_to_be_between")),
    ("duplicate_interaction", add_row("interactions", {
        "user_id": "u1", "item_id": "i1", "rating": 2.0, "timestamp": T0 + 10,
        "source_row": 7}),
     {"interactions": [(7, "duplicate (user_id, item_id, timestamp)")]},
     ("raw/ratings.csv", 7, "user_id, item_id, timestamp",
      "expect_compound_columns_to_be_unique")),
    ("unknown_user", set_cell("interactions", "user_id", 1, "u9"),
     {"interactions": [(2, "user_id not in users table")]},
     ("raw/ratings.csv", 2, "user_id", "expect_column_values_to_not_be_null")),
    ("unknown_item", set_cell("interactions", "item_id", 2, "i9"),
     {"interactions": [(3, "item_id not in items table")]},
     ("raw/ratings.csv", 3, "item_id", "expect_column_values_to_not_be_null")),
    ("null_user_id", set_cell("interactions", "user_id", 3, None),
     {"interactions": [(4, "user_id missing")]},
     ("raw/ratings.csv", 4, "user_id", "expect_column_values_to_not_be_null")),
    ("gender_outside_vocabulary", set_cell("users", "gender", 1, "X"),
     {"users": [("u2", "gender value outside vocabulary")],
      "interactions": [(3, "user_id quarantined from users table"),
                       (4, "user_id quarantined from users table")]},
     (USERS_PARQUET, 2, "gender", "expect_column_values_to_be_in_set")),
    ("genre_outside_vocabulary", set_cell("items", "genres", 2, ["Drama", "Horror"]),
     {"items": [(3, "genres value outside vocabulary")],
      "interactions": [(4, "item_id quarantined from items table"),
                       (6, "item_id quarantined from items table")]},
     ("raw/items.csv", 3, "genres", "expect_column_values_to_be_in_set")),
    ("duplicate_user_id", set_cell("users", "user_id", 2, "u1"),  # u3's row now says u1
     {"users": [("u1", "duplicate user_id"), ("u1", "duplicate user_id")],
      "interactions": [(1, "user_id quarantined from users table"),
                       (2, "user_id quarantined from users table"),
                       (5, "user_id not in users table"),
                       (6, "user_id not in users table")]},
     (USERS_PARQUET, 1, "user_id", "expect_column_values_to_be_unique")),
    ("null_id_in_users", set_cell("users", "user_id", 2, None),
     {"users": [(None, "user_id missing")],
      "interactions": [(5, "user_id not in users table"), (6, "user_id not in users table")]},
     (USERS_PARQUET, 3, "user_id", "expect_column_values_to_not_be_null")),
    ("two_problems_one_row", both(set_cell("interactions", "rating", 0, -1.0),
                                  set_cell("interactions", "user_id", 0, "u9")),
     {"interactions": [(1, "rating out of scale [1, 5]; user_id not in users table")]},
     ("raw/ratings.csv", 1, "rating", "expect_column_values_to_be_between")),
    # the first copy is bad (NaN rating): it goes, the good later copy stays
    ("duplicate_of_a_bad_row", both(set_cell("interactions", "rating", 0, math.nan), add_row(
        "interactions", {"user_id": "u1", "item_id": "i1", "rating": 2.0,
                         "timestamp": T0 + 10, "source_row": 7})),
     {"interactions": [(1, "rating missing (NaN)")]},
     ("raw/ratings.csv", 1, "rating", "expect_column_values_to_not_be_null")),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_quarantine(tmp_path: Path, case: tuple) -> None:
    case_id, edit, expected, _ = case
    data = clean_tables()
    edit(data)
    write_canonical(tmp_path / "canonical", data)
    summary = run_stage(tmp_path)

    got = quarantined(tmp_path)
    for name in ("interactions", "users", "items"):
        assert got[name] == expected.get(name, []), name
        n_in = len(data[name][next(iter(data[name]))])
        t = summary["tables"][name]
        assert (t["rows_in"], t["rows_quarantined"]) == (n_in, len(expected.get(name, [])))
        assert t["rows_kept"] == n_in - t["rows_quarantined"]
        assert pq.read_table(tmp_path / "validated" / f"{name}.parquet").num_rows == t["rows_kept"]
    assert summary["passed"] is False
    assert_gx_ran_and_agrees(summary)
    failed = {e["reason"] for e in summary["expectations"] if not e["success"]}
    reasons = {r for rows in expected.values() for _, rr in rows for r in rr.split("; ")}
    # GX flags both copies of a duplicate; the rule sets aside neither (the first is bad)
    if case_id == "duplicate_of_a_bad_row":
        reasons.add("duplicate (user_id, item_id, timestamp)")
    assert failed == reasons


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fail_names_file_row_column(tmp_path: Path, case: tuple) -> None:
    _, edit, _, (file, row, column, expectation) = case
    data = clean_tables()
    edit(data)
    canonical = write_canonical(tmp_path / "canonical", data)
    if file == USERS_PARQUET:
        file = str(canonical / USERS_PARQUET)
    with pytest.raises(DataError) as info:
        run_stage(tmp_path, policy="fail")
    err = info.value
    assert (err.file, err.row, err.column) == (file, row, column)
    assert f"file {file}, row {row}, column {column!r}" in str(err)
    assert expectation in str(err)
    # the summary is written before failing; nothing is written to out/ or quarantine/
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["passed"] is False
    assert not (tmp_path / "validated").exists() and not (tmp_path / "quarantine").exists()


def test_summary_entry_is_exact(tmp_path: Path) -> None:
    data = clean_tables()
    data["interactions"]["rating"][3] = 7.0
    write_canonical(tmp_path / "canonical", data)
    summary = run_stage(tmp_path)
    entry = next(e for e in summary["expectations"]
                 if e["expectation_type"] == "expect_column_values_to_be_between"
                 and e["column"] == "rating")
    assert entry == {
        "table": "interactions", "frame": "interactions", "column": "rating",
        "reason": "rating out of scale [1, 5]", "expectation_type":
        "expect_column_values_to_be_between", "kwargs": {"column": "rating", "min_value": 1.0,
                                                         "max_value": 5.0},
        "success": False, "element_count": 6, "unexpected_count": 1, "mask_count": 1,
        "rows_quarantined": 1, "agrees_with_gx": True,
        "examples": [{"rating": 7.0, "source_row": 4}],
    }
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Result: **FAILED**" in report and "rating out of scale [1, 5] (1)" in report


def test_max_timestamp_param(tmp_path: Path) -> None:
    write_canonical(tmp_path / "canonical")
    run_stage(tmp_path, max_timestamp="2000-01-01T00:00:45Z")
    assert quarantined(tmp_path)["interactions"] == [
        (5, "timestamp after 2000-01-01T00:00:45Z"), (6, "timestamp after 2000-01-01T00:00:45Z")]


STRUCTURAL = [
    ("missing_rating_column", "interactions", INTER_SCHEMA.remove(2), "rating",
     "required column missing"),
    ("timestamp_as_string", "interactions", INTER_SCHEMA.set(3, pa.field("timestamp",
                                                                      pa.string())),
     "timestamp", "type string, expected int64 seconds"),
    ("genres_as_string", "items", ITEM_SCHEMA.set(2, pa.field("genres", pa.string())),
     "genres", "type string, expected list<string>"),
]


@pytest.mark.parametrize("policy", ["fail", "quarantine"])
@pytest.mark.parametrize("case", STRUCTURAL, ids=[c[0] for c in STRUCTURAL])
def test_structure_errors_raise_under_both_policies(tmp_path: Path, case: tuple,
                                                    policy: str) -> None:
    _, table, schema, column, message = case
    data = clean_tables()
    if column not in schema.names:
        del data[table][column]
    else:
        data[table][column] = [str(x) for x in data[table][column]]
    canonical = write_canonical(tmp_path / "canonical", data, arrow_schemas={table: schema})
    with pytest.raises(DataError) as info:
        run_stage(tmp_path, policy=policy)
    path = str(canonical / f"{table}.parquet")
    assert (info.value.file, info.value.column) == (path, column)
    assert f"file {path}, column {column!r}: " in str(info.value) and message in str(info.value)


def assert_gx_ran_and_agrees(summary: dict) -> None:
    """Every expectation GX evaluates agrees with the quarantine mask, and GX did run: only
    the derived rules (no GX expectation) carry ``agrees_with_gx: None``."""
    ran = [e for e in summary["expectations"] if e["expectation_type"] != "derived"]
    assert len(ran) >= 10, [e["reason"] for e in summary["expectations"]]
    # GX checked the column the entry names, exactly (GX resolves column names
    # case-insensitively, so a misspelt expectation would still agree); a join frame
    # ("interactions->users") names the looked-up column after its table
    for e in ran:
        want = (e["column"] if "->" not in e["frame"]
                else f"{e['frame'].split('->')[1]}_{e['column']}")
        assert e["kwargs"].get("column", want) == want, e
    assert all(e["agrees_with_gx"] is True for e in ran), [e for e in ran
                                                            if e["agrees_with_gx"] is not True]
    assert all(e["agrees_with_gx"] is None for e in summary["expectations"]
               if e["expectation_type"] == "derived")


def test_clean_input_passes_and_reruns_byte_identical(tmp_path: Path) -> None:
    canonical = write_canonical(tmp_path / "canonical")
    summary = run_stage(tmp_path, policy="fail")
    assert summary["passed"] is True
    assert all(e["success"] for e in summary["expectations"])
    assert_gx_ran_and_agrees(summary)
    for name in ("interactions", "users", "items"):
        assert summary["tables"][name]["rows_quarantined"] == 0
        assert pq.read_table(tmp_path / "validated" / f"{name}.parquet").equals(
            pq.read_table(canonical / f"{name}.parquet"))
        empty = pq.read_table(tmp_path / "quarantine" / f"{name}.parquet")
        assert empty.num_rows == 0 and empty.column_names[-1] == "reason"
    assert (tmp_path / "validated" / "schema.json").read_bytes() == (
        canonical / "schema.json").read_bytes()

    outputs = sorted(p for d in ("validated", "quarantine", "report")
                     for p in (tmp_path / d).iterdir())
    first = {p: p.read_bytes() for p in outputs}
    run_stage(tmp_path, policy="fail")
    assert {p: p.read_bytes() for p in outputs} == first


def test_cli_exit_code_on_fail(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from metarec.cli import app

    data = clean_tables()
    data["interactions"]["rating"][1] = math.nan
    write_canonical(tmp_path / "canonical", data)
    params = tmp_path / "params.yaml"
    params.write_text("validate:\n  policy: fail\n", encoding="utf-8")
    result = CliRunner().invoke(app, [
        "validate", "--in", str(tmp_path / "canonical"), "--out", str(tmp_path / "v"),
        "--quarantine", str(tmp_path / "q"), "--report", str(tmp_path / "r"),
        "--params", str(params)])
    assert result.exit_code == 2
    assert (tmp_path / "r" / "summary.json").exists()


def test_duplicate_key_codes_match_pandas_duplicated() -> None:
    """The factorised key treats nulls like DataFrame.duplicated does (null == null)."""
    import pandas as pd

    from metarec.data.validation import INTERACTION_KEY, _key_codes

    df = pd.DataFrame({"user_id": ["a", "a", None, None, "b", "a", "ab"],
                       "item_id": ["x", "x", "y", "y", "x", "x", "x"],
                       "timestamp": pd.array([1, 1, None, None, 1, 2, 1], dtype="Int64")})
    codes = pd.Series(_key_codes(df))
    assert codes.dtype == np.int64      # exact integers: float codes would merge keys past 2^53
    for keep in ("first", False):
        assert codes.duplicated(keep=keep).tolist() == df.duplicated(
            INTERACTION_KEY, keep=keep).tolist()


def test_duplicate_key_codes_renumber_before_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the code limit the codes are re-numbered (instead of overflowing int64)."""
    import numpy as np
    import pandas as pd

    from metarec.data import validation

    n = 40_000
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"user_id": rng.integers(0, n, n).astype(str),
                       "item_id": rng.integers(0, n, n).astype(str),
                       "timestamp": pd.array(rng.integers(0, 3, n), dtype="Int64")})
    monkeypatch.setattr(validation, "CODE_LIMIT", 1_000)  # forces a re-numbering per column
    big = pd.concat([df, df.iloc[:5]], ignore_index=True)
    codes = pd.Series(validation._key_codes(big))
    assert codes.duplicated().tolist() == big.duplicated().tolist()


def test_duplicate_key_codes_stay_below_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Codes are int64 and re-numbered whenever the next product would pass the limit, so
    they stay below it whenever the rows allow (n x width < limit)."""
    import numpy as np
    import pandas as pd

    from metarec.data import validation

    n = 3_000
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"user_id": np.arange(n).astype(str),
                       "item_id": rng.integers(0, n, n).astype(str),
                       "timestamp": pd.array(rng.integers(0, 4, n), dtype="Int64")})
    monkeypatch.setattr(validation, "CODE_LIMIT", 2**24)  # users x items fits, x 5 does not
    codes = validation._key_codes(df)
    assert codes.dtype == np.int64
    assert int(codes.max()) < 2**24
    assert pd.Series(codes).duplicated().tolist() == df.duplicated().tolist()


def test_nullable_ratings_are_flagged_missing() -> None:
    """A nullable (pd.NA) rating column is checked like a NaN one, not a crash."""
    import pandas as pd

    from metarec.data.validation import interaction_rules

    df = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i1"],
                       "rating": pd.array([4.0, None], dtype="Float64"),
                       "timestamp": pd.array([T0, T0], dtype="Int64")})
    rules = {r.reason: r.frame_mask.tolist()
             for r in interaction_rules(df, {"min": 1, "max": 5}, 0, 2 * T0, "a", "b")}
    assert rules["rating missing (NaN)"] == [False, True]
    assert rules["rating not finite"] == [False, False]


def test_large_list_item_features_are_lists(tmp_path: Path) -> None:
    """Arrow's large_list<string> (what some writers produce for long lists) is a
    multi-valued feature like list<string>; an unknown feature kind names its column."""
    schema = ITEM_SCHEMA.set(2, pa.field("genres", pa.large_list(pa.string())))
    write_canonical(tmp_path / "canonical", arrow_schemas={"items": schema})
    summary = run_stage(tmp_path, policy="fail")
    assert summary["passed"] is True
    assert pq.read_table(tmp_path / "validated" / "items.parquet").column(
        "genres").to_pylist() == [["Action"], ["Comedy", "Drama"], []]
    bad = clean_schema()
    bad["items"]["genres"]["kind"] = "tags"
    write_canonical(tmp_path / "c2", schema=bad)
    with pytest.raises(DataError, match=r"schema\.json, column 'genres'.*kind 'tags'"):
        stage.run(ValidateParams(), tmp_path / "c2", tmp_path / "v2", tmp_path / "q2",
                  tmp_path / "r2")


@settings(max_examples=12, deadline=None, derandomize=True)
@given(picks=st.lists(st.sampled_from([c[0] for c in CASES]), min_size=1, max_size=4,
                      unique=True))
def test_quarantine_accounts_for_every_row_for_any_mix_of_bad_rows(picks: list[str]) -> None:
    """Property: whatever mix of bad cells and rows, rows in = kept + quarantined per table,
    kept and quarantined rows partition the input, and every case's own row is set aside."""
    cases = {c[0]: c for c in CASES}
    data = clean_tables()
    for name in picks:
        cases[name][1](data)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_canonical(root / "canonical", data)
        summary = run_stage(root)
        got = quarantined(root)
        for table in ("interactions", "users", "items"):
            n_in = len(data[table][next(iter(data[table]))])
            t = summary["tables"][table]
            kept = pq.read_table(root / "validated" / f"{table}.parquet").to_pylist()
            assert t["rows_in"] == n_in == t["rows_kept"] + t["rows_quarantined"], table
            assert (len(kept), len(got[table])) == (t["rows_kept"], t["rows_quarantined"])
            if table != "users":     # source rows: each input row is kept or quarantined, once
                rows = sorted([r["source_row"] for r in kept] + [k for k, _ in got[table]])
                assert rows == sorted(data[table]["source_row"]), table
        for name in picks:           # a row a case names is quarantined (maybe for more)
            for table, rows in cases[name][2].items():
                assert {k for k, _ in rows} <= {k for k, _ in got[table]}, (name, table)
    assert summary["passed"] is False
