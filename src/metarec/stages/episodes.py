"""Stage `episodes`: one meta-learning task per user (and support size K).

Protocol "temporal" (default): users ordered by first interaction; the earliest fraction are
meta-train, the next validation, the latest test. ``test_start`` is the first interaction of the
first test user; nothing dated at or after it is used for meta-train or validation tasks. Items
first seen before ``test_start`` are *existing*, the others *new*. Test tasks carry a scenario:

- warm:           meta-train users, support = their last K interactions before test_start,
                  query = their first Q later interactions with existing items;
- item_cold:      the same users and support, query = later interactions with new items;
- user_cold:      test users, support = their first K interactions, query = the next Q
                  interactions with existing items;
- user_item_cold: test users, same support, query = the next Q interactions with new items.

Validation tasks are validation users' first K / next Q interactions before test_start.
Meta-train tasks draw support and query from each train user's history before test_start, at
random (param) or in time order. Users with too few interactions for a K are counted per split,
scenario and K in the summary, never silently lost. Everything is vectorised over rows.
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
from metarec.data.encoding import fit_entity_vocab
from metarec.data.tasks import EPISODE_COLUMNS
from metarec.errors import DataError
from metarec.io import read_json, read_tracked, write_json, write_parquet

log = logging.getLogger("metarec.episodes")
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
ROLE_ORDER = {"support": 0, "query": 1}
SCENARIO_ORDER = {"train": 0, "val": 1, "warm": 2, "user_cold": 3, "item_cold": 4,
                  "user_item_cold": 5}


def _sort(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Stable multi-key sort, fast on tens of millions of rows.

    Keys are packed (by their value ranges) into as few int64 words as fit, then sorted with
    stable argsorts from the least significant word: pandas' and numpy's multi-key sorts
    compare key by key and are several times slower.
    """
    cols = []
    for k in keys:
        v = df[k].cat.codes if isinstance(df[k].dtype, pd.CategoricalDtype) else df[k]
        v = np.asarray(v, dtype=np.int64)
        lo = int(v.min()) if len(v) else 0
        bits = max(int(v.max() - lo).bit_length(), 1) if len(v) else 1
        cols.append((v - lo, bits))
    words: list[np.ndarray] = []
    word, used = None, 0
    for v, bits in cols:                      # most significant key first
        if word is None or used + bits > 62:
            if word is not None:
                words.append(word)
            word, used = v.copy(), bits
        else:
            word = (word << bits) | v
            used += bits
    if word is not None:
        words.append(word)
    order = np.arange(len(df))
    for w in reversed(words):
        order = order[np.argsort(w[order], kind="stable")]
    return df.take(order)


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Interactions sorted by user then time (ties by item), with each row's position."""
    out = _sort(df, ["user_id", "timestamp", "item_id"]).reset_index(drop=True)
    out["pos"] = out.groupby("user_id", sort=False).cumcount().astype(np.int64)
    out["n"] = out.groupby("user_id", sort=False)["pos"].transform("size").astype(np.int64)
    return out


def _const(value: str, order: dict[str, int], n: int) -> pd.Categorical:
    """A column holding one label, as a cheap ordered categorical (no per-row strings)."""
    return pd.Categorical.from_codes(np.full(n, order[value], dtype=np.int8),
                                     categories=list(order), ordered=True)


def _label(frame: pd.DataFrame, split: str, scenario: str, k: int, draw: int = 0
           ) -> pd.DataFrame:
    n = len(frame)
    return frame.assign(split=_const(split, SPLIT_ORDER, n),
                        scenario=_const(scenario, SCENARIO_ORDER, n), k=k, draw=draw)


