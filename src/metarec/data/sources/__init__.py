"""Readers for each data source: files in, raw-but-typed frames out (one module per source).

Each reader returns a :class:`RawData` whose interactions carry ``source_row`` (the 1-based data
row of the file they came from) so that validation errors can name the exact row.
"""

from __future__ import annotations

from metarec.data.sources.common import RawData, coarsen_zip, content_sha256
from metarec.data.sources.movielens import (
    read_movielens_100k,
    read_movielens_dat,
    read_movielens_latest,
)
from metarec.data.sources.synthetic import synthesize
from metarec.data.sources.table import read_table

READERS = {
    "movielens-100k": read_movielens_100k,
    "movielens-1m": read_movielens_dat,
    "movielens-latest": read_movielens_latest,
    "table": read_table,
    "synthetic": lambda params: synthesize(params.synthetic),
}

__all__ = ["READERS", "RawData", "coarsen_zip", "content_sha256"]
