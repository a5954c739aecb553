"""Stage `score`: the nightly batch of recommendations for one as-of date (wiring only).

The batch library is :mod:`metarec.scoring.batch` (what is scored and published) and
:mod:`metarec.scoring.verify` (rebuild and compare); the CLI, ``dvc.yaml`` and the nightly
flow all reach it through here or through the sharded flow, which publishes the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metarec.config import ScoreParams
from metarec.scoring.batch import build_batch
from metarec.scoring.verify import verify as verify_batch


def run(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
        out_root: str | Path, as_of: str | None = None,
        selection: str | Path | None = None) -> Path:
    """Score the users of ``as_of`` (default ``params.as_of``) with ``params.model`` (or, for
    ``auto``, the model named in ``selection``); returns the batch folder."""
    return build_batch(params, validated_dir, models_dir, out_root, as_of, selection)


def verify(batch_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``batch_dir`` from its manifest; raises VerifyError unless identical."""
    return verify_batch(batch_dir)