def _first_k_next_q(hist: pd.DataFrame, k: int, q: int, query_filter: pd.Series | None
                    ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Support = positions < k; query = the first q later rows passing ``query_filter``.

    Returns support rows, query rows (for users that have >= 1 query row) and the number of
    users without enough interactions.
    """
    sup = hist[hist["pos"] < k]
    later = hist[hist["pos"] >= k]
    if query_filter is not None:
        later = later[query_filter.loc[later.index]]
    qrank = later.groupby("user_id", sort=False).cumcount()
    query = later[qrank < q]
    ok = pd.Index(query["user_id"].unique()).intersection(
        sup.groupby("user_id", sort=False).size().loc[lambda s: s == k].index)
    users = hist["user_id"].nunique()
    return sup[sup["user_id"].isin(ok)], query[query["user_id"].isin(ok)], users - len(ok)


def _roles(sup: pd.DataFrame, query: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([sup.assign(role=_const("support", ROLE_ORDER, len(sup))),
                      query.assign(role=_const("query", ROLE_ORDER, len(query)))],
                     ignore_index=True)


def _train_draws(hist: pd.DataFrame, p: EpisodesParams, rng: np.random.Generator
                 ) -> tuple[list[pd.DataFrame], dict[str, int]]:
    """Meta-train tasks: ``train_draws`` per user, K cycling through ``support_sizes``."""
    frames, too_few = [], {}
    for draw in range(p.train_draws):
        k = p.support_sizes[draw % len(p.support_sizes)]
        h = hist.copy()
        if p.train_draw == "random":
            h["key"] = rng.random(len(h))
            h = _sort(h, ["user_id", "key"])
            h["pos"] = h.groupby("user_id", sort=False).cumcount()
        sup, query, lacking = _first_k_next_q(h, k, p.query_size, None)
        too_few[f"draw{draw}_k{k}"] = lacking
        frames.append(_label(_roles(sup, query), "train", "train", k, draw))
    return frames, too_few


def _temporal(df: pd.DataFrame, p: EpisodesParams) -> tuple[pd.DataFrame, dict[str, Any],
                                                          pd.Series, pd.Series]:
    rng = np.random.default_rng(p.seed)
    first = df.groupby("user_id")["timestamp"].min().reset_index()
    first = first.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)
    n = len(first)
    f_train, f_val, _ = p.split_fractions
    n_train, n_val = int(np.floor(f_train * n)), int(np.floor(f_val * n))
    if n_train == 0 or n - n_train - n_val <= 0:
        raise DataError(f"too few users ({n}) for split fractions {p.split_fractions}")
    split = pd.Series(np.where(np.arange(n) < n_train, "train",
                               np.where(np.arange(n) < n_train + n_val, "val", "test")),
                      index=first["user_id"])
    test_start = int(first["timestamp"].iloc[n_train + n_val])
    val_start = int(first["timestamp"].iloc[n_train]) if n_val else test_start
    item_first = df.groupby("item_id")["timestamp"].min()
    existing_items = item_first.index[item_first < test_start]

    data = _ordered(df)
    data["user_split"] = split.reindex(data["user_id"]).to_numpy()
    data["existing"] = data["item_id"].isin(existing_items)
    before = data["timestamp"] < test_start
    frames: list[pd.DataFrame] = []
    too_few: dict[str, Any] = {}

    # meta-train: train users' history before the test period
    train_hist = data[(data["user_split"] == "train") & before]
    draws, too_few["train"] = _train_draws(train_hist, p, rng)
    frames += draws

    val_hist = data[(data["user_split"] == "val") & before]
    test_hist = data[data["user_split"] == "test"]
    # warm / item-cold: train users' last K before test_start as support, later rows as query
    known = data[data["user_split"] == "train"].copy()
    n_before = before[known.index].groupby(known["user_id"], sort=False).transform("sum")
    too_few["val"], too_few["test"] = {}, {}
    for k in p.support_sizes:
        sup, query, lacking = _first_k_next_q(val_hist, k, p.query_size, None)
        frames.append(_label(_roles(sup, query), "val", "user_cold", k))
        too_few["val"][f"user_cold_k{k}"] = lacking
        for scen, flt in (("user_cold", data["existing"]), ("user_item_cold", ~data["existing"])):
            sup, query, lacking = _first_k_next_q(test_hist, k, p.query_size, flt)
            frames.append(_label(_roles(sup, query), "test", scen, k))
            too_few["test"][f"{scen}_k{k}"] = lacking
        # shift positions so that the last k rows before test_start get pos < k
        shifted = known.assign(pos=known["pos"] - (n_before - k))
        shifted = shifted[shifted["pos"] >= 0]
        for scen, flt in (("warm", data["existing"]), ("item_cold", ~data["existing"])):
            after = shifted[(shifted["timestamp"] >= test_start) & flt.loc[shifted.index]]
            sup_rows = shifted[(shifted["timestamp"] < test_start) & (shifted["pos"] < k)]
            hist = pd.concat([sup_rows, after.assign(pos=k + after.groupby(
                "user_id", sort=False).cumcount())])
            sup, query, lacking = _first_k_next_q(hist, k, p.query_size, None)
            frames.append(_label(_roles(sup, query), "test", scen, k))
            too_few["test"][f"{scen}_k{k}"] = lacking
    tasks = pd.concat(frames, ignore_index=True)
    info = {"test_start": test_start, "val_start": val_start,
            "users": {s: int((split == s).sum()) for s in ("train", "val", "test")},
            "items": {"existing": int(len(existing_items)),
                      "new": int(len(item_first) - len(existing_items))},
            "too_few": too_few}
    train_users = split.index[split == "train"].to_series()
    return tasks, info, train_users, existing_items.to_series()


def _finish(tasks: pd.DataFrame) -> pd.DataFrame:
    """Assign deterministic task ids and the on-disk column types."""
    for col, order in (("split", SPLIT_ORDER), ("scenario", SCENARIO_ORDER),
                       ("role", ROLE_ORDER)):
        if not isinstance(tasks[col].dtype, pd.CategoricalDtype):
            tasks[col] = pd.Categorical(tasks[col], categories=list(order), ordered=True)
    keys = ["split", "scenario", "k", "draw", "user_id"]
    tasks = _sort(tasks, keys + ["role", "timestamp", "item_id"])
    tasks["task_id"] = tasks.groupby(keys, sort=False, observed=True).ngroup()
    return tasks[list(EPISODE_COLUMNS)].reset_index(drop=True)


def _to_arrow(tasks: pd.DataFrame, user_index: pd.Index, item_index: pd.Index) -> pa.Table:
    """Tasks (id codes, categorical labels) -> the on-disk arrow table of EPISODE_COLUMNS.

    Strings are gathered from the small dictionaries with arrow's ``take`` instead of building
    millions of Python strings."""
    def take(values: Any, codes: np.ndarray) -> pa.Array:
        return pc.take(pa.array(np.asarray(values, dtype=object), type=pa.string()),
                       pa.array(codes))

    cols = {}
    for name, dtype in EPISODE_COLUMNS.items():
        col = tasks[name]
        if name in ("user_id", "item_id"):
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
    df = pd.DataFrame({"user_id": ucodes.astype(np.int32), "item_id": icodes.astype(np.int32),
                       "rating": inter["rating"].to_numpy(np.float32),
                       "timestamp": inter["timestamp"].to_numpy(np.int64)})
    if params.protocol == "temporal":
        tasks, info, train_users, known_items = _temporal(df, params)
    elif params.protocol == "melu":
        from metarec.stages.protocols import melu

        tasks, info, train_users, known_items = melu(df, params)
    else:
        from metarec.stages.protocols import predefined

        tasks, info, train_users, known_items = predefined(df, params, user_index, item_index)
    tasks = _finish(tasks)
    train_users = pd.Series(np.asarray(user_index)[train_users.to_numpy()])
    known_items = pd.Series(np.asarray(item_index)[known_items.to_numpy()])
    vocab = {
        "dataset": schema["dataset"], "protocol": params.protocol,
        "rating": schema["rating"],
        "users": fit_entity_vocab(users, "user_id", schema["users"], train_users),
        "items": fit_entity_vocab(items, "item_id", schema["items"], known_items),
    }
    summary = {"protocol": params.protocol, "tasks": summarise(tasks), **info,
               "rows": int(len(tasks))}
    write_parquet(_to_arrow(tasks, user_index, item_index), out / "episodes.parquet")
    write_parquet(users, out / "users.parquet")
    write_parquet(items, out / "items.parquet")
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
