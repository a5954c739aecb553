"""What a label means to the models: implicit counts on a finite scale, and which labels are
relevant (the positives of every ranking loss and ranking metric). One rule each: the episodes
record both in the vocabulary (``vocab["rating"]``), and every later reader takes them from
there (:attr:`metarec.data.tasks.EpisodeData.relevance_threshold`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from metarec.config import EpisodesParams


def label_treatment(rating: dict[str, Any], values: np.ndarray, params: EpisodesParams
                    ) -> tuple[dict[str, Any], np.ndarray]:
    """Implicit counts become ``log1p(count)`` or 0/1 (``episodes.count_transform``), so every
    label lies on a finite scale; explicit ratings and binary labels stay as they are.
    Returns the rating description the models see and the treated values."""
    if rating.get("kind") != "count":
        return dict(rating), values
    values = np.asarray(values, dtype=np.float64)
    out = np.log1p(values) if params.count_transform == "log1p" else (values > 0) * 1.0
    top = float(out.max()) if out.size else 1.0
    return {**rating, "min": 0.0, "max": max(top, 1.0), "transform": params.count_transform,
            "raw_max": float(values.max()) if values.size else 0.0}, out


def relevance_threshold(rating: dict[str, Any], params: EpisodesParams) -> float:
    """The rating at and above which an interaction is relevant (a positive for ranking):
    ``episodes.relevance_threshold``, or by default 80% of an explicit scale's maximum (4 on
    1-5) and any interaction for implicit labels (counts, binary)."""
    if params.relevance_threshold is not None:
        return float(params.relevance_threshold)
    if rating.get("kind", "explicit") == "explicit":
        return 0.8 * float(rating["max"])
    return float(np.finfo(np.float32).tiny)   # > 0 even in float32: any interaction
