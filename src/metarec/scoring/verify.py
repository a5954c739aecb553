"""``metarec verify-batch``: rebuild a nightly batch from its manifest and compare bytes.

A manifest is data someone could have edited, and verify-batch runs ``git`` and ``dvc`` and
writes files named by it: before anything runs, :func:`check_manifest` refuses one whose
paths climb out of the project (``..``), whose restore list names files the batch did not
read, whose digests are not digests, whose commit is not a hex id, or whose model is no
registered algorithm.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from metarec.config import ScoreParams, TableSource, ValidateParams, params_hash, parse_params
from metarec.data.validation import TABLES
from metarec.errors import MetarecError, ParamsError
from metarec.io import read_json, scratch_dir, sha256_file
from metarec.schema import build, iso_date
from metarec.scoring.batch import build_batch
from metarec.scoring.inputs import known_model
from metarec.scoring.publish import MANIFEST, RECS, git_commit
from metarec.scoring.world import landing_files, parse_as_of

_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")   # sha-1 or sha-256 object ids
_SHA256, _MD5 = re.compile(r"^[0-9a-f]{64}$"), re.compile(r"^[0-9a-f]{32}$")


class VerifyError(MetarecError):
    """A batch cannot be rebuilt from its manifest, or the rebuild differs from it."""


def verify(batch_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``batch_dir`` from its manifest and compare bytes; raise :class:`VerifyError`.

    Checks, in order: the manifest's params hash, the model and input files' sha256 (and
    that no landing file dated on or before the as-of date appeared or vanished), then the
    rebuilt Parquet against the batch's, then the rebuilt manifest against the batch's (all
    but ``git_commit``, which moves with every commit). Returns the manifest on success.
    """
    batch_dir = Path(batch_dir).absolute()   # the rebuild may run in a restored folder
    if not (batch_dir / MANIFEST).is_file() or not (batch_dir / RECS).is_file():
        raise VerifyError(f"{batch_dir}: not a batch ({MANIFEST} or {RECS} missing)")
    try:
        manifest = read_json(batch_dir / MANIFEST)
    except ValueError as exc:
        raise VerifyError(f"{batch_dir / MANIFEST}: not JSON: {exc}") from exc
    check_manifest(manifest, batch_dir / MANIFEST)
    try:
        params = parse_params({"score": manifest["params"]}).score
        landing = manifest.get("landing_params") or {}
        validate = build(ValidateParams, landing.get("validate") or {}, "validate")
        landing_format = build(TableSource, landing.get("format") or {}, "format")
    except (KeyError, ParamsError) as exc:
        raise VerifyError(f"{batch_dir / MANIFEST}: unreadable params: {exc}") from exc
    if params_hash(params) != manifest.get("params_hash"):
        raise VerifyError(f"{batch_dir / MANIFEST}: params do not match their recorded hash "
                          "(manifest edited?)")
    changed = _changed_inputs(manifest, params)
    appeared = [c for c in changed if c.endswith("appeared")]
    if appeared or (changed and "dvc_md5" not in manifest):
        raise VerifyError(
            "cannot rebuild: inputs changed since the batch was written:\n  "
            + "\n  ".join(changed)
            + "\nrestore them with `dvc pull` (tracked data and models), or `dvc repro` to "
              "rebuild them from their sources, then verify again")
    with contextlib.ExitStack() as stack:
        if changed:   # rebuild in a folder holding the recorded bytes, restored by address
            stack.enter_context(contextlib.chdir(stack.enter_context(
                restored(manifest, changed))))
        tmp = stack.enter_context(scratch_dir("verify"))
        rebuilt = build_batch(params, manifest["validated_dir"], manifest["models_dir"], tmp,
                              manifest["as_of"], manifest.get("selection_path"), validate,
                              landing_format)
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
                   f"{git_commit()}; torch {manifest.get('torch_version')}, now "
                   f"{torch.__version__})")
        raise VerifyError(f"{batch_dir}: not reproducible: {why}")
    differ = sorted(k for k in set(manifest) | set(again)
                    if k != "git_commit" and manifest.get(k) != again.get(k))
    if differ:
        raise VerifyError(f"{batch_dir / MANIFEST}: the rebuild records different "
                          f"{', '.join(differ)} (manifest edited?)")
    return manifest


