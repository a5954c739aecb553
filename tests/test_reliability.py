"""Reliability of the stages that write: SIGKILL at named points, reruns, two runs at once.

A small synthetic project is built once by the real `metarec` commands. Each stage that
writes (ingest, validate, train, score) is then run as a subprocess that kills itself at a
crash point (``METAREC_CRASH_AT=<stage>:<point>``, :func:`metarec.io.crash_point`): with a
file complete under its temporary name (``mid-write``), before the output folder is swapped
in (``before-swap``) and right after (``after-swap``). No timers: the run dies exactly there,
and exit code -9 proves it got there. After each kill every output is the old or the new one,
never a mix; the rerun leaves no temporary folder beside the outputs or in the temp folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import ROOT

pytestmark = pytest.mark.slow                          # real `metarec` subprocesses

AS_OF = "1998-02-20"
BIN = Path(sys.executable).parent
POINTS = ("mid-write", "before-swap", "after-swap")

# the params of the project, and the change that makes each stage write something new
SMALL = {
    "ingest": {"source": "synthetic", "allow_download": False,
               "synthetic": {"users": 300, "items": 60, "interactions": 4000, "days": 60,
                             "seed": 1}},
    "episodes": {"support_sizes": [3, 5]},
    "train": {"algorithms": ["maml"], "baselines": ["most_popular"], "seeds": [0],
              "max_steps": 2, "val_every": 1, "workers": 1, "accelerator": "cpu"},
    "score": {"model": "maml", "chunk_users": 8, "top_k": 4, "as_of": AS_OF},
}
CHANGE = {"ingest": {"ingest": {"synthetic": {"seed": 2}}},
          "validate": {"validate": {"min_timestamp": "1998-01-20"}},
          "train": {"train": {"max_steps": 3}},
          "score": {"score": {"top_k": 5}}}
# what each stage writes (relative to the project), the folder it swaps in first
OUTPUTS = {"ingest": ["canonical"], "validate": ["report", "validated", "quarantine"],
           "train": ["models"], "score": [f"recs/{AS_OF}"]}
ARGS = {"ingest": ["--out", "canonical"],
        "validate": ["--in", "canonical", "--out", "validated", "--quarantine", "quarantine",
                     "--report", "report"],
        "episodes": ["--in", "validated", "--out", "episodes", "--metrics", "data.json",
                     "--report", "report/summary.json"],
        "train": ["--episodes", "episodes", "--out", "models", "--metrics", "train.json"],
        "score": ["--as-of", AS_OF, "--in", "validated", "--models", "models", "--out",
                  "recs", "--selection", "selection.json"]}


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> None:
    for key, value in upd.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _set_params(root: Path, *changes: dict[str, Any]) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for change in (SMALL, *changes):
        _merge(params, change)
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def _env(root: Path, crash: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(root / "tmp")}
    env.pop("METAREC_LOCK_HELD", None)
    if crash:
        env["METAREC_CRASH_AT"] = crash
    return env


def _metarec(root: Path, stage: str, crash: str | None = None,
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "metarec"), stage, *ARGS[stage], "--params", "params.yaml", *extra]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True,
                          env=_env(root, crash), timeout=600)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ingest -> validate -> episodes -> train by the stage functions (in this process, to
    spare four interpreter starts), then `metarec score` (the batch every rerun must equal)."""
    from metarec.params import load_params
    from metarec.stages import episodes, ingest, train, validate

    root = tmp_path_factory.mktemp("crash") / "project"
    (root / "tmp").mkdir(parents=True)
    _set_params(root)
    p = load_params(root / "params.yaml")
    with contextlib.chdir(root):
        ingest.run(p.ingest, "canonical")
        validate.run(p.validate, "canonical", "validated", "quarantine", "report")
        episodes.run(p.episodes, "validated", "episodes", "data.json", "report/summary.json")
        train.run(p.model, p.train, "episodes", "models", "train.json")
    done = _metarec(root, "score")
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.fixture
def project(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built project (a test may leave it in any state)."""
    root = tmp_path / "project"
    shutil.copytree(built, root, symlinks=True)
    return root


def _snapshot(root: Path, rel: str) -> dict[str, Any] | None:
    """An output as comparable content: every file's bytes; a checkpoint (whose bytes hold
    fit times) by the training params it records, which the change alters."""
    folder = root / rel
    if not folder.exists():
        return None
    out: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "logs" not in p.parts):
        key = str(path.relative_to(folder))
        out[key] = (torch.load(path, weights_only=False)["params"]["train"]
                    if path.suffix == ".pt" else path.read_bytes())
    return out


def _leftovers(root: Path, stage: str) -> list[str]:
    """Temporary files and folders beside the stage's outputs and in its temp folder."""
    found = []
    for rel in OUTPUTS[stage]:
        target = root / rel
        found += [p.name for p in target.parent.iterdir()
                  if p.name.startswith(f".{target.name}.")]
    found += [p.name for p in (root / "tmp").iterdir() if p.name.startswith("metarec-")]
    return found


