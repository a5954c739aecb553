"""Nightly scoring split into shards of users, merged into the batch ``score.run`` would write.

The score stage adapts and ranks users in chunks of ``score.chunk_users`` (users in user_id
order, chunk ``c`` seeded with ``c``). A shard here is a run of *whole* chunks scored with the
same chunk numbers, so every chunk sees the same users, padding and seed as in the
single-process run, and the concatenated shards are the same rows in the same order: the merged
``recommendations.parquet`` and ``manifest.json`` are byte-identical to ``metarec score``'s
(tests/flows/test_nightly.py checks this for the thread and the Dask runner).

Until the score stage exposes a chunk range itself, :func:`score_chunks` repeats the loop of
:func:`metarec.stages.score.recommend` on its lower-level functions; the byte-identity test is
what keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import metarec
from metarec.config import ScoreParams, params_hash, to_dict
from metarec.data.tasks import EpisodeData
from metarec.errors import DataError
from metarec.io import read_parquet, sha256_file, write_parquet
from metarec.meta.checkpoint import load_predictor, read_checkpoint
from metarec.scoring.engine import CatalogueScorer, task_batch, top_k
from metarec.scoring.world import day_end, landing_files, load_world, parse_as_of, users_to_score
from metarec.stages import score as stage


@dataclass(frozen=True)
class BatchInputs:
    """Everything a shard needs, as paths and plain values (cheap to send to a Dask worker)."""

    params: ScoreParams        # as_of filled in
    validated_dir: str
    models_dir: str
    out_root: str

    @property
    def tables(self) -> dict[str, Path]:
        return {n: Path(self.validated_dir) / f"{n}.parquet" for n in stage.TABLES}

    @property
    def model_path(self) -> Path:
        return Path(self.models_dir) / f"{self.params.model}.pt"

    @property
    def landing(self) -> list[Path]:
        return landing_files(self.params.landing_dir, parse_as_of(self.params.as_of))

    @property
    def end(self) -> int:
        return day_end(parse_as_of(self.params.as_of))


def prepare(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
            out_root: str | Path, as_of: str | None) -> BatchInputs:
    """Resolve the as-of date and check inputs exactly as ``score.run`` does."""
    day = parse_as_of(as_of or params.as_of)
    params = dataclasses.replace(params, as_of=day.isoformat())
    stage._check(params)
    inputs = BatchInputs(params, str(validated_dir), str(models_dir), str(out_root))
    for path in inputs.tables.values():
        if not path.is_file():
            raise DataError("missing; run `dvc repro validate` (or `dvc pull`)", file=str(path))
    return inputs


def day_stats(inputs: BatchInputs) -> dict[str, Any]:
    """The day's counts (users, cold/dynamic users, catalogue items, ...) without scoring."""
    return score_chunks(inputs, 0, 0)[1]


