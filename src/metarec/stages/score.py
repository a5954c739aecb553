"""Stage `score`: the nightly batch of recommendations for one as-of date (wiring only).

The batch library is :mod:`metarec.scoring.batch` (what is scored and published) and
:mod:`metarec.scoring.verify` (rebuild and compare); the CLI, ``dvc.yaml`` and the nightly
flow all reach it through here or through the sharded flow, which publishes the same bytes.
The landing files are read in the format of the log they extend (``ingest``) and checked by
the validate stage's rules (``validate``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from metarec.config import LandingSource, ScoreParams, ValidateParams
from metarec.data.landing import landing_format
from metarec.errors import ParamsError
from metarec.scoring.batch import build_batch
from metarec.scoring.verify import verify as verify_batch
from metarec.scoring.world import parse_as_of


def run(params: ScoreParams, validate: ValidateParams, ingest: LandingSource,
        validated_dir: str | Path, models_dir: str | Path, out_root: str | Path,
        as_of: str | None = None, selection: str | Path | None = None) -> Path:
    """Score the users of ``as_of`` (default ``params.as_of``) with ``params.model`` (or, for
    ``auto``, the model named in ``selection``); returns the batch folder."""
    return build_batch(params, validated_dir, models_dir, out_root, as_of, selection,
                       validate, landing_format(ingest.source, ingest.table))


def backfill(params: ScoreParams, validate: ValidateParams, ingest: LandingSource,
             validated_dir: str | Path, models_dir: str | Path, out_root: str | Path,
             first: str, last: str, selection: str | Path | None = None) -> list[Path]:
    """The batch of every night from ``first`` to ``last`` (inclusive), in date order: the
    same :func:`build_batch` call ``metarec score --as-of`` makes for each, so the same bytes."""
    start, end = parse_as_of(first), parse_as_of(last)
    if end < start:
        raise ParamsError(f"backfill: --to {end} is before --from {start}")
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    return [run(params, validate, ingest, validated_dir, models_dir, out_root, day, selection)
            for day in days]


def verify(batch_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``batch_dir`` from its manifest; raises VerifyError unless identical."""
    return verify_batch(batch_dir)
