"""Interaction logs read in batches of rows, and the compact state kept across batches.

A stage that reads a log batch by batch holds one batch of strings at a time; what it must
know about the whole log (which ids it saw, which keys repeat) it keeps as integer codes per
row (:class:`IdCodes`), a few bytes where the strings cost tens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metarec.errors import DataError


def read_batches(file: pq.ParquetFile, rows: int, path: str | Path, restore: str,
                 columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) for consecutive batches of ``rows`` rows of a Parquet file; an
    empty file gives one empty batch (so that every check still runs once). A file that
    breaks while being read raises DataError naming it and the command that restores it."""
    start = 0
    schema = file.schema_arrow if columns is None else pa.schema(
        [file.schema_arrow.field(c) for c in columns])
    try:
        for batch in file.iter_batches(batch_size=rows, columns=columns):
            yield start, pa.Table.from_batches([batch], schema=schema)
            start += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"unreadable (truncated or corrupt?): {exc}; run `{restore}` (or "
                        "`dvc pull`) to restore it", file=str(path)) from exc
    if start == 0:
        yield 0, schema.empty_table()


def nullable_ints(file: pq.ParquetFile) -> set[str]:
    """Integer columns holding a null anywhere in the file: pandas reads them as float64 when
    the whole table is converted at once, so every batch converts them the same way (from
    the row groups' statistics; columns without statistics are scanned)."""
    meta, out = file.metadata, set()
    for i, field in enumerate(file.schema_arrow):
        if not pa.types.is_integer(field.type):
            continue
        groups = [meta.row_group(g).column(i).statistics for g in range(meta.num_row_groups)]
        if all(s is not None and s.has_null_count for s in groups):
            nulls = sum(s.null_count for s in groups)
        else:
            nulls = file.read(columns=[field.name]).column(0).null_count
        if nulls:
            out.add(field.name)
    return out


def batch_frame(table: pa.Table, nullable: set[str]) -> pd.DataFrame:
    """A batch as pandas with the dtypes the whole table would have (:func:`nullable_ints`)."""
    frame = table.to_pandas()
    for col in nullable & set(frame.columns):
        frame[col] = frame[col].astype("float64")
    return frame


class IdCodes:
    """Integer codes of the ids of a log read in batches: code ``i < len(known)`` is
    ``known[i]`` (a feature table's ids), ids the table lacks get the next codes in order of
    first appearance, a missing id is -1. One hash table of the known ids serves every batch.
    """

    def __init__(self, known: pa.Array) -> None:
        self.known = pc.unique(known.drop_null())
        self.extra = pd.Index([], dtype=object)

    def __call__(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """(n,) int32 codes of a batch of ids."""
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        known = self.known.cast(ids.type) if self.known.type != ids.type else self.known
        codes = pc.index_in(ids, value_set=known)
        out = pc.fill_null(codes, -1).to_numpy().astype(np.int32)
        absent = np.flatnonzero(pc.and_(pc.is_null(codes), pc.is_valid(ids)).to_numpy(
            zero_copy_only=False))
        if len(absent):
            values = pd.Index(ids.take(pa.array(absent)).to_numpy(zero_copy_only=False),
                              dtype=object)
            new = values.unique().difference(self.extra, sort=False)
            self.extra = self.extra.append(new)
            out[absent] = len(self.known) + self.extra.get_indexer(values)
        return out

    def __len__(self) -> int:
        return len(self.known) + len(self.extra)

    def names(self) -> pa.Array:
        """Every coded id, by code (known ids, then the others)."""
        if len(self.extra) == 0:
            return self.known
        extra = pa.array(self.extra.to_numpy(dtype=object), type=self.known.type)
        return pa.concat_arrays([self.known, extra])

    def take(self, codes: np.ndarray) -> pa.Array:
        """The ids of ``codes`` (-1: null)."""
        return self.names().take(pa.array(codes, mask=codes < 0))


class FirstUse:
    """Which codes earlier batches used: finds, in each batch, the rows where a code appears
    for the first time in the log (in row order), so that per-id work is done once."""

    def __init__(self) -> None:
        self.seen = np.zeros(0, dtype=bool)

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        top = int(codes.max()) + 1 if len(codes) else 0
        if top > len(self.seen):
            self.seen = np.concatenate([self.seen, np.zeros(top - len(self.seen), dtype=bool)])
        fresh = np.flatnonzero(codes >= 0)
        fresh = fresh[~self.seen[codes[fresh]]]           # codes no earlier batch used
        _, first = np.unique(codes[fresh], return_index=True)
        rows = np.sort(fresh[first])
        self.seen[codes[rows]] = True
        return rows
