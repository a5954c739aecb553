"""Stage `ingest`: read the source named in params, write canonical Parquet tables.

Output folder: ``interactions.parquet`` (user_id, item_id, rating, timestamp, source_row,
and ``platform`` where the source has platforms: schema.json then lists them),
``users.parquet`` and ``items.parquet`` (id + typed feature columns) and ``schema.json``
(dataset, rating scale, every feature's kind, cardinality and declared vocabulary). The log
is written ``ingest.batch_rows`` rows at a time, so memory follows the batch (a generated
log keeps compact codes, not strings).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.compute as pc

from metarec.config import IngestParams
from metarec.data.encoding import list_array
from metarec.data.sources import READERS, RawData
from metarec.errors import DataError
from metarec.io import atomic_dir, write_json, write_parquet, write_parquet_stream

log = logging.getLogger("metarec.ingest")


def _cardinality(col: pd.Series, kind: str) -> int | None:
    if kind == "categorical":
        return int(col.nunique(dropna=True))
    if kind == "multicategorical":
        return int(len(pc.unique(pc.list_flatten(list_array(col))).drop_null()))
    return None


def schema_of(raw: RawData) -> dict[str, Any]:
    """The schema file: what each table holds, so later stages never guess from code paths."""

    def describe(table: pd.DataFrame, features: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {name: {"kind": spec["kind"],
                       "cardinality": _cardinality(table[name], spec["kind"]),
                       "vocabulary": spec.get("vocabulary")}
                for name, spec in features.items()}

    schema = {
        "dataset": raw.dataset,
        "source_files": raw.source_files,
        "rating": raw.rating,
        "users": describe(raw.users, raw.user_features),
        "items": describe(raw.items, raw.item_features),
        "counts": {"interactions": len(raw.interactions), "users": len(raw.users),
                   "items": len(raw.items)},
    }
    if raw.platforms is not None:   # interactions carry a platform column
        schema["platforms"] = list(raw.platforms)
    return schema


def run(params: IngestParams, out: str | Path) -> dict[str, Any]:
    """Read the configured source and write the canonical tables to ``out``.

    A failure anywhere (a DataError from the reader included) leaves the previous complete
    ``out`` folder untouched."""
    out = Path(out)
    start = time.perf_counter()
    raw = READERS[params.source](params)
    if len(raw.interactions) == 0:
        raise DataError("no interactions", file=raw.source_files.get("interactions"))
    schema = schema_of(raw)
    # all four files or none: written into a folder beside `out`, swapped in at the end;
    # the log batch by batch (the same bytes as one whole table, whatever the batch size)
    log_ = raw.interactions
    with atomic_dir(out) as tmp:
        write_parquet_stream(log_.batches(params.batch_rows), tmp / "interactions.parquet",
                             log_.schema)
        write_parquet(raw.users, tmp / "users.parquet")
        write_parquet(raw.items, tmp / "items.parquet")
        write_json(schema, tmp / "schema.json")
    log.info("ingest %s: %d interactions, %d users, %d items in %.1fs", raw.dataset,
             len(raw.interactions), len(raw.users), len(raw.items),
             time.perf_counter() - start)
    return schema
