"""Nightly scoring split into shards of users, merged into the batch ``score.run`` would write.

The score stage adapts and ranks users in chunks of ``score.chunk_users`` (users in user_id
order, chunk ``c`` seeded with ``c``), and ``recommend_stream(..., chunks=range(lo, hi))``
scores a run of whole chunks exactly as the single-process run does. A shard is such a run; the
concatenated shards are the same rows in the same order, so the merged
``recommendations.parquet`` and ``manifest.json`` are byte-identical to ``metarec score``'s
(tests/flows/test_nightly.py checks this for the thread and the Dask runner).

:func:`merge` publishes through ``scoring.publish.publish_batch``, the same code ``metarec
score`` uses.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from metarec.config import ScoreParams, TableSource, ValidateParams
from metarec.io import owner_tag, write_parquet_stream
from metarec.scoring import inputs as batch_inputs
from metarec.scoring import publish, stream

BatchInputs = batch_inputs.Inputs


def prepare(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
            as_of: str | None, selection: str | Path | None, validate: ValidateParams,
            landing_format: TableSource, folder: str | Path) -> BatchInputs:
    """Resolve the as-of date, the model, its seed and steps, and validate the landing files
    into ``folder`` (the shards' folder), exactly as ``score.run`` does."""
    inputs = batch_inputs.resolve(params, validated_dir, models_dir, as_of, selection,
                                  validate, landing_format)
    return batch_inputs.check_day(inputs, folder)


def day_stats(inputs: BatchInputs) -> dict[str, Any]:
    """The day's counts (users, cold/dynamic users, catalogue items, ...) without scoring."""
    return stream.recommend_stream(inputs, chunks=range(0))[1]


def chunks_of(stats: dict[str, Any], params: ScoreParams) -> int:
    """How many chunks of ``chunk_users`` the day's selected users fill."""
    return -(-stats["users"] // params.chunk_users)


def split_chunks(n_chunks: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous chunk ranges [lo, hi), as even as possible, none empty (at least one range)."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    parts = min(shards, max(n_chunks, 1))
    bounds = [i * n_chunks // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def shard_dir(as_of: str, out_root: str | Path) -> Path:
    """A fresh hidden folder beside the batch for the pinned model, the landing verdict and
    the shards' partial files (``as_of``: the night, YYYY-MM-DD), named after the flow's
    process (``.<as_of>.<pid>-<host>.shards-*.tmp``), so that the next write of the batch
    removes it if that process died (:func:`metarec.io.sweep`)."""
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{as_of}.{owner_tag()}.shards-", suffix=".tmp",
                                 dir=root))


def write_shard(inputs: BatchInputs, lo: int, hi: int, folder: str | Path) -> str:
    """Score chunks lo..hi-1 into ``<folder>/shard-<lo>-<hi>.parquet`` (streamed chunk by
    chunk); returns the path."""
    path = Path(folder) / f"shard-{lo:06d}-{hi:06d}.parquet"
    write_parquet_stream(stream.recommend_stream(inputs, chunks=range(lo, hi))[0], path,
                         stream.SCHEMA)
    return str(path)


def read_shards(shard_paths: list[str]) -> Iterator[pa.Table]:
    """The shards' rows in chunk order, one Parquet row group at a time."""
    for path in shard_paths:
        shard = pq.ParquetFile(path)
        for group in range(shard.num_row_groups):
            yield shard.read_row_group(group)


def merge(inputs: BatchInputs, stats: dict[str, Any], shard_paths: list[str],
          folder: str | Path, out_root: str | Path) -> Path:
    """Stream the shards (in chunk order) into the batch and publish it as ``score.run``
    would (the same regrouping into row groups, so the same bytes)."""
    target = publish.publish_batch(inputs, read_shards(shard_paths), stats, out_root)
    shutil.rmtree(folder, ignore_errors=True)
    return target
