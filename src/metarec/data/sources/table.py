"""``table``: the user's own interaction log (Parquet or CSV) and optional feature tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from metarec.config import IngestParams, TableSource
from metarec.data.sources.common import (
    RawData,
    check_parsed,
    clean_ids,
    epoch_seconds,
    interactions_frame,
    numeric,
    read_delimited,
    sniff,
    split_lists,
)
from metarec.errors import DataError


def _read_any(path: Path, spec: TableSource, allow_empty: bool = False) -> pd.DataFrame:
    """A Parquet or CSV table; ids and values as text where they are text or integers.
    ``allow_empty``: a header (schema) without rows is a table of no rows, not an error."""
    fmt = spec.format
    if fmt == "auto":
        fmt = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    if fmt == "csv":
        return read_delimited(path, sep=spec.csv_delimiter, names=None, header=0,
                              encoding=spec.encoding, allow_empty=allow_empty)
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    sniff(path, "parquet")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable Parquet file (truncated or corrupt?): {exc}; copy or "
                        "export it again", file=str(path)) from exc
    if table.num_rows == 0 and not allow_empty:
        raise DataError("has a schema but no rows", file=str(path))
    for f in table.schema:
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            raise DataError(f"holds bytes ({f.type}), not text: write the column as strings",
                            file=str(path), column=f.name)
    # integers (uint64 ids above 2^63 included) become their exact decimal text here, before
    # pandas could turn an integer column with a null into floats
    for i, f in enumerate(table.schema):
        t = f.type
        if pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_dictionary(t):
            table = table.set_column(i, f.name, pc.cast(table.column(i), pa.string()))
    return table.to_pandas(types_mapper=lambda t: pd.StringDtype()
                           if pa.types.is_string(t) or pa.types.is_large_string(t) else None)


def _is_list(col: pd.Series) -> bool:
    first = col.dropna()
    return len(first) > 0 and isinstance(first.iloc[0], (list, np.ndarray))


def _id_column(frame: pd.DataFrame, col: str, file: Path) -> pd.Series:
    """An id column as text; floating-point ids (1.0, NaN) are ambiguous and rejected."""
    if pd.api.types.is_float_dtype(frame[col]):
        raise DataError("ids are stored as floating-point numbers (e.g. 1.0); write them as "
                        "integers or text", file=str(file), column=col)
    return clean_ids(frame[col])


def label_scale(spec: TableSource) -> tuple[float, float]:
    """The range a label may take: the explicit scale, [0, 1] for binary labels, counts >= 0."""
    if spec.label == "count":
        return 0.0, float("inf")
    if spec.label == "binary":
        return 0.0, 1.0
    return spec.rating_scale


def read_log(path: Path, spec: TableSource, allow_empty: bool = False) -> pd.DataFrame:
    """An interaction log under the column mapping ``spec``, as the canonical interactions
    (:func:`interactions_frame`: ids as text, rating, epoch seconds, 1-based source_row).

    Single cells that do not parse (a rating 'five', a date 'yesterday') become nulls that
    validation quarantines by row; a column none of whose values parse, a missing mapped
    column, an unreadable file: :class:`DataError` naming file, row and column. The ingest
    stage reads the user's log with it, and the nightly batch each landing file."""
    log_df = _read_any(path, spec, allow_empty)
    needed = [spec.user_col, spec.item_col, spec.timestamp_col]
    if spec.rating_col is not None:
        needed.append(spec.rating_col)
    if spec.platform_col is not None:
        needed.append(spec.platform_col)
    for col in needed:
        if col not in log_df.columns:
            raise DataError(f"required column missing (found: {list(log_df.columns)}); "
                            "check the column mapping in params (ingest.table)",
                            file=str(path), column=col)
    if spec.rating_col is None:
        rating = pd.Series(1.0, index=log_df.index)
    else:
        raw_rating = log_df[spec.rating_col].astype("string")
        rating = numeric(raw_rating)
        check_parsed(raw_rating, rating, str(path), spec.rating_col, "a number")
    ts = log_df[spec.timestamp_col]
    if pd.api.types.is_datetime64_any_dtype(ts):
        ts = (pd.to_datetime(ts, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1s")
        ts = ts.astype("Int64")
    else:
        raw_ts = ts.astype("string")
        ts = epoch_seconds(raw_ts, spec.timestamp_unit)
        check_parsed(raw_ts, ts, str(path), spec.timestamp_col,
                      f"a time in unit {spec.timestamp_unit!r}",
                      "; set ingest.table.timestamp_unit (s | ms | us | ns | iso)")
    platform = (None if spec.platform_col is None
                else _id_column(log_df, spec.platform_col, path))
    return interactions_frame(_id_column(log_df, spec.user_col, path),
                              _id_column(log_df, spec.item_col, path), rating, ts,
                              platform=platform)


def read_table(params: IngestParams) -> RawData:
    """A log with a column mapping in params (:func:`read_log`), optional user / item feature
    tables."""
    spec = params.table
    if not spec.interactions:
        raise DataError("ingest.table.interactions must name the interaction log",
                        column="table.interactions")
    path = Path(spec.interactions)
    interactions = read_log(path, spec)
    platform = interactions["platform"] if "platform" in interactions.columns else None
    lo, hi = label_scale(spec)
    platforms = None
    if platform is not None:   # declared in params, or every value the log uses
        platforms = (list(spec.platforms) if spec.platforms
                     else sorted(pd.unique(platform.dropna()).tolist()))

    def features(file: str | None, id_col: str, kinds: dict[str, str], entity: str
                 ) -> tuple[pd.DataFrame, dict[str, dict[str, Any]], str]:
        if file is None:
            ids = pd.unique(interactions[f"{entity}_id"].dropna())
            return pd.DataFrame({f"{entity}_id": ids}, dtype="string"), {}, str(path)
        fpath = Path(file)
        frame = _read_any(fpath, spec)
        if id_col not in frame.columns:
            raise DataError(f"id column missing (found: {list(frame.columns)})",
                            file=str(fpath), column=id_col)
        out = pd.DataFrame({f"{entity}_id": _id_column(frame, id_col, fpath)})
        for name, kind in kinds.items():
            if name not in frame.columns:
                raise DataError("feature column named in params is missing",
                                file=str(fpath), column=name)
            col = frame[name]
            if kind == "numeric":
                raw = col.astype("string")
                out[name] = numeric(raw)
                check_parsed(raw, out[name], str(fpath), name, "a number")
            elif kind == "multicategorical":
                out[name] = col if _is_list(col) else split_lists(col, spec.list_separator)
            elif kind in ("categorical", "text"):
                out[name] = col.astype("string")
            else:
                raise DataError(f"unknown feature kind {kind!r}", column=name)
        # the row in the feature file, so validation names it (1-based, header not counted)
        out["source_row"] = np.arange(1, len(out) + 1, dtype=np.int64)
        return out, {name: {"kind": kind} for name, kind in kinds.items()}, str(fpath)

    users, ufeat, ufile = features(spec.users, spec.user_col, spec.user_features, "user")
    items, ifeat, ifile = features(spec.items, spec.item_col, spec.item_features, "item")
    return RawData(dataset=f"table:{path.name}", interactions=interactions, users=users,
                   items=items, user_features=ufeat, item_features=ifeat,
                   rating={"kind": spec.label, "min": float(lo), "max": float(hi)},
                   source_files={"interactions": str(path), "users": ufile, "items": ifile},
                   platforms=platforms)


# ------------------------------------------------------------------------------------------
# synthetic log with planted structure


