"""Stage `episodes`: one meta-learning task per user (and support size K).

The protocol (``episodes.protocol``: temporal, melu, predefined; :mod:`metarec.data.protocols`)
splits users and draws each split's tasks; this stage assigns task ids, fits the vocabularies
on the training period and writes the tasks, vocabularies and data metrics. Users with too few
interactions for a K are counted per split, scenario and K, never silently lost.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from metarec.config import EpisodesParams
from metarec.data import protocols
from metarec.data.encoding import fit_entity_vocab
from metarec.data.protocols.common import ROLE_ORDER, SCENARIO_ORDER, SPLIT_ORDER, sort_rows
from metarec.data.protocols.platforms import platform_tasks
from metarec.data.tasks import EPISODE_COLUMNS, HISTORY_TYPES, PLATFORM_COLUMN, TEXT_VECTORS
from metarec.data.text import TextCache, encode_cached, encoder_key, text_keys
from metarec.io import read_json, read_tracked, write_json, write_parquet

log = logging.getLogger("metarec.episodes")
PROTOCOLS = {"temporal": protocols.temporal, "melu": protocols.melu}


def _finish(tasks: pd.DataFrame, columns: dict[str, str] = EPISODE_COLUMNS) -> pd.DataFrame:
    """Assign deterministic task ids and the on-disk column types."""
    for col, order in (("split", SPLIT_ORDER), ("scenario", SCENARIO_ORDER),
                       ("role", ROLE_ORDER)):
        if not isinstance(tasks[col].dtype, pd.CategoricalDtype):
            tasks[col] = pd.Categorical(tasks[col], categories=list(order), ordered=True)
    keys = ["split", "scenario", "k", "draw", "user_id"]
    tasks = sort_rows(tasks, keys + ["role", "timestamp", "item_id"])
    tasks["task_id"] = tasks.groupby(keys, sort=False, observed=True).ngroup()
    return tasks[list(columns)].reset_index(drop=True)


def label_treatment(rating: dict[str, Any], values: np.ndarray, params: EpisodesParams
                    ) -> tuple[dict[str, Any], np.ndarray]:
    """Implicit counts become ``log1p(count)`` or 0/1 (``episodes.count_transform``), so every
    label lies on a finite scale; explicit ratings and binary labels stay as they are.
    Returns the rating description the models see and the treated values."""
    if rating.get("kind") != "count":
        return dict(rating), values
    values = np.asarray(values, dtype=np.float64)
    out = np.log1p(values) if params.count_transform == "log1p" else (values > 0) * 1.0
    top = float(out.max()) if out.size else 1.0
    return {**rating, "min": 0.0, "max": max(top, 1.0), "transform": params.count_transform,
            "raw_max": float(values.max()) if values.size else 0.0}, out


def relevance_threshold(rating: dict[str, Any], params: EpisodesParams) -> float:
    """The rating at and above which an interaction is relevant (a positive for ranking):
    ``episodes.relevance_threshold``, or by default 80% of an explicit scale's maximum (4 on
    1-5) and any interaction for implicit labels (counts, binary)."""
    if params.relevance_threshold is not None:
        return float(params.relevance_threshold)
    if rating.get("kind", "explicit") == "explicit":
        return 0.8 * float(rating["max"])
    return float(np.finfo(np.float32).tiny)   # > 0 even in float32: any interaction


def _to_arrow(tasks: pd.DataFrame, user_index: pd.Index, item_index: pd.Index,
              columns: dict[str, str] = EPISODE_COLUMNS,
              platforms: pd.Index | None = None) -> pa.Table:
    """Rows (id codes, categorical labels) -> the on-disk arrow table of ``columns``.

    Strings are gathered from the small dictionaries with arrow's ``take`` instead of building
    millions of Python strings."""
    def take(values: Any, codes: np.ndarray) -> pa.Array:
        return pc.take(pa.array(np.asarray(values, dtype=object), type=pa.string()),
                       pa.array(codes))

    cols = {}
    for name, dtype in columns.items():
        col = tasks[name]
        if name == "platform":   # platform codes, -1 = none (a task of another scenario)
            codes = col.to_numpy(np.int64)
            cols[name] = pc.take(pa.array(np.asarray(platforms, dtype=object), type=pa.string()),
                                 pa.array(codes, mask=codes < 0))
        elif name in ("user_id", "item_id"):
            index = user_index if name == "user_id" else item_index
            cols[name] = take(index, col.to_numpy(np.int64))
        elif isinstance(col.dtype, pd.CategoricalDtype):
            cols[name] = take(col.cat.categories, col.cat.codes.to_numpy(np.int64))
        else:
            cols[name] = pa.array(col.to_numpy(dtype))
    return pa.table(cols)


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


def run(params: EpisodesParams, inp: str | Path, out: str | Path, metrics: str | Path,
        validation_summary: str | Path | None = None) -> dict[str, Any]:
    """Build tasks, vocabularies and the data metrics from the validated tables."""
    inp, out = Path(inp), Path(out)
    restore = "dvc repro validate"
    schema = read_tracked(inp / "schema.json", restore, read_json)
    inter = read_tracked(inp / "interactions.parquet", restore)
    users = read_tracked(inp / "users.parquet", restore)
    items = read_tracked(inp / "items.parquet", restore)
    # work on sorted integer codes of the ids (fast grouping, same order as the strings)
    ucodes, user_index = pd.factorize(inter["user_id"], sort=True)
    icodes, item_index = pd.factorize(inter["item_id"], sort=True)
    rating_spec, ratings = label_treatment(schema["rating"], inter["rating"].to_numpy(),
                                           params)
    df = pd.DataFrame({"user_id": ucodes.astype(np.int32), "item_id": icodes.astype(np.int32),
                       "rating": ratings.astype(np.float32),
                       "timestamp": inter["timestamp"].to_numpy(np.int64)})
    if params.protocol == "predefined":
        split = protocols.predefined(df, params, user_index, item_index)
    else:
        split = PROTOCOLS[params.protocol](df, params)
    raw_tasks, info, columns, platforms = split.tasks, split.info, EPISODE_COLUMNS, None
    if "platform" in inter.columns:   # tasks per (user, platform) for users new on one
        pcodes, platforms = pd.factorize(inter["platform"], sort=True)
        raw_tasks = _with_platform_tasks(split, df.assign(platform=pcodes.astype(np.int32)),
                                         params)
        columns = {**EPISODE_COLUMNS, **PLATFORM_COLUMN}
        info["platforms"] = [str(x) for x in platforms]
    tasks = _finish(raw_tasks, columns)
    train_users = pd.Series(np.asarray(user_index)[split.train_users.to_numpy()])
    known_items = pd.Series(np.asarray(item_index)[split.known_items.to_numpy()])
    vocab = {
        "dataset": schema["dataset"], "protocol": params.protocol,
        "draws": {"support_sizes": list(params.support_sizes), "query_size": params.query_size,
                  "train_draw": params.train_draw},
        "rating": {**rating_spec, "relevant": relevance_threshold(rating_spec, params)},
        "users": fit_entity_vocab(users, "user_id", schema["users"], train_users),
        "items": fit_entity_vocab(items, "item_id", schema["items"], known_items,
                                  _text_spec(params)),
    }
    summary = {"protocol": params.protocol, "tasks": summarise(tasks), **info,
               "rows": int(len(tasks)), "history_rows": int(len(split.history))}
    write_parquet(_to_arrow(tasks, user_index, item_index, columns, platforms),
                  out / "episodes.parquet")
    write_parquet(_to_arrow(split.history, user_index, item_index, HISTORY_TYPES),
                  out / "history.parquet")
    write_parquet(users, out / "users.parquet")
    write_parquet(items, out / "items.parquet")
    _text_vectors(items, vocab["items"], params, out / TEXT_VECTORS)
    write_json(vocab, out / "vocab.json")
    write_json(summary, out / "summary.json")
    quarantined = _quarantined(validation_summary)
    data_metrics = {"dataset": schema["dataset"], "interactions": int(len(inter)),
                    "users": int(len(users)), "items": int(len(items)),
                    "quarantined": quarantined, "tasks": summary["tasks"],
                    "too_few": info["too_few"]}
    write_json(data_metrics, metrics)
    log.info("episodes: %d tasks (%s)", tasks["task_id"].nunique(),
             {s: sum(sum(v.values()) for v in d.values()) for s, d in summary["tasks"].items()})
    return data_metrics


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
                  path: Path) -> None:
    """Encode every item text once, through the cache kept between runs
    (``episodes.text_cache``), and write the catalogue's vectors beside the tasks, where
    every later stage reads them instead of running the encoder again."""
    cols = [n for n, f in vocab["features"].items() if f["kind"] == "text"]
    if not cols:
        return
    spec = vocab["features"][cols[0]]
    key = encoder_key(spec["encoder"], spec["dim"], spec["seed"])
    keep = TextCache(Path(params.text_cache) / f"{key}.parquet") if params.text_cache else None
    run = keep if keep is not None else TextCache(path, read=False)
    for col in cols:
        encode_cached(items[col], spec["encoder"], spec["dim"], spec["seed"], run)
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
