"""Episodes: one meta-learning task per user (and support size K), from the validated tables.

The protocol (``episodes.protocol``: temporal, melu, predefined; :mod:`metarec.data.protocols`)
splits users and draws each split's tasks; :func:`build` assigns task ids, fits the
vocabularies on the training period and writes the tasks and vocabularies (the episodes stage
and the backtest's retraining call it). Users with too few
interactions for a K are counted per split, scenario and K, never silently lost.

The validated log is read ``episodes.batch_rows`` rows at a time into integer codes (a few
bytes per row: ids, label, timestamp); the protocols work on those codes and on positions
into them, and the tasks are written back as strings a batch of rows at a time, the same
bytes for any batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metarec.config import EpisodesParams
from metarec.data import protocols
from metarec.data.batches import IdCodes, read_batches
from metarec.data.encoding import fit_entity_vocab
from metarec.data.labels import label_treatment, relevance_threshold
from metarec.data.protocols.common import ROLE_ORDER, SCENARIO_ORDER, SPLIT_ORDER, sort_order
from metarec.data.protocols.platforms import platform_tasks
from metarec.data.tasks import EPISODE_COLUMNS, HISTORY_TYPES, PLATFORM_COLUMN, TEXT_VECTORS
from metarec.data.text import (
    TextCache,
    cache_file,
    encode_cached,
    fit_projection,
    projected,
    text_keys,
)
from metarec.errors import DataError
from metarec.io import read_json, read_tracked, write_json, write_parquet, write_parquet_stream

log = logging.getLogger("metarec.episodes")
RESTORE = "dvc repro validate"
PROTOCOLS = {"temporal": protocols.temporal, "melu": protocols.melu}


def _task_order(tasks: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The on-disk row order of the tasks and each sorted row's deterministic task id: rows
    by (split, scenario, k, draw, user, role, timestamp, item); a task is a run of equal
    (split, scenario, k, draw, user). Labels become ordered categoricals (in place)."""
    for col, order in (("split", SPLIT_ORDER), ("scenario", SCENARIO_ORDER),
                       ("role", ROLE_ORDER)):
        if not isinstance(tasks[col].dtype, pd.CategoricalDtype):
            tasks[col] = pd.Categorical(tasks[col], categories=list(order), ordered=True)
    keys = ["split", "scenario", "k", "draw", "user_id"]
    order = sort_order(tasks, keys + ["role", "timestamp", "item_id"])
    new = np.zeros(len(order), dtype=bool)
    new[:1] = True
    for key in keys:
        col = tasks[key]
        values = (col.cat.codes if isinstance(col.dtype, pd.CategoricalDtype) else col
                  ).to_numpy()[order]
        new[1:] |= values[1:] != values[:-1]
    return order, (np.cumsum(new) - 1).astype(np.int32)


def _read_log(path: Path, params: EpisodesParams, users: pd.DataFrame, items: pd.DataFrame,
              rating: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, pd.Index], dict[str, Any]]:
    """The validated log as integer codes, read ``episodes.batch_rows`` rows at a time: ids
    (and platforms) numbered in the sorted order of their strings, treated labels (float32),
    timestamps; rows sorted by user, time and item. Returns the frame, each id column's
    sorted strings (code -> id) and the rating description."""
    file = read_tracked(path, RESTORE, pq.ParquetFile)
    names = file.schema_arrow.names
    id_cols = ["user_id", "item_id"] + (["platform"] if "platform" in names else [])
    coders = {"user_id": IdCodes(pa.array(users["user_id"], from_pandas=True)),
              "item_id": IdCodes(pa.array(items["item_id"], from_pandas=True)),
              "platform": IdCodes(pa.array([], type=pa.large_string()))}
    n = file.metadata.num_rows
    codes = {c: np.empty(n, dtype=np.int32) for c in id_cols}
    labels, ts = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.int64)
    specs = []
    for start, batch in read_batches(file, params.batch_rows, path, RESTORE,
                                     id_cols + ["rating", "timestamp"]):
        rows = slice(start, start + batch.num_rows)
        for c in id_cols:
            codes[c][rows] = coders[c](batch.column(c))
        spec, treated = label_treatment(rating, batch.column("rating").to_numpy(), params)
        specs.append(spec)
        labels[rows] = treated.astype(np.float32)
        ts[rows] = batch.column("timestamp").to_numpy()
    indexes = {}
    for c in id_cols:
        missing = np.flatnonzero(codes[c] < 0)
        if len(missing):
            raise DataError(f"{c} missing; run `{RESTORE}` to set such rows aside",
                            file=str(path), row=int(missing[0]) + 1, column=c)
        indexes[c], codes[c] = _sorted_codes(coders[c], codes[c])
    columns = {"user_id": codes.pop("user_id"), "item_id": codes.pop("item_id"),
               "rating": labels, "timestamp": ts, **codes}       # platform codes, if any
    del labels, ts
    order = sort_order(pd.DataFrame(columns, copy=False), ["user_id", "timestamp", "item_id"])
    for c in list(columns):                 # one column at a time (memory)
        columns[c] = columns[c][order]
    return pd.DataFrame(columns, copy=False), indexes, _rating_of(specs)


