"""Reliability of the nightly batch: SIGKILL at any moment, reruns, two runs at once.

A small synthetic project is trained once; `metarec score` then runs as a real subprocess
(~5-10 s for ~2,000 cold-start users in chunks of 8) so that it can be killed part-way.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, build_project, small_params

pytestmark = pytest.mark.slow  # real `metarec score` subprocesses: not in make test-fast

AS_OF = "1998-03-01"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nightly")
    p = small_params(users=4000, items=200, interactions=40_000, days=60)
    p = replace(p, train=replace(p.train, algorithms=("maml",), seeds=(0,), max_steps=4,
                                 val_every=2))
    build_project(root, p, evaluate=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["score"].update(chunk_users=8, model="maml")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _cmd(root: Path) -> list[str]:
    return [str(BIN / "metarec"), "score", "--as-of", AS_OF, "--params",
            str(root / "params.yaml"), "--in", str(root / "validated"), "--models",
            str(root / "models/seed0"), "--out", str(root / "recs")]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _score(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(root), capture_output=True, text=True, env=_env(), timeout=300)


def _batch(root: Path) -> dict[str, bytes] | None:
    folder = root / "recs" / AS_OF
    if not folder.exists():
        return None
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(project: Path) -> dict[str, bytes]:
    done = _score(project)
    assert done.returncode == 0, done.stderr[-2000:]
    batch = _batch(project)
    assert batch is not None and set(batch) == {"manifest.json", "recommendations.parquet"}
    return batch


def _kill_after(root: Path, seconds: float) -> None:
    proc = subprocess.Popen(_cmd(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env())
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_sigkill_never_leaves_a_partial_batch(project: Path, reference: dict) -> None:
    # with a previous complete batch in place: a kill keeps exactly that batch
    for delay in (1.5, 4.0, 6.5):
        _kill_after(project, delay)
        assert _batch(project) == reference
    # with no batch yet: a kill leaves no batch or a complete one, never a partial one
    import shutil

    shutil.rmtree(project / "recs" / AS_OF)
    for delay in (2.0, 5.0):
        _kill_after(project, delay)
        assert _batch(project) in (None, reference)
        visible = [p.name for p in (project / "recs").iterdir() if not p.name.startswith(".")]
        assert visible in ([], [AS_OF])
    # the rerun produces the identical batch and sweeps what the killed runs left behind
    done = _score(project)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _batch(project) == reference
    assert [p.name for p in (project / "recs").iterdir()] == [AS_OF]


@pytest.mark.slow
def test_same_night_twice_gives_one_identical_batch(project: Path, reference: dict) -> None:
    assert _score(project).returncode == 0
    assert _score(project).returncode == 0
    assert _batch(project) == reference
    assert [p.name for p in (project / "recs").iterdir()] == [AS_OF]


def _locked(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


@pytest.mark.slow
def test_a_second_run_fails_fast_while_one_holds_the_lock(project: Path,
                                                          reference: dict) -> None:
    """While another run holds the project lock, `metarec score` exits 2 naming the holder.

    The test process holds the lock itself (exactly what a running batch does) and releases
    it only after the second run has returned: a run that waited for the lock instead of
    failing would never return and trip the subprocess timeout. No wall-clock bound: CI
    machines under load start Python slowly.
    """
    from metarec.io import project_lock

    lock = project / ".recs.lock"
    with project_lock(lock, "the nightly batch"):
        assert _locked(lock)
        second = _score(project)
    assert second.returncode == 2
    err = second.stderr.replace("\n", "")
    assert "already running" in err and str(lock) in err
    assert f"pid {os.getpid()}" in " ".join(second.stderr.split())   # names the holder
    assert _batch(project) == reference                 # the failed run touched nothing
    # once the lock is free the same command runs and gives the same batch
    assert _score(project).returncode == 0
    assert _batch(project) == reference


def test_checkpoint_that_does_not_match_the_inputs_stops_scoring(project: Path,
                                                                 tmp_path: Path) -> None:
    import shutil

    from metarec.io import read_json, write_json

    validated = tmp_path / "validated"
    shutil.copytree(project / "validated", validated)
    schema = read_json(validated / "schema.json")
    schema["rating"]["max"] = 10.0
    del schema["users"]["gender"]
    write_json(schema, validated / "schema.json")
    cmd = _cmd(project)
    cmd[cmd.index("--in") + 1] = str(validated)
    cmd[cmd.index("--out") + 1] = str(tmp_path / "recs")
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode == 2
    err = " ".join(done.stderr.split())
    assert "does not match the scoring inputs" in err
    assert "rating max: trained on 5.0, inputs have 10.0" in err
    assert "users feature 'gender' (categorical): missing from the inputs" in err
    assert not (tmp_path / "recs" / AS_OF).exists()


@pytest.mark.slow
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
               f"{base}models/seed0", "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=project,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        manifests.append((out / AS_OF / "manifest.json").read_bytes())
    assert manifests[0] == manifests[1]
    assert b'"validated_dir": "validated"' in manifests[0]
