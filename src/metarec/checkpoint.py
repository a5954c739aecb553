"""Checkpoints of every fitted algorithm, and the one loader evaluation and scoring call.

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``: the algorithm's
name and its ``state()`` (tensors, numbers, lists, dicts), the params that trained it, the
vocabulary that encoded its features, and a sha256 digest of the state. The loader refuses a
file that is truncated, altered or was trained on a different vocabulary - scoring users with a
mismatched vocabulary would silently mix up their features - and asks the registry to rebuild
the model, so it knows no algorithm by name.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from metarec import algorithms
from metarec.data import views
from metarec.data.tasks import EpisodeData
from metarec.errors import MetarecError, ParamsError
from metarec.io import atomic_path
from metarec.models.base import Predictor

FORMAT = "metarec-model/1"


class CheckpointError(MetarecError):
    """A checkpoint is unreadable, altered, or does not match the data it is used with."""


def _digest(state: Any) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes) and the JSON of everything else."""
    h = hashlib.sha256()

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{path}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
            return f"<tensor {path}>"
        if isinstance(obj, dict):
            return {k: walk(obj[k], f"{path}.{k}") for k in sorted(obj)}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        return obj

    h.update(json.dumps(walk(state, ""), sort_keys=True).encode())
    return h.hexdigest()


def vocab_hash(vocab: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(vocab, sort_keys=True).encode()).hexdigest()


def save_model(path: str | Path, predictor: Predictor, params: dict[str, Any],
               vocab: dict[str, Any], view: str | None = None) -> Path:
    """Write ``predictor`` (as its algorithm's ``state()``) atomically to ``path``; ``view``
    (:mod:`metarec.data.views`): the view of the episodes it was fitted on, applied again
    when it is loaded (``vocab`` is the view's)."""
    state = predictor.state()
    blob = {"format": FORMAT, "algorithm": predictor.name, "state": state,
            "digest": _digest(state), "params": params, "vocab": vocab,
            "vocab_sha256": vocab_hash(vocab)}
    if view is not None:
        blob["view"] = view
    # saved through a file object: torch names the zip's records after a path's file name,
    # and the temporary name carries a pid, so saving by path gave other bytes every run
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(blob, fh)
    return Path(path)


def read_checkpoint(path: str | Path, source: str | Path | None = None) -> dict[str, Any]:
    """The checkpoint dict, verified; raises :class:`CheckpointError` with the reason.
    ``source``: where its bytes are, when not at ``path`` (the copy a nightly batch took of
    them when it began); messages name ``path``."""
    path = Path(path)
    src = Path(source) if source is not None else path
    if not src.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `metarec train` first")
    try:
        blob = torch.load(src, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a metarec checkpoint (expected format {FORMAT}; "
                              "retrain with `dvc repro train`)")
    try:
        algorithms.get(str(blob.get("algorithm")))
    except ParamsError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if _digest(blob["state"]) != blob.get("digest"):
        raise CheckpointError(f"{path}: weights do not match their recorded digest (altered?)")
    return blob


def load_model(path: str | Path, data: EpisodeData) -> Predictor:
    """The fitted model in ``path``, scoring the users and items of ``data``'s tables."""
    return from_checkpoint(read_checkpoint(path), data, path)


def from_checkpoint(blob: dict[str, Any], data: EpisodeData, path: str | Path) -> Predictor:
    """The model of a verified checkpoint dict (:func:`read_checkpoint`) bound to ``data``
    (seen through the checkpoint's view, when it has one)."""
    try:
        data = views.apply(blob.get("view"), data)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if vocab_hash(data.vocab) != blob["vocab_sha256"]:
        raise CheckpointError(f"{path}: trained on a different vocabulary than these episodes "
                              "(retrain, or use the episodes it was trained on)")
    try:
        return algorithms.get(blob["algorithm"]).load(blob["state"], data)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild the model: {exc}") from exc