def _sorted_codes(coder: IdCodes, codes: np.ndarray) -> tuple[pd.Index, np.ndarray]:
    """Codes renumbered by the sorted strings of the ids the log uses (as
    ``pd.factorize(ids, sort=True)``: byte order of UTF-8 = code point order)."""
    used = np.bincount(codes, minlength=len(coder)) > 0
    ids = coder.names().filter(pa.array(used))
    order = pc.sort_indices(ids).to_numpy()
    rank = np.zeros(len(coder), dtype=np.int32)
    rank[np.flatnonzero(used)[order]] = np.arange(len(ids), dtype=np.int32)
    strings = ids.take(pa.array(order)).to_numpy(zero_copy_only=False)
    return pd.Index(pd.array(strings, dtype="string")), rank[codes]


def _rating_of(specs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rating description of the whole log from those of its batches (largest labels)."""
    spec = dict(specs[0])
    for key in ("max", "raw_max"):
        if key in spec:
            spec[key] = max(s[key] for s in specs)
    return spec


def _to_arrow(tasks: pd.DataFrame, names: dict[str, pa.Array],
              columns: dict[str, str] = EPISODE_COLUMNS) -> pa.Table:
    """Rows (id codes, categorical labels) -> the on-disk arrow table of ``columns``.

    Strings are gathered from the dictionaries (``names``: each id column's strings by code,
    :func:`_names`) with arrow's ``take`` instead of building millions of Python strings."""
    def take(values: Any, codes: np.ndarray) -> pa.Array:
        return pc.take(pa.array(np.asarray(values, dtype=object), type=pa.string()),
                       pa.array(codes))

    cols = {}
    for name, dtype in columns.items():
        col = tasks[name]
        if name in names:   # ids by code; platform -1 = none (a task of another scenario)
            codes = col.to_numpy(np.int64)
            cols[name] = pc.take(names[name], pa.array(codes, mask=codes < 0))
        elif isinstance(col.dtype, pd.CategoricalDtype):
            cols[name] = take(col.cat.categories, col.cat.codes.to_numpy(np.int64))
        else:
            cols[name] = pa.array(col.to_numpy(dtype))
    return pa.table(cols)


def _names(indexes: dict[str, pd.Index]) -> dict[str, pa.Array]:
    """Each id column's strings by code, as arrow (built once, taken from per batch)."""
    return {c: pa.array(np.asarray(index, dtype=object), type=pa.string())
            for c, index in indexes.items()}


def summarise(tasks: pd.DataFrame) -> dict[str, Any]:
    """Task counts per split, scenario and K (nested, JSON-ready)."""
    per = tasks.drop_duplicates("task_id").groupby(["split", "scenario", "k"],
                                                   observed=True).size()
    out: dict[str, Any] = {}
    for (split, scen, k), count in per.items():
        out.setdefault(split, {}).setdefault(scen, {})[str(k)] = int(count)
    return out


def _text_spec(params: EpisodesParams) -> dict[str, Any] | None:
    """How item text becomes model input (None: display only), recorded in the vocabulary."""
    if params.text_encoder == "none":
        return None
    return {"encoder": params.text_encoder, "dim": params.text_dim, "seed": params.seed}


def build(params: EpisodesParams, inp: str | Path, out: str | Path,
          validation_summary: str | Path | None = None) -> dict[str, Any]:
    """Build tasks and vocabularies from the validated tables into ``out``; returns the data
    metrics (``validation_summary``: the validate stage's, for the quarantine count)."""
    inp, out = Path(inp), Path(out)
    schema = read_tracked(inp / "schema.json", RESTORE, read_json)
    users = read_tracked(inp / "users.parquet", RESTORE)
    items = read_tracked(inp / "items.parquet", RESTORE)
    # work on integer codes of the ids (fast grouping, same order as the strings)
    df, indexes, rating_spec = _read_log(inp / "interactions.parquet", params, users, items,
                                         schema["rating"])
    user_index, item_index = indexes["user_id"], indexes["item_id"]
    coded = df[["user_id", "item_id", "rating", "timestamp"]]
    if params.protocol == "predefined":
        split = protocols.predefined(coded, params, user_index, item_index)
    else:
        split = PROTOCOLS[params.protocol](coded, params)
    raw_tasks, info, columns = split.tasks, split.info, EPISODE_COLUMNS
    if "platform" in df.columns:   # tasks per (user, platform) for users new on one
        raw_tasks = _with_platform_tasks(split, df, params)
        columns = {**EPISODE_COLUMNS, **PLATFORM_COLUMN}
        info["platforms"] = [str(x) for x in indexes["platform"]]
    n_rows = len(df)
    del df, coded
    order, task_id = _task_order(raw_tasks)
    starts = np.flatnonzero(np.diff(task_id, prepend=-1))
    firsts = raw_tasks.iloc[order[starts]].assign(task_id=task_id[starts])
    train_users = pd.Series(np.asarray(user_index)[split.train_users.to_numpy()])
    known_items = pd.Series(np.asarray(item_index)[split.known_items.to_numpy()])
    vocab = {
        "dataset": schema["dataset"], "protocol": params.protocol,
        "draws": {"support_sizes": list(params.support_sizes), "query_size": params.query_size,
                  "train_draw": params.train_draw, "val_users": params.val_users,
                  "seed": params.seed},
        "rating": {**rating_spec, "relevant": relevance_threshold(rating_spec, params)},
        "users": fit_entity_vocab(users, "user_id", schema["users"], train_users),
        "items": fit_entity_vocab(items, "item_id", schema["items"], known_items,
                                  _text_spec(params)),
    }
    summary = {"protocol": params.protocol, "tasks": summarise(firsts), **info,
               "rows": int(len(raw_tasks)), "history_rows": int(len(split.history))}

    names = _names(indexes)

    def task_parts() -> Iterator[pa.Table]:
        for a in range(0, len(order), params.batch_rows):
            rows = raw_tasks.iloc[order[a:a + params.batch_rows]]
            yield _to_arrow(rows.assign(task_id=task_id[a:a + params.batch_rows]), names,
                            columns)

    def history_parts() -> Iterator[pa.Table]:
        for a in range(0, len(split.history), params.batch_rows):
            yield _to_arrow(split.history.iloc[a:a + params.batch_rows], names,
                            HISTORY_TYPES)

    write_parquet_stream(task_parts(), out / "episodes.parquet", _arrow_schema(columns))
    write_parquet_stream(history_parts(), out / "history.parquet", _arrow_schema(HISTORY_TYPES))
    write_parquet(users, out / "users.parquet")
    write_parquet(items, out / "items.parquet")
    history_items = np.asarray(item_index)[np.unique(split.history["item_id"].to_numpy())]
    _text_vectors(items, vocab["items"], params, out / TEXT_VECTORS, history_items)
    write_json(vocab, out / "vocab.json")
    write_json(summary, out / "summary.json")
    quarantined = _quarantined(validation_summary)
    data_metrics = {"dataset": schema["dataset"], "interactions": n_rows,
                    "users": int(len(users)), "items": int(len(items)),
                    "quarantined": quarantined, "tasks": summary["tasks"],
                    "too_few": info["too_few"]}
    log.info("episodes: %d tasks (%s)", len(starts),
             {s: sum(sum(v.values()) for v in d.values()) for s, d in summary["tasks"].items()})
    n_val = int(firsts.loc[firsts["split"] == "val", "user_id"].nunique())
    if params.val_users and n_val > params.val_users:
        log.info("episodes: every choice on validation reads the tasks of %d of the %d "
                 "validation users (episodes.val_users, a sample drawn with episodes.seed)",
                 params.val_users, n_val)
    return data_metrics


def _arrow_schema(columns: dict[str, str]) -> pa.Schema:
    """The on-disk schema of :func:`_to_arrow`'s tables."""
    return pa.schema([(name, pa.string() if dtype == "string" else pa.from_numpy_dtype(
        np.dtype(dtype))) for name, dtype in columns.items()])


def _with_platform_tasks(split: Any, logged: pd.DataFrame, params: EpisodesParams
                         ) -> pd.DataFrame:
    """The protocol's tasks plus the platform_cold tasks of each split, built from what that
    split may see: test users' whole log, meta-train users' training period, validation users'
    log before the test period (where the protocol has one). Counts of (user, platform) pairs
    with too few interactions go to ``split.info["too_few"]``."""
    tasks, info = split.tasks, split.info
    train_users = pd.Index(split.train_users)

    def users_of(name: str) -> pd.Index:
        return pd.Index(tasks.loc[tasks["split"] == name, "user_id"].unique()
                        ).difference(train_users)

    key = ["user_id", "item_id", "timestamp"]
    sources = {
        "test": (logged, users_of("test")),
        "train": (split.history[key].merge(logged.drop_duplicates(key), on=key), train_users),
        "val": (logged if "test_start" not in info
                else logged[logged["timestamp"] < int(info["test_start"])], users_of("val")),
    }
    frames = [tasks.assign(platform=-1)]
    for name, (rows, users) in sources.items():
        cold, info["too_few"][f"{name}_platform"] = platform_tasks(rows, users, params, name)
        frames.append(cold)
    return pd.concat(frames, ignore_index=True)


def _text_vectors(items: pd.DataFrame, vocab: dict[str, Any], params: EpisodesParams,
                  path: Path, fit_ids: np.ndarray) -> None:
    """Encode every item text once, through the cache kept between runs
    (``episodes.text_cache``), and write the catalogue's vectors beside the tasks, where
    every later stage reads them instead of running the encoder again. A semantic encoder's
    projection to ``text_dim`` is fitted here on the items of the meta-train history
    (``fit_ids``) only, so no validation or test item's text shapes it, and kept in the
    vocabulary (``vocab`` is completed in place)."""
    cols = [n for n, f in vocab["features"].items() if f["kind"] == "text"]
    if not cols:
        return
    spec = vocab["features"][cols[0]]
    keep = TextCache(cache_file(params.text_cache, spec)) if params.text_cache else None
    run = keep if keep is not None else TextCache(path, read=False)
    fit_rows = items["item_id"].astype("string").isin(fit_ids).to_numpy()
    for col in cols:
        vecs = encode_cached(items[col], spec["encoder"], spec["dim"], spec["seed"], run)
        if projected(spec["encoder"]):
            vocab["features"][col]["projection"] = fit_projection(vecs[fit_rows], spec["dim"],
                                                                  col)
    if keep is not None:
        keep.save()
    keys = np.concatenate([text_keys(items[col]) for col in cols])
    run.subset(keys, path).save()


def _quarantined(path: str | Path | None) -> int:
    """Rows set aside by validation (0 when the summary is absent, e.g. in unit tests)."""
    if path is None or not Path(path).exists():
        return 0
    summary = read_json(path)
    tables = summary.get("tables", summary)
    total = 0
    for value in tables.values() if isinstance(tables, dict) else []:
        if isinstance(value, dict) and "rows_quarantined" in value:
            total += int(value["rows_quarantined"])
    return int(summary.get("rows_quarantined", total))
