"""The nightly batch: who is scored on a date, with which model, and how it is published.

:func:`build_batch` replays the world as of a date (:mod:`metarec.scoring.world`), adapts the
checkpoint to every selected user on its interactions so far, ranks every item the user has
not interacted with (:mod:`metarec.scoring.engine`) and publishes ``<out_root>/<DATE>/``:

- ``recommendations.parquet``: user_id (string), rank (int32, 1..K), item_id (string),
  score (float32, the model's ranking score: the order), predicted_rating (float32, the
  adapted rating clamped to the scale; null for a model that only ranks), because (string:
  the user's support item that contributed most to the item's score, null if none), kind (string:
  cold | dynamic). Ids only, never user features. Rows are ordered by user_id, then rank.
- ``manifest.json``: as-of date, effective score params and their hash, git commit, metarec
  version, model and input file sha256s, row and user counts, the Parquet's sha256, and the
  verdict on the landing files read (``landing``: rows in, kept and quarantined per file, every
  rule with its Great Expectations twin). Nothing depends on the wall clock, so a rerun gives
  byte-identical files (same machine and threads).
- ``quarantine.parquet``: the landing rows set aside, with file, row and reason (always
  written; empty when nothing was set aside).

:func:`build_batch` wires the parts: what the batch is built from
(:mod:`metarec.scoring.inputs`: the evaluated model, seed and steps; the landing files
validated once per batch, a night whose own rows are all quarantined failing), its rows
(:mod:`metarec.scoring.stream`) and how it is published (:mod:`metarec.scoring.publish`:
written beside the target and renamed into place only when complete). The sharded nightly
flow (:mod:`metarec.orchestration.sharding`) scores runs of whole chunks and publishes through
the same function, so its batch has the same bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from metarec.config import ScoreParams, TableSource, ValidateParams
from metarec.data.landing import CANONICAL
from metarec.io import scratch_dir
from metarec.scoring.inputs import check_day, resolve
from metarec.scoring.publish import publish_batch
from metarec.scoring.stream import recommend_stream

log = logging.getLogger("metarec.score")


def build_batch(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
                out_root: str | Path, as_of: str | None = None,
                selection: str | Path | None = None, validate: ValidateParams | None = None,
                landing_format: TableSource = CANONICAL) -> Path:
    """Score the users of ``as_of`` (default ``params.as_of``); returns the batch folder.
    The caller holds the project lock (the CLI and the flows do)."""
    inputs = resolve(params, validated_dir, models_dir, as_of, selection, validate,
                     landing_format)
    with scratch_dir("day") as day:
        inputs = check_day(inputs, day)
        parts, stats = recommend_stream(inputs)
        target = publish_batch(inputs, parts, stats, out_root)
    log.info("score: %d users with %s -> %s", stats["users"], inputs.model, target)
    return target
