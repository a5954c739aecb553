"""Bad input loses nothing and fails loudly: the corpus in tests/corpus through the real CLI.

Each case (tests/corpus/manifest.yaml) is ingested with a params.yaml written into tmp_path,
then validated under policy fail and policy quarantine. An ingest error must exit 2 with a
message naming file, row and column (where they apply) and leave the previous output folder
as it was; a validation failure must exit 2 and write nothing to the validated or quarantine
folders; a quarantine must set aside exactly the stated rows, with their reasons, and
rows in = rows kept + rows quarantined, read back from the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from metarec.cli import app
from metarec.io import LOCK_NAME

# each case runs the CLI's ingest and validate on a bad input (~1 s each, ~40 s in all)
pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "corpus"
MANIFEST = yaml.safe_load((CORPUS / "manifest.yaml").read_text(encoding="utf-8"))
TABLES = ("interactions", "users", "items")
RUNNER = CliRunner()


def _ingest_params(case: dict[str, Any]) -> dict[str, Any]:
    folder = CORPUS / case["case"]
    source = case.get("source", "table")
    if source != "table":
        return {"source": source, "path": str(folder)}
    log = next(p for p in sorted(folder.iterdir()) if p.stem == "interactions")
    table: dict[str, Any] = {"interactions": str(log), **case.get("table", {})}
    if (folder / "users.csv").exists() or case["case"] == "missing_users_file":
        table.update(users=str(folder / "users.csv"),
                     user_features={"gender": "categorical", "age": "numeric"})
    if (folder / "items.csv").exists():
        table.update(items=str(folder / "items.csv"),
                     item_features={"genres": "multicategorical"})
    return {"source": "table", "table": table}


def _cli(*args: str) -> tuple[int, str]:
    result = RUNNER.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a raw traceback is a failure of this test
    return result.exit_code, " ".join(result.output.split())


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def _key(row: dict[str, Any], table: str) -> Any:
    return row["source_row"] if "source_row" in row else row[f"{table[:-1]}_id"]


@pytest.mark.parametrize("case", MANIFEST, ids=[c["case"] for c in MANIFEST])
def test_corpus_case(tmp_path: Path, case: dict[str, Any]) -> None:
    canonical = tmp_path / "canonical"
    canonical.mkdir()
    (canonical / "schema.json").write_text("previous complete output\n", encoding="utf-8")
    params = {}
    for policy in ("fail", "quarantine"):
        params[policy] = tmp_path / f"params-{policy}.yaml"
        params[policy].write_text(yaml.safe_dump(
            {"ingest": _ingest_params(case), "validate": {"policy": policy}},
            allow_unicode=True), encoding="utf-8")

    code, out = _cli("ingest", "--out", str(canonical), "--params", str(params["fail"]))
    if "ingest_error" in case:
        assert code == 2, out
        for text in case["ingest_error"]:
            assert text in out
        # nothing half-written: the previous folder is intact, no temporary folder is left
        # (the project's lock file stays: an flock is held on the open file, not its name)
        assert [p.name for p in canonical.iterdir()] == ["schema.json"]
        assert (canonical / "schema.json").read_text() == "previous complete output\n"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != LOCK_NAME) == [
            "canonical", "params-fail.yaml", "params-quarantine.yaml"]
        return
    assert code == 0, out
    assert sorted(p.name for p in canonical.iterdir()) == [
        "interactions.parquet", "items.parquet", "schema.json", "users.parquet"]
    inter = pq.read_table(canonical / "interactions.parquet")
    for col in ("user_id", "item_id"):
        if f"{col}s" in case:
            assert inter.column(col).to_pylist() == case[f"{col}s"]

    # policy fail: exit 2 naming file/row/column, or a pass
    dirs = {p: [tmp_path / p / d for d in ("validated", "quarantine", "report")]
            for p in ("fail", "quarantine")}
    code, out = _cli("validate", "--in", str(canonical), "--out", str(dirs["fail"][0]),
                     "--quarantine", str(dirs["fail"][1]), "--report", str(dirs["fail"][2]),
                     "--params", str(params["fail"]))
    if "fail_error" in case:
        assert code == 2, out
        for text in case["fail_error"]:
            assert text in out
        assert not dirs["fail"][0].exists() and not dirs["fail"][1].exists()
        assert (dirs["fail"][2] / "summary.json").exists()
    else:
        assert code == 0, out

    # policy quarantine: exactly the stated rows set aside; rows in = kept + quarantined
    code, out = _cli("validate", "--in", str(canonical), "--out", str(dirs["quarantine"][0]),
                     "--quarantine", str(dirs["quarantine"][1]), "--report",
                     str(dirs["quarantine"][2]), "--params", str(params["quarantine"]))
    assert code == 0, out
    expected = case.get("quarantine", {})
    for t in TABLES:
        rows_in = _rows(canonical / f"{t}.parquet")
        kept = _rows(dirs["quarantine"][0] / f"{t}.parquet")
        quarantined = _rows(dirs["quarantine"][1] / f"{t}.parquet")
        assert [[_key(r, t), r["reason"]] for r in quarantined] == expected.get(t, []), t
        assert len(rows_in) == len(kept) + len(quarantined), t
        # the very same rows, none lost or invented
        assert sorted(map(repr, rows_in)) == sorted(
            map(repr, kept + [{k: v for k, v in r.items() if k != "reason"}
                              for r in quarantined])), t


def _write_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text("validate:\n  policy: quarantine\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A validated folder from a clean corpus case (bom): input of the episodes checks."""
    tmp = tmp_path_factory.mktemp("validated")
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"ingest": _ingest_params(
        {"case": "bom"}), "validate": {"policy": "quarantine"}}), encoding="utf-8")
    assert _cli("ingest", "--out", str(tmp / "canonical"), "--params", str(params))[0] == 0
    assert _cli("validate", "--in", str(tmp / "canonical"), "--out", str(tmp / "validated"),
                "--quarantine", str(tmp / "q"), "--report", str(tmp / "r"),
                "--params", str(params))[0] == 0
    return tmp / "validated"


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
@pytest.mark.parametrize("name", ["interactions.parquet", "schema.json"])
def test_episodes_names_the_command_that_restores_its_input(
        tmp_path: Path, validated: Path, damage: str, name: str) -> None:
    inp = tmp_path / "validated"
    inp.mkdir()
    for f in validated.iterdir():
        (inp / f.name).write_bytes(f.read_bytes())
    if damage == "deleted":
        (inp / name).unlink()
    else:
        data = (inp / name).read_bytes()
        (inp / name).write_bytes(data[: len(data) // 2])
    code, out = _cli("episodes", "--in", str(inp), "--out", str(tmp_path / "episodes"),
                     "--metrics", str(tmp_path / "data.json"), "--params",
                     str(_write_params(tmp_path)))
    assert code == 2, out
    assert f"file {inp / name}" in out and "`dvc repro validate` (or `dvc pull`)" in out
    assert ("missing" if damage == "deleted" else "unreadable (truncated or corrupt?)") in out
    assert not (tmp_path / "episodes").exists()


def _episodes_dir(folder: Path, damaged: str) -> Path:
    """An episodes folder whose files are readable except ``damaged`` (truncated)."""
    import json

    import pyarrow as pa

    folder.mkdir()
    empty = {"ids": [], "features": {}}
    (folder / "vocab.json").write_text(json.dumps({"users": empty, "items": empty}))
    pq.write_table(pa.table({"user_id": pa.array([], pa.string())}), folder / "users.parquet")
    pq.write_table(pa.table({"item_id": pa.array([], pa.string())}), folder / "items.parquet")
    pq.write_table(pa.table({"user_id": pa.array([], pa.string())}),
                   folder / "episodes.parquet")
    data = (folder / damaged).read_bytes()
    (folder / damaged).write_bytes(data[: len(data) // 2])
    return folder


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_name_the_command_that_restores_episodes(
        tmp_path: Path, command: str) -> None:
    params = _write_params(tmp_path)
    extra = ["--models", str(tmp_path / "models")] if command == "evaluate" else [
        "--out", str(tmp_path / "models")]
    missing = tmp_path / "missing"
    missing.mkdir()
    code, out = _cli(command, "--episodes", str(missing), *extra, "--metrics",
                     str(tmp_path / "m.json"), "--params", str(params))
    assert code == 2 and f"file {missing / 'episodes.parquet'}: missing" in out, out
    assert "`dvc repro episodes` (or `dvc pull`)" in out
    for damaged in ("vocab.json", "users.parquet", "episodes.parquet"):
        folder = _episodes_dir(tmp_path / f"ep-{damaged}", damaged)
        code, out = _cli(command, "--episodes", str(folder), *extra, "--metrics",
                         str(tmp_path / "m.json"), "--params", str(params))
        assert code == 2, out
        assert f"file {folder / damaged}: unreadable (truncated or corrupt?)" in out
        assert "`dvc repro episodes` (or `dvc pull`)" in out
