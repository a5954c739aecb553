"""The Parquet writers: a table streamed in parts of any sizes gives the bytes of the whole."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metarec import io
from metarec.io import write_parquet, write_parquet_stream

SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()),
                    ("score", pa.float32())])


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"user_id": pa.array(rng.integers(0, 50, n).astype(str)),
                     "rank": pa.array(rng.integers(1, 20, n).astype(np.int32)),
                     "score": pa.array(rng.standard_normal(n).astype(np.float32))},
                    schema=SCHEMA)


def _parts(table: pa.Table, n_parts: int, seed: int) -> list[pa.Table]:
    """``table`` cut at random places into ``n_parts`` slices, empty ones included."""
    cuts = np.sort(np.random.default_rng(seed).integers(0, table.num_rows + 1, n_parts - 1))
    bounds = [0, *cuts.tolist(), table.num_rows]
    return [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("rows, n_parts, seed", [(0, 1, 0), (0, 3, 1), (5, 1, 2), (40, 6, 3),
                                                 (41, 41, 4), (100, 9, 5), (200, 2, 6)])
def test_a_streamed_table_has_the_bytes_of_the_whole_table(tmp_path, monkeypatch, rows: int,
                                                           n_parts: int, seed: int) -> None:
    monkeypatch.setattr(io, "ROW_GROUP", 8)  # many row groups from few rows
    table = _table(rows, seed)
    whole = write_parquet(table, tmp_path / "whole.parquet")
    streamed = tmp_path / "streamed.parquet"
    assert write_parquet_stream(_parts(table, n_parts, seed), streamed, SCHEMA) == rows
    assert _sha(streamed) == _sha(whole)
    meta = pq.ParquetFile(streamed).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == (
        [8] * (rows // 8) + ([rows % 8] if rows % 8 else []) or [0])
    assert pq.read_table(streamed).equals(table)


def test_the_default_row_group_gives_the_same_bytes_across_groups(tmp_path) -> None:
    table = _table(io.ROW_GROUP * 2 + 12_345, seed=7)
    whole = write_parquet(table, tmp_path / "whole.parquet")
    streamed = tmp_path / "streamed.parquet"
    write_parquet_stream(_parts(table, 23, seed=7), streamed, SCHEMA)
    assert pq.ParquetFile(streamed).metadata.num_row_groups == 3
    assert _sha(streamed) == _sha(whole)


def test_a_part_of_another_schema_fails_and_leaves_no_file(tmp_path) -> None:
    bad = pa.table({"user_id": ["a"], "rank": ["not a number"], "score": [1.0]})
    target = tmp_path / "out.parquet"
    with pytest.raises(pa.ArrowInvalid):
        write_parquet_stream([_table(3), bad], target, SCHEMA)
    assert list(tmp_path.iterdir()) == []