def _path(value: object, key: str, where: Path) -> str:
    """A path the manifest records: a string, relative ones inside the project (no ``..``
    anywhere, nothing but plain names); absolute ones are only ever read in place."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise VerifyError(f"{where}: {key}: {value!r} is not a path")
    path = Path(value)
    if ".." in path.parts or (not path.is_absolute() and value != path.as_posix()):
        raise VerifyError(f"{where}: {key}: {value!r} leaves the project (or is not a plain "
                          "relative path); refused before running anything")
    return value


def check_manifest(manifest: object, where: Path) -> None:
    """Refuse a manifest that could turn verify-batch against its user (see the module
    docstring); raises :class:`VerifyError` naming the key."""
    if not isinstance(manifest, dict):
        raise VerifyError(f"{where}: not a manifest (a JSON object)")
    for key in ("validated_dir", "models_dir", "model"):
        _path(manifest.get(key), key, where)
    if manifest.get("selection_path") is not None:
        _path(manifest["selection_path"], "selection_path", where)
    inputs, md5s = manifest.get("inputs"), manifest.get("dvc_md5", {})
    if not isinstance(inputs, dict) or not isinstance(md5s, dict):
        raise VerifyError(f"{where}: inputs and dvc_md5 must be mappings")
    for rel, sha in inputs.items():
        _path(rel, f"inputs[{rel!r}]", where)
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise VerifyError(f"{where}: inputs[{rel!r}]: {sha!r} is not a sha256")
    read = {*inputs, manifest["model"]}
    for rel, md5 in md5s.items():
        _path(rel, f"dvc_md5[{rel!r}]", where)
        if rel not in read:
            raise VerifyError(f"{where}: dvc_md5[{rel!r}]: not a file the batch read")
        if not isinstance(md5, str) or not _MD5.match(md5):
            raise VerifyError(f"{where}: dvc_md5[{rel!r}]: {md5!r} is not an md5")
    sha = manifest.get("model_sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
        raise VerifyError(f"{where}: model_sha256: {sha!r} is not a sha256")
    commit = manifest.get("git_commit")
    if commit is not None and (not isinstance(commit, str) or not _COMMIT.match(commit)):
        raise VerifyError(f"{where}: git_commit: {commit!r} is not a commit id (40 or 64 "
                          "lowercase hex digits); refused before running git")
    if not known_model(manifest.get("model_name")):
        raise VerifyError(f"{where}: model_name: {manifest.get('model_name')!r} is no "
                          "registered algorithm")
    try:
        iso_date(manifest.get("as_of"), "as_of")      # type: ignore[arg-type]
    except ParamsError as exc:
        raise VerifyError(f"{where}: {exc}") from exc


def _inside(root: Path, rel: str) -> Path:
    """``root / rel``, refused unless it stays inside ``root`` (a second line of defence
    behind :func:`check_manifest`)."""
    dst = (root / rel).resolve()
    if not dst.is_relative_to(root.resolve()):
        raise VerifyError(f"{rel}: leaves the restore folder; refused")
    return dst


@contextlib.contextmanager
def restored(manifest: dict[str, Any], changed: list[str]) -> Iterator[Path]:
    """A temporary folder inside the DVC repository holding every file the batch read at its
    recorded path: unchanged files copied, changed ones fetched by their recorded md5 with
    ``dvc pull`` (the local cache first, then the remote), the evaluation's choice (a git-
    tracked metric) from the batch's git commit. Raises :class:`VerifyError` naming what
    could not be restored."""
    repo = _dvc_root(Path.cwd())
    if repo is None:
        raise VerifyError("cannot rebuild: inputs changed since the batch was written:\n  "
                          + "\n  ".join(changed) + "\nand this is not a DVC project (no .dvc "
                          "folder above the working directory) to restore them from; restore "
                          "them by hand (`dvc pull`), then verify again")
    recorded = manifest["dvc_md5"]
    shas = {**manifest["inputs"], manifest["model"]: manifest["model_sha256"]}
    with tempfile.TemporaryDirectory(prefix=".metarec-verify-", dir=repo) as tmp:
        root = Path(tmp)
        pull = []
        for rel, md5 in recorded.items():
            src = Path(rel)
            unchanged = src.is_file() and sha256_file(src) == shas.get(rel)
            if src.is_absolute():       # outside the project: read in place, never restored
                if not unchanged:
                    raise VerifyError("cannot rebuild: inputs changed since the batch was "
                                      "written:\n  " + "\n  ".join(changed) + f"\nand {rel} "
                                      "lies outside the DVC project; restore it by hand "
                                      "(`dvc pull` in its project), then verify again")
                continue
            dst = _inside(root, rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if unchanged:
                shutil.copyfile(src, dst)
            elif rel == manifest.get("selection_path"):
                _from_git(manifest, rel, dst)
            else:
                stage = root / f"restore-{len(pull)}.dvc"
                # the out's path is relative to the .dvc file, so it lands at root / rel
                stage.write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5",
                                                           "path": rel}]}),
                                 encoding="utf-8")
                pull.append(stage)
        if pull:
            dvc = str(Path(sys.executable).parent / "dvc")
            run = subprocess.run([dvc, "checkout", "--quiet", *map(str, pull)], cwd=repo,
                                 capture_output=True, text=True)          # the local cache
            missing = [rel for rel in recorded if not (root / rel).is_file()]
            if missing:                                                   # then the remote
                run = subprocess.run([dvc, "pull", "--quiet", *map(str, pull)], cwd=repo,
                                     capture_output=True, text=True)
                missing = [rel for rel in recorded if not (root / rel).is_file()]
            if missing:
                raise VerifyError(
                    "cannot rebuild: inputs changed since the batch was written and their "
                    "recorded versions are in neither the DVC cache nor the remote:\n  "
                    + "\n  ".join(f"{rel} (md5 {recorded[rel]})" for rel in missing or pull)
                    + f"\n{(run.stderr or run.stdout).strip()}")
        for rel, sha in shas.items():
            if rel in recorded and sha is not None and sha256_file(root / rel) != sha:
                raise VerifyError(f"{rel}: the restored file's sha256 differs from the "
                                  "manifest's (cache or remote corrupted?)")
        yield root


def _dvc_root(start: Path) -> Path | None:
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _from_git(manifest: dict[str, Any], rel: str, dst: Path) -> None:
    """A git-tracked file as of the batch's commit (metrics live in git, not the DVC cache)."""
    commit = manifest.get("git_commit")
    if commit is not None and not _COMMIT.match(str(commit)):    # checked before, again here
        raise VerifyError(f"git_commit: {commit!r} is not a commit id")
    out = subprocess.run(["git", "show", f"{commit}:{rel}"], capture_output=True,
                         check=False) if commit else None
    if out is None or out.returncode != 0:
        raise VerifyError(f"{rel}: changed since the batch was written, and not found in git "
                          f"at the batch's commit {commit}")
    dst.write_bytes(out.stdout)


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
