"""The pipeline knows its own code: dvc.yaml's code and params dependencies are what the code
imports and reads, and editing any module makes `dvc status` list exactly the stages that
import it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metarec import dag

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_dvc_yaml_matches_the_code() -> None:
    assert dag.check(ROOT / "dvc.yaml") == []


def test_check_names_what_is_missing_or_extra(tmp_path: Path) -> None:
    text = (ROOT / "dvc.yaml").read_text(encoding="utf-8")
    text = text.replace("      - src/metarec/data/validation.py\n", "", 1)
    text = text.replace("      - src/metarec/stages/ingest.py\n",
                        "      - src/metarec/stages/ingest.py\n      - src/metarec/cli.py\n", 1)
    text = text.replace("      - evaluate\n", "      - evaluate\n      - score\n", 1)
    broken = tmp_path / "dvc.yaml"
    broken.write_text(text, encoding="utf-8")
    problems = dag.check(broken)
    assert "validate: missing code dependency src/metarec/data/validation.py" in problems
    assert "ingest: extra code dependency src/metarec/cli.py" in problems
    assert "evaluate: extra params dependency score" in problems
    dag.write(broken)                                    # --write mends the code lists
    assert [p for p in dag.check(broken) if "code" in p] == []


def test_closure_follows_function_level_imports_and_discovery() -> None:
    train = dag.code_deps("train")
    # the registry imports every algorithm module at run time (pkgutil discovery)
    assert "src/metarec/algorithms/ease.py" in train
    assert "src/metarec/algorithms/maml.py" in dag.code_deps("score")
    # the episodes stage calls its protocols; ingest never touches models or algorithms
    assert "src/metarec/data/protocols/melu.py" in dag.code_deps("episodes")
    assert not [p for p in dag.code_deps("ingest") if "/algorithms/" in p or "/models/" in p]


def _placeholders(repo: Path) -> None:
    """Every stage's outputs and data inputs as small files, so `dvc commit` can record a
    state in which everything is up to date without running the pipeline."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for body in spec.values():
        paths = [*(d for d in body.get("deps", []) if not str(d).startswith("src/"))]
        for kind in ("outs", "metrics", "plots"):
            paths += [o if isinstance(o, str) else next(iter(o)) for o in body.get(kind, [])]
        for raw in paths:
            path = repo / raw.replace("${score.as_of}", params["score"]["as_of"])
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "placeholder").write_text("x\n")


@pytest.mark.slow
def test_editing_each_module_dirties_exactly_the_stages_that_import_it(tmp_path: Path) -> None:
    from dvc.repo import Repo

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    _placeholders(repo)
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "commit", "-f", "-q"], cwd=repo, check=True)
    dvc = Repo(str(repo))
    assert dvc.status() == {}
    modules = sorted((repo / "src/metarec").rglob("*.py"))
    assert len(modules) > 40
    wrong = {}
    for path in modules:
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        try:
            dirty = sorted(key.rpartition(":")[2] for key in dvc.status())
        finally:
            path.write_bytes(original)
        expected = sorted(dag.stages_importing(ROOT / path.relative_to(repo)))
        if dirty != expected:
            wrong[str(path.relative_to(repo))] = (dirty, expected)
    assert wrong == {}
    assert dvc.status() == {}