@pytest.mark.parametrize("stage", ["ingest", "validate", "train", "score"])
def test_a_kill_at_each_crash_point_leaves_the_old_or_the_new_outputs(project: Path,
                                                                      stage: str) -> None:
    outs = OUTPUTS[stage]
    old = {rel: _snapshot(project, rel) for rel in outs}
    assert all(old.values())
    _set_params(project, CHANGE[stage])
    after = {}
    for point in POINTS:
        done = _metarec(project, stage, crash=f"{stage}:{point}")
        assert done.returncode == -9, (point, done.returncode, done.stderr[-3000:])
        after[point] = {rel: _snapshot(project, rel) for rel in outs}
        if point != "after-swap":
            assert _leftovers(project, stage), point     # what the rerun must sweep
    done = _metarec(project, stage)
    assert done.returncode == 0, done.stderr[-3000:]
    new = {rel: _snapshot(project, rel) for rel in outs}
    assert new[outs[0]] != old[outs[0]]                  # the change makes new outputs
    assert after["mid-write"] == old and after["before-swap"] == old
    swapped = after["after-swap"]
    assert swapped[outs[0]] == new[outs[0]]              # the first folder swapped in
    for rel in outs[1:]:
        assert swapped[rel] in (old[rel], new[rel]), rel
    assert _leftovers(project, stage) == []


def _batch(root: Path) -> dict[str, bytes] | None:
    folder = root / "recs" / AS_OF
    if not folder.exists():
        return None
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_kill_with_no_batch_yet_leaves_none_and_the_rerun_writes_it(project: Path) -> None:
    reference = _batch(project)
    shutil.rmtree(project / "recs" / AS_OF)
    for point in ("mid-write", "before-swap"):
        done = _metarec(project, "score", crash=f"score:{point}")
        assert done.returncode == -9, done.stderr[-2000:]
        assert _batch(project) is None
        assert [p.name for p in (project / "recs").iterdir()
                if not p.name.startswith(".")] == []
    done = _metarec(project, "score")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _batch(project) == reference
    assert [p.name for p in (project / "recs").iterdir()] == [AS_OF]
    assert _leftovers(project, "score") == []


def test_a_second_run_fails_fast_while_one_holds_the_project_lock(project: Path) -> None:
    """While another run holds the project lock, `metarec score` and `metarec train` exit 2
    naming the holder (pid, command, start time), and touch nothing.

    The test process holds the lock itself (exactly what a running stage does) and releases
    it only after the second run has returned: a run that waited for the lock instead of
    failing would never return and trip the subprocess timeout."""
    from metarec.io import lock_file, project_lock

    lock = lock_file(project)
    reference = _batch(project)
    models = _snapshot(project, "models")
    with project_lock(lock, "metarec score"):
        second = _metarec(project, "score")
        retrain = _metarec(project, "train")
    for done in (second, retrain):
        assert done.returncode == 2, done.stderr[-2000:]
        err = " ".join(done.stderr.split())
        assert "another run is already running" in err and str(lock) in err.replace(" ", "")
        assert f"pid {os.getpid()}, metarec score, since " in err    # names the holder
    assert _batch(project) == reference                 # the failed runs touched nothing
    assert _snapshot(project, "models") == models
    assert _metarec(project, "score").returncode == 0  # once free the same command runs
    assert _batch(project) == reference


def test_a_second_run_waits_for_the_lock_when_params_say_so(project: Path) -> None:
    """prefect.lock_wait_s: the second run waits for the holder, then runs."""
    from metarec.io import lock_file, project_lock

    _set_params(project, {"prefect": {"lock_wait_s": 120.0}})
    held = threading.Event()

    def hold() -> None:
        with project_lock(lock_file(project), "metarec train"):
            held.set()
            time.sleep(4.0)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(30)
    start = time.monotonic()
    done = _metarec(project, "score")
    holder.join()
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - start >= 3.0                 # it waited for the holder


def test_checkpoint_that_does_not_match_the_inputs_stops_scoring(project: Path,
                                                                 tmp_path: Path) -> None:
    from metarec.io import read_json, write_json

    validated = tmp_path / "validated"
    shutil.copytree(project / "validated", validated)
    schema = read_json(validated / "schema.json")
    schema["rating"]["max"] = 10.0
    del schema["users"]["gender"]
    write_json(schema, validated / "schema.json")
    cmd = [str(BIN / "metarec"), "score", "--as-of", AS_OF, "--params", "params.yaml",
           "--in", str(validated), "--models", "models", "--out", str(tmp_path / "recs"),
           "--selection", "selection.json"]
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True,
                          env=_env(project), timeout=300)
    assert done.returncode == 2
    err = " ".join(done.stderr.split())
    assert "does not match the scoring inputs" in err
    assert "rating max: trained on 5.0, inputs have 10.0" in err
    assert "users feature 'gender' (categorical): missing from the inputs" in err
    assert not (tmp_path / "recs" / AS_OF).exists()


def test_manifest_is_the_same_for_relative_and_absolute_paths(project: Path,
                                                              tmp_path: Path) -> None:
    """Run from the project root, `metarec score` records project-relative paths whether it
    was given relative or absolute ones (the nightly flow passes absolute paths)."""
    manifests = []
    for absolute in (True, False):
        base = f"{project}/" if absolute else ""
        out = tmp_path / ("abs" if absolute else "rel")
        cmd = [str(BIN / "metarec"), "score", "--as-of", AS_OF, "--params",
               f"{base}params.yaml", "--in", f"{base}validated", "--models",
               f"{base}models", "--out", str(out), "--selection", f"{base}selection.json"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(project),
                              cwd=project, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        manifests.append((out / AS_OF / "manifest.json").read_bytes())
    assert manifests[0] == manifests[1]
    assert b'"validated_dir": "validated"' in manifests[0]
