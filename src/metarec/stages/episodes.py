"""Stage `episodes`: one meta-learning task per user and support size K (wiring only: the
library is :mod:`metarec.data.episodes`); writes the episodes folder and the data metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metarec.config import EpisodesParams
from metarec.data.episodes import build
from metarec.io import write_json


def run(params: EpisodesParams, inp: str | Path, out: str | Path, metrics: str | Path,
        validation_summary: str | Path | None = None) -> dict[str, Any]:
    """Build tasks, vocabularies and the data metrics from the validated tables."""
    data_metrics = build(params, inp, out, validation_summary)
    write_json(data_metrics, metrics)
    return data_metrics
