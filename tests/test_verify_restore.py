"""verify-batch after a retrain: the batch's inputs are restored by the DVC content addresses
its manifest records (from the cache, or the remote when the cache lost them), and the batch
is rebuilt byte for byte in a temporary folder; the working tree is left as it is."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from metarec.io import read_json, sha256_file
from metarec.scoring.verify import VerifyError
from metarec.stages import score

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _sh(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)


@pytest.fixture()
def repo(synthetic_project: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    src = synthetic_project["root"]
    repo = tmp_path / "repo"
    shutil.copytree(src / "validated", repo / "data/validated")
    (repo / "models/seed0").mkdir(parents=True)
    for name in ("maml.pt", "reptile.pt"):
        shutil.copy(src / "models/seed0" / name, repo / "models/seed0" / name)
    _sh("git", "init", "-q", cwd=repo)
    _sh("git", "config", "user.email", "t@t", cwd=repo)
    _sh("git", "config", "user.name", "t", cwd=repo)
    _sh(str(BIN / "dvc"), "init", "-q", cwd=repo)
    _sh(str(BIN / "dvc"), "add", "-q", "data/validated", "models", cwd=repo)
    _sh("git", "add", "-A", cwd=repo)
    _sh("git", "commit", "-qm", "data and models", cwd=repo)
    monkeypatch.chdir(repo)
    return repo


def _batch(synthetic_project: dict) -> Path:
    p = dataclasses.replace(synthetic_project["params"].score, model="maml")
    params = synthetic_project["params"]
    return score.run(p, params.validate, params.ingest, "data/validated", "models",
                     "data/recommendations", "1998-11-01")


def _retrain(repo: Path) -> str:
    """Replace the model's bytes (another checkpoint) and record the new version in DVC."""
    old = sha256_file(repo / "models/seed0/maml.pt")
    shutil.copy(repo / "models/seed0/reptile.pt", repo / "models/seed0/maml.pt")
    _sh(str(BIN / "dvc"), "add", "-q", "models", cwd=repo)
    assert sha256_file(repo / "models/seed0/maml.pt") != old
    return old


def test_verify_restores_retrained_inputs_from_the_cache(repo: Path, synthetic_project: dict
                                                         ) -> None:
    batch = _batch(synthetic_project)
    manifest = read_json(batch / "manifest.json")
    assert set(manifest["dvc_md5"]) >= {"models/seed0/maml.pt",
                                        "data/validated/interactions.parquet"}
    now = _retrain(repo)
    assert now != sha256_file(repo / "models/seed0/maml.pt")
    score.verify(batch)                               # restored from .dvc/cache by md5
    assert sha256_file(repo / "models/seed0/maml.pt") != manifest["model_sha256"]   # tree untouched
    assert not list(repo.glob(".metarec-verify-*"))   # the temporary folder is gone
    # the old version gone from the cache and no remote: named, with its address
    md5 = manifest["dvc_md5"]["models/seed0/maml.pt"]
    (repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()
    with pytest.raises(VerifyError, match=rf"models/seed0/maml\.pt \(md5 {md5}\)"):
        score.verify(batch)


def test_verify_restores_from_the_remote_when_the_cache_is_gone(repo: Path,
                                                                synthetic_project: dict
                                                                ) -> None:
    batch = _batch(synthetic_project)
    _sh(str(BIN / "dvc"), "remote", "add", "-q", "-d", "store", str(repo.parent / "remote"),
        cwd=repo)
    _sh(str(BIN / "dvc"), "push", "-q", cwd=repo)
    _retrain(repo)
    shutil.rmtree(repo / ".dvc/cache")
    score.verify(batch)                               # fetched from the remote by md5


def test_a_changed_rebuild_is_still_caught_after_a_restore(repo: Path, synthetic_project: dict
                                                           ) -> None:
    batch = _batch(synthetic_project)
    _retrain(repo)
    table = batch / "recommendations.parquet"
    table.write_bytes(table.read_bytes()[:-8] + b"tampered")
    with pytest.raises(VerifyError, match="modified after it was written"):
        score.verify(batch)
