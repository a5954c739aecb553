"""Checkpoints of trained algorithms, and the one loader evaluation and scoring call.

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``: tensors, the
constructor arguments of network and algorithm, the params that trained it, the vocabulary
that encoded its features, and a sha256 digest of the tensors. The loader refuses a file that
is truncated, altered or was trained on a different vocabulary - scoring users with a
mismatched vocabulary would silently mix up their features.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from metarec.config import ModelParams
from metarec.data.tasks import EpisodeData
from metarec.errors import MetarecError
from metarec.io import atomic_path
from metarec.meta.algorithms import ALGORITHMS, MetaAlgorithm, build_algorithm
from metarec.meta.features import FeatureStore
from metarec.meta.predictor import AdaptivePredictor
from metarec.models.network import PreferenceNet

FORMAT = "metarec-checkpoint/1"


class CheckpointError(MetarecError):
    """A checkpoint is unreadable, altered, or does not match the data it is used with."""


def model_kwargs(data: EpisodeData, params: ModelParams) -> dict[str, Any]:
    """Constructor arguments of :class:`PreferenceNet` for this data's feature vocabularies."""
    u, i = data.users, data.items
    return {"user_cat_cardinalities": list(u.cat_cardinalities),
            "user_multi_cardinalities": list(u.multi_cardinalities),
            "user_numeric": len(u.num_names),
            "item_cat_cardinalities": list(i.cat_cardinalities),
            "item_multi_cardinalities": list(i.multi_cardinalities),
            "item_numeric": len(i.num_names),
            "n_item_ids": int(i.n_ids),
            "rating_range": list(data.rating_range),
            "embedding_dim": params.embedding_dim,
            "hidden": list(params.hidden),
            "interaction": params.interaction,
            "item_id_embedding": params.item_id_embedding}


def build_model(kwargs: dict[str, Any]) -> PreferenceNet:
    return PreferenceNet(**{**kwargs, "rating_range": tuple(kwargs["rating_range"]),
                            "hidden": tuple(kwargs["hidden"])})


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _vocab_hash(vocab: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(vocab, sort_keys=True).encode()).hexdigest()


def save_checkpoint(path: str | Path, algorithm: MetaAlgorithm, kwargs: dict[str, Any],
                    params: dict[str, Any], vocab: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``algorithm`` (network included) atomically to ``path``."""
    state = {k: v.detach().cpu().clone() for k, v in algorithm.state_dict().items()}
    blob = {"format": FORMAT, "algorithm": algorithm.name, "state_dict": state,
            "digest": _digest(state), "model_kwargs": kwargs,
            "algorithm_config": algorithm.config(), "params": params, "vocab": vocab,
            "vocab_sha256": _vocab_hash(vocab), "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return Path(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, verified; raises :class:`CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `metarec train` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a metarec checkpoint (expected format {FORMAT})")
    if blob.get("algorithm") not in ALGORITHMS:
        raise CheckpointError(f"{path}: unknown algorithm {blob.get('algorithm')!r}")
    if _digest(blob["state_dict"]) != blob.get("digest"):
        raise CheckpointError(f"{path}: weights do not match their recorded digest (altered?)")
    return blob


def load_predictor(path: str | Path, data: EpisodeData) -> AdaptivePredictor:
    """The trained predictor in ``path``, reading features from ``data``'s tables."""
    blob = read_checkpoint(path)
    if _vocab_hash(data.vocab) != blob["vocab_sha256"]:
        raise CheckpointError(f"{path}: trained on a different vocabulary than these episodes "
                              "(retrain, or use the episodes it was trained on)")
    try:
        model = build_model(blob["model_kwargs"])
        algorithm = build_algorithm(blob["algorithm"], model, blob["algorithm_config"])
        algorithm.load_state_dict(blob["state_dict"])
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from exc
    store = FeatureStore(data.users, data.items)
    return AdaptivePredictor(blob["algorithm"], algorithm, store)
