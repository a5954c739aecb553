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

from metarec import dag, pipeline
from metarec.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_dvc_yaml_matches_the_code() -> None:
    assert pipeline.check(ROOT / "dvc.yaml") == []


def test_check_names_what_is_missing_or_extra(tmp_path: Path) -> None:
    text = (ROOT / "dvc.yaml").read_text(encoding="utf-8")
    text = text.replace("      - src/metarec/data/validation.py\n", "", 1)
    text = text.replace("      - src/metarec/stages/ingest.py\n",
                        "      - src/metarec/stages/ingest.py\n      - src/metarec/cli.py\n", 1)
    text = text.replace("      - evaluate.curve_k\n",
                        "      - evaluate.curve_k\n      - score.top_k\n", 1)
    text = text.replace("      - train.workers\n", "", 1)   # neutral: never listed
    broken = tmp_path / "dvc.yaml"
    broken.write_text(text, encoding="utf-8")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    problems = pipeline.check(broken)
    assert "validate: missing code dependency src/metarec/data/validation.py" in problems
    assert "ingest: extra code dependency src/metarec/cli.py" in problems
    assert "evaluate: extra params dependency score.top_k" in problems
    assert len(problems) == 3, problems
    pipeline.write(broken)                                    # --write mends every derived list
    assert pipeline.check(broken) == []


def test_params_are_listed_per_key_without_the_output_neutral_knobs() -> None:
    train = dag.params_deps("train")
    assert "train.inner_steps" in train and "model.embedding_dim" in train
    assert "train.ease" in train                         # an algorithm's own section, whole
    assert "train.workers" not in train and "train.threads" in train   # threads: the weights
    assert "evaluate.workers" not in dag.params_deps("evaluate")
    score = dag.params_deps("score")
    assert {"ingest.source", "ingest.table", "validate.policy"} <= set(score)
    assert "ingest.path" not in score and "score.engine_memory_mb" not in score


def test_the_files_params_name_become_data_dependencies(tmp_path: Path) -> None:
    """A table source's log and feature tables, a predefined split and the landing folder are
    dependencies of the stages that read them; --check names them, --write lists them with
    their key, and a stage refuses to run until dvc.yaml tracks them."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["ingest"].update(source="table", table={
        **params["ingest"]["table"], "interactions": "mine/log.csv", "items": "mine/items.csv"})
    params["score"]["landing_dir"] = "landing"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    problems = [p for p in pipeline.check(tmp_path / "dvc.yaml") if "data dependency" in p]
    assert problems == [
        "ingest: missing data dependency mine/items.csv (params: ingest.table.items)",
        "ingest: missing data dependency mine/log.csv (params: ingest.table.interactions)",
        "score: missing data dependency landing (params: score.landing_dir)",
        "backtest: missing data dependency landing (params: score.landing_dir)"]
    with pytest.raises(ParamsError, match=r"mine/log.csv.*metarec dag --write"):
        pipeline.check_stage("ingest", tmp_path / "params.yaml")
    pipeline.check_stage("train", tmp_path / "params.yaml")        # reads none of them
    pipeline.write(tmp_path / "dvc.yaml")
    spec = yaml.safe_load((tmp_path / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert spec["ingest"]["deps"][-2:] == ["mine/log.csv", "mine/items.csv"]
    assert "landing" in spec["score"]["deps"] and "landing" not in spec["train"]["deps"]
    assert "# from params: ingest.table.interactions" in (tmp_path / "dvc.yaml").read_text()
    assert pipeline.check(tmp_path / "dvc.yaml") == []
    pipeline.check_stage("ingest", tmp_path / "params.yaml")
    params["ingest"]["source"] = "movielens-100k"     # back: the marked deps go again
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    pipeline.write(tmp_path / "dvc.yaml")
    assert "mine/log.csv" not in (tmp_path / "dvc.yaml").read_text()
    assert pipeline.check(tmp_path / "dvc.yaml") == []


def test_closure_follows_function_level_imports_and_discovery() -> None:
    train = dag.code_deps("train")
    # the registry imports every algorithm module at run time (pkgutil discovery)
    assert "src/metarec/algorithms/ease.py" in train
    assert "src/metarec/algorithms/maml.py" in dag.code_deps("score")
    # the episodes stage calls its protocols; ingest never touches models or algorithms
    assert "src/metarec/data/protocols/melu.py" in dag.code_deps("episodes")
    assert not [p for p in dag.code_deps("ingest") if "/algorithms/" in p or "/models/" in p]


def _stages_importing(path: Path) -> list[str]:
    """The stages whose code closure holds ``path`` (what DVC must rerun when it changes)."""
    path = path.resolve()
    return [s for s in dag.STAGES
            if path in {p.resolve() for p in dag.closure(f"metarec.stages.{s}")}]


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
        expected = sorted(_stages_importing(ROOT / path.relative_to(repo)))
        if dirty != expected:
            wrong[str(path.relative_to(repo))] = (dirty, expected)
    assert wrong == {}
    assert dvc.status() == {}


@pytest.mark.slow
def test_dvc_sees_the_users_data_and_ignores_neutral_knobs(tmp_path: Path) -> None:
    """With a table source, an in-place edit of the user's log dirties ingest (and nothing
    else until ingest reruns); changing train.workers, which only spreads the fits over
    processes, dirties nothing."""
    from dvc.repo import Repo

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["ingest"].update(source="table", table={**params["ingest"]["table"],
                                                   "interactions": "mine/log.csv"})
    (repo / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (repo / "mine").mkdir()
    log = repo / "mine" / "log.csv"
    log.write_text("user_id,item_id,rating,timestamp\nu1,i1,4,1700000000\n")
    pipeline.write(repo / "dvc.yaml")
    _placeholders(repo)
    log.write_text("user_id,item_id,rating,timestamp\nu1,i1,4,1700000000\n")
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=repo, check=True)
    subprocess.run([str(BIN / "dvc"), "commit", "-f", "-q"], cwd=repo, check=True)
    dvc = Repo(str(repo))
    assert dvc.status() == {}
    params["train"]["workers"] = 7
    params["evaluate"]["workers"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    assert dvc.status() == {}
    with log.open("a") as fh:                      # the user appends a row in place
        fh.write("u2,i1,5,1700000100\n")
    assert sorted(key.rpartition(":")[2] for key in dvc.status()) == ["ingest"]
