"""A batch published: its rows, the manifest of what it was built from, the landing rows set
aside, all swapped into place at once.

The batch is written into a hidden temporary folder beside ``<out_root>/<DATE>/`` and
exchanged with it in one atomic rename: a crash or SIGKILL at any instant leaves the previous
complete batch or none. ``metarec score`` and the sharded nightly flow both publish through
:func:`publish_batch`, so they give the same bytes. The manifest's digests are those the
batch took when it began (:func:`metarec.scoring.inputs.pin`), not the files' at publish
time: it names what was read. The callers (the CLI, the flows) hold the project lock
(:func:`metarec.io.project_lock`) from the first read to the publish.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

import metarec
from metarec.config import params_hash, to_dict
from metarec.data.landing import QUARANTINE
from metarec.io import atomic_dir, sha256_file, sweep, write_json, write_parquet_stream
from metarec.scoring.inputs import QUARANTINED, Inputs, check_unchanged
from metarec.scoring.stream import SCHEMA

RECS, MANIFEST = "recommendations.parquet", "manifest.json"


def _rel(path: str | Path) -> str:
    """A path as recorded in the manifest: relative to the project root (the working
    directory) when inside it, so a batch records the same manifest however it was started."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def publish_batch(inputs: Inputs, parts: Iterable[pa.Table], stats: dict[str, Any],
                  out_root: str | Path) -> Path:
    """Write the recommendations (streamed from ``parts``, tables of SCHEMA), the manifest
    (what the batch was built from) and publish the batch atomically.

    Shared by ``metarec score`` and the sharded nightly flow, so both give the same bytes.
    """
    params, model_path = inputs.params, inputs.model_path
    check_unchanged(inputs)
    model = inputs.read(model_path) if inputs.model_copy or model_path.is_file() else None
    reads = {p: inputs.read(p) for p in inputs.inputs}
    manifest = {
        "as_of": params.as_of, "params": to_dict(params), "params_hash": params_hash(params),
        "validated_dir": _rel(inputs.validated_dir), "models_dir": _rel(inputs.models_dir),
        "model": _rel(model_path), "model_name": inputs.model, "seed": inputs.seed,
        "inner_steps": inputs.steps,
        "selection": inputs.selection, "selection_path":
            _rel(inputs.selection_path) if inputs.selection_path else None,
        "model_sha256": model.sha256 if model is not None else None,
        "inputs": {_rel(p): r.sha256 for p, r in reads.items()},
        # DVC's content addresses (md5 of the bytes): verify-batch restores the files from the
        # DVC cache or remote by these, whatever dvc.lock says now
        "dvc_md5": {_rel(p): r.md5 for p, r in
                    [*reads.items(), *([(model_path, model)] if model is not None else [])]},
        "git_commit": git_commit(), "metarec_version": metarec.__version__,
        "torch_version": torch.__version__, **stats,
        # how landing rows were read and checked (verify-batch rebuilds with the same) and
        # the verdict: rows in = kept + quarantined, per file and rule
        "landing_params": {"validate": to_dict(inputs.validate),
                           "format": to_dict(inputs.landing_format)},
        "landing": inputs.landing_verdict(),
    }
    target = Path(out_root) / params.as_of
    quarantine = (pq.read_table(Path(inputs.checked) / QUARANTINED)
                  if inputs.checked is not None else QUARANTINE.empty_table())
    publish(target, parts, manifest, quarantine)
    sweep(target)
    return target


def publish(target: Path, parts: Iterable[pa.Table], manifest: dict[str, Any],
            quarantine: pa.Table | None = None) -> None:
    """Stream the rows into a temporary folder beside ``target``, then rename it into place.

    The folders are exchanged in one atomic syscall (:func:`metarec.io.swap_dir`), so a crash
    or SIGKILL at any instant leaves either no batch or the previous complete one (plus a
    hidden temporary folder at worst, removed by the next run), never a half-written one.
    ``quarantine``: the landing rows set aside (written empty when None).
    """
    with atomic_dir(target) as tmp:
        rows = write_parquet_stream(parts, tmp / RECS, SCHEMA)
        write_parquet_stream([quarantine if quarantine is not None
                              else QUARANTINE.empty_table()], tmp / QUARANTINED, QUARANTINE)
        manifest = {**manifest, "rows": rows, "parquet_sha256": sha256_file(tmp / RECS),
                    "quarantine_sha256": sha256_file(tmp / QUARANTINED)}
        write_json(manifest, tmp / MANIFEST)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