def chunks_of(stats: dict[str, Any], params: ScoreParams) -> int:
    """How many chunks of ``chunk_users`` the day's selected users fill."""
    return -(-stats["users"] // params.chunk_users)


def split_chunks(n_chunks: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous chunk ranges [lo, hi), as even as possible, none empty (at least one range)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    bounds = np.linspace(0, n_chunks, min(shards, max(n_chunks, 1)) + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def score_chunks(inputs: BatchInputs, lo: int, hi: int) -> tuple[pa.Table, dict[str, Any]]:
    """Rows (``score.SCHEMA``) of chunks lo..hi-1 and the whole day's counts.

    Mirrors :func:`metarec.stages.score.recommend` with its chunk loop restricted to lo..hi.
    """
    params = inputs.params
    vocab = read_checkpoint(inputs.model_path)["vocab"]
    world = load_world(read_parquet(inputs.tables["interactions"]), inputs.landing, inputs.end)
    sel = users_to_score(world, inputs.end, params.max_interactions, params.active_days,
                         params.dynamic)
    users = stage._encode(read_parquet(inputs.tables["users"]), "user_id", world["user_id"],
                          vocab["users"])
    items = stage._encode(read_parquet(inputs.tables["items"]), "item_id", world["item_id"],
                          vocab["items"])
    data = EpisodeData(tasks=pd.DataFrame(), users=users, items=items, vocab=vocab)
    scorer = CatalogueScorer(load_predictor(inputs.model_path, data), len(items))
    support, history = stage._user_rows(world, sel, items, params.dynamic_last)
    user_idx = torch.from_numpy(users.index_of(sel.user_ids))               # (U,)
    n, k, size = len(sel.user_ids), params.top_k, params.chunk_users
    out_user, out_item, out_score, out_rank = [], [], [], []
    for chunk_no in range(lo, hi):
        a, b = chunk_no * size, min((chunk_no + 1) * size, n)
        batch = task_batch(user_idx[a:b], *support.padded(a, b))
        key, rating = scorer.score(batch, chunk_no)                         # (T, C) each
        lengths = np.diff(history.starts[a:b + 1])
        rows = torch.from_numpy(np.repeat(np.arange(b - a), lengths))
        cols = torch.from_numpy(history.items[history.starts[a]:history.starts[b]])
        idx, valid = top_k(key, rows, cols, k)                              # (T, k')
        picked = rating.gather(1, idx)                                      # (T, k')
        valid_np = valid.numpy()
        out_user.append(np.repeat(np.arange(a, b), valid_np.sum(1)))
        out_item.append(idx.numpy()[valid_np])
        out_score.append(picked.numpy()[valid_np])
        out_rank.append(np.broadcast_to(np.arange(1, idx.shape[1] + 1), idx.shape)[valid_np])

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return (np.concatenate(parts) if parts else np.zeros(0, dtype)).astype(dtype)

    u_pos, i_pos = cat(out_user, np.int64), cat(out_item, np.int64)
    table = pa.table({
        "user_id": pa.array(sel.user_ids.to_numpy(dtype=object), pa.string()).take(u_pos),
        "rank": pa.array(cat(out_rank, np.int32)),
        "item_id": pa.array(items.ids, pa.string()).take(i_pos),
        "score": pa.array(cat(out_score, np.float32)),
        "kind": pa.array(sel.kinds.astype(object), pa.string()).take(u_pos),
    }, schema=stage.SCHEMA)
    stats = {"users": n, "cold_users": int((sel.kinds == "cold").sum()),
             "dynamic_users": int((sel.kinds == "dynamic").sum()),
             "catalogue_items": len(items), "world_interactions": len(world),
             "scoring_path": "catalogue-matmul" if scorer.fast_path else "predictor.predict"}
    return table, stats


def shard_dir(inputs: BatchInputs) -> Path:
    """A fresh hidden folder beside the batch for the shards' partial files."""
    root = Path(inputs.out_root)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{inputs.params.as_of}.shards-{uuid.uuid4().hex[:8]}-",
                                 dir=root))


def write_shard(inputs: BatchInputs, lo: int, hi: int, folder: str | Path) -> str:
    """Score chunks lo..hi-1 into ``<folder>/shard-<lo>-<hi>.parquet``; returns the path."""
    table, _ = score_chunks(inputs, lo, hi)
    return str(write_parquet(table, Path(folder) / f"shard-{lo:06d}-{hi:06d}.parquet"))


def merge(inputs: BatchInputs, stats: dict[str, Any], shard_paths: list[str],
          folder: str | Path) -> Path:
    """Concatenate shards (in chunk order) and publish the batch as ``score.run`` would."""
    parts = [pq.read_table(p) for p in shard_paths]
    table = (pa.concat_tables(parts) if parts else stage.SCHEMA.empty_table()).combine_chunks()
    table = table.cast(stage.SCHEMA)
    params, model_path = inputs.params, inputs.model_path
    files = [*inputs.tables.values(), *inputs.landing]
    manifest = {
        "as_of": params.as_of, "params": to_dict(params), "params_hash": params_hash(params),
        "validated_dir": inputs.validated_dir, "models_dir": inputs.models_dir,
        "model": str(model_path),
        "model_sha256": sha256_file(model_path) if model_path.is_file() else None,
        "inputs": {str(p): sha256_file(p) for p in files},
        "git_commit": stage._git_commit(), "metarec_version": metarec.__version__,
        "torch_version": torch.__version__, "rows": table.num_rows, **stats,
    }
    target = Path(inputs.out_root) / params.as_of
    stage.publish(target, table, manifest)
    shutil.rmtree(folder, ignore_errors=True)
    return target
