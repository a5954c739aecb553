"""``metarec verify-batch``: rebuild a nightly batch from its manifest and compare bytes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from metarec.config import ScoreParams, params_hash, parse_params
from metarec.errors import MetarecError, ParamsError
from metarec.io import read_json, sha256_file
from metarec.scoring.batch import MANIFEST, RECS, TABLES, _git_commit, build_batch
from metarec.scoring.world import landing_files, parse_as_of


class VerifyError(MetarecError):
    """A batch cannot be rebuilt from its manifest, or the rebuild differs from it."""


def verify(batch_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``batch_dir`` from its manifest and compare bytes; raise :class:`VerifyError`.

    Checks, in order: the manifest's params hash, the model and input files' sha256 (and
    that no landing file dated on or before the as-of date appeared or vanished), then the
    rebuilt Parquet against the batch's, then the rebuilt manifest against the batch's (all
    but ``git_commit``, which moves with every commit). Returns the manifest on success.
    """
    batch_dir = Path(batch_dir)
    if not (batch_dir / MANIFEST).is_file() or not (batch_dir / RECS).is_file():
        raise VerifyError(f"{batch_dir}: not a batch ({MANIFEST} or {RECS} missing)")
    manifest = read_json(batch_dir / MANIFEST)
    try:
        params = parse_params({"score": manifest["params"]}).score
    except (KeyError, ParamsError) as exc:
        raise VerifyError(f"{batch_dir / MANIFEST}: unreadable params: {exc}") from exc
    if params_hash(params) != manifest.get("params_hash"):
        raise VerifyError(f"{batch_dir / MANIFEST}: params do not match their recorded hash "
                          "(manifest edited?)")
    changed = _changed_inputs(manifest, params)
    if changed:
        raise VerifyError(
            "cannot rebuild: inputs changed since the batch was written:\n  "
            + "\n  ".join(changed)
            + "\nrestore them with `dvc pull` (tracked data and models), or `dvc repro` to "
              "rebuild them from their sources, then verify again")
    with tempfile.TemporaryDirectory(prefix="metarec-verify-") as tmp:
        rebuilt = build_batch(params, manifest["validated_dir"], manifest["models_dir"], tmp,
                              manifest["as_of"], manifest.get("selection_path"))
        same = (rebuilt / RECS).read_bytes() == (batch_dir / RECS).read_bytes()
        new_sha = sha256_file(rebuilt / RECS)
        again = read_json(rebuilt / MANIFEST)
    if not same:
        current = sha256_file(batch_dir / RECS)
        if current != manifest.get("parquet_sha256"):
            why = (f"{batch_dir / RECS} was modified after it was written (sha256 {current}, "
                   f"manifest records {manifest.get('parquet_sha256')})")
        else:
            why = (f"the rebuild gives different bytes (sha256 {new_sha}): code or environment "
                   f"changed (batch written at commit {manifest.get('git_commit')}, now "
                   f"{_git_commit()}; torch {manifest.get('torch_version')}, now "
                   f"{torch.__version__})")
        raise VerifyError(f"{batch_dir}: not reproducible: {why}")
    differ = sorted(k for k in set(manifest) | set(again)
                    if k != "git_commit" and manifest.get(k) != again.get(k))
    if differ:
        raise VerifyError(f"{batch_dir / MANIFEST}: the rebuild records different "
                          f"{', '.join(differ)} (manifest edited?)")
    return manifest


def _changed_inputs(manifest: dict[str, Any], params: ScoreParams) -> list[str]:
    problems = []
    recorded = {**manifest["inputs"], manifest["model"]: manifest["model_sha256"]}
    for path, sha in recorded.items():
        if not Path(path).is_file():
            problems.append(f"{path}: missing")
        elif sha is None or sha256_file(path) != sha:
            problems.append(f"{path}: sha256 {sha256_file(path)} != recorded {sha}")
    landing = {str(p) for p in landing_files(params.landing_dir, parse_as_of(params.as_of))}
    tables = {str(Path(manifest["validated_dir"]) / f"{n}.parquet") for n in TABLES}
    for path in sorted(landing - set(manifest["inputs"]) - tables):
        problems.append(f"{path}: landing file dated on or before the as-of date appeared")
    return problems
