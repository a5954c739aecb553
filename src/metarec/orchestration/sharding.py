"""Nightly scoring split into shards of users, merged into the batch ``score.run`` would write.

The score stage adapts and ranks users in chunks of ``score.chunk_users`` (users in user_id
order, chunk ``c`` seeded with ``c``), and ``score.recommend(..., chunks=range(lo, hi))``
scores a run of whole chunks exactly as the single-process run does. A shard is such a run;
the concatenated shards are the same rows in the same order, so the merged
``recommendations.parquet`` and ``manifest.json`` are byte-identical to ``metarec score``'s
(tests/flows/test_nightly.py checks this for the thread and the Dask runner).

:func:`merge` publishes through ``score.publish_batch``, the same code ``metarec score`` uses.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from metarec.config import ScoreParams
from metarec.io import write_parquet
from metarec.scoring.world import day_end, landing_files, parse_as_of
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
    params, _ = stage.resolve(params, validated_dir, as_of)
    return BatchInputs(params, str(validated_dir), str(models_dir), str(out_root))


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
    parts = min(shards, max(n_chunks, 1))
    bounds = [i * n_chunks // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def score_chunks(inputs: BatchInputs, lo: int, hi: int) -> tuple[pa.Table, dict[str, Any]]:
    """Rows (``score.SCHEMA``) of chunks lo..hi-1 and the whole day's counts."""
    return stage.recommend(inputs.params, inputs.tables, inputs.landing, inputs.model_path,
                           inputs.end, chunks=range(lo, hi))


def scoring_lock(out_root: str | Path) -> contextlib.AbstractContextManager[None]:
    """The lock ``metarec score`` holds on ``out_root``: held by the scoring subflow for all
    its shards, so a nightly run and a ``metarec score`` never write the same batches at once."""
    return stage.scoring_lock(out_root, "metarec nightly scoring")


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
    target = stage.publish_batch(inputs.params, inputs.validated_dir, inputs.models_dir,
                                 [*inputs.tables.values(), *inputs.landing], table, stats,
                                 inputs.out_root)
    shutil.rmtree(folder, ignore_errors=True)
    return target
