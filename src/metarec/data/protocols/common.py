"""What the episode protocols share: fast sorts, labelled task rows, first-K-next-Q draws.

Task rows carry integer id codes (user_id, item_id), rating, timestamp and the labels
split, scenario, k, draw, role as cheap ordered categoricals. Everything is vectorised.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from metarec.config import EpisodesParams

HISTORY_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


class Split(NamedTuple):
    """What a protocol returns (ids as integer codes)."""

    tasks: pd.DataFrame        # labelled task rows
    info: dict[str, Any]       # test_start, user and item counts, users with too few ratings
    train_users: pd.Series     # codes of the meta-train users (they shape the vocabularies)
    known_items: pd.Series     # codes of the items known in the training period
    history: pd.DataFrame      # every training-period interaction of the meta-train users


def history_of(rows: pd.DataFrame) -> pd.DataFrame:
    """The item-side training data: distinct rows, by user then time (HISTORY_COLUMNS)."""
    return sort_rows(rows[HISTORY_COLUMNS], ["user_id", "timestamp", "item_id"]
                     ).reset_index(drop=True)


SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
ROLE_ORDER = {"support": 0, "query": 1, "cross": 2}   # cross: another platform's history
SCENARIO_ORDER = {"train": 0, "val": 1, "warm": 2, "user_cold": 3, "item_cold": 4,
                  "user_item_cold": 5, "platform_cold": 6}


def sort_rows(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
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


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Interactions sorted by user then time (ties by item), with each row's position."""
    out = sort_rows(df, ["user_id", "timestamp", "item_id"]).reset_index(drop=True)
    out["pos"] = out.groupby("user_id", sort=False).cumcount().astype(np.int64)
    out["n"] = out.groupby("user_id", sort=False)["pos"].transform("size").astype(np.int64)
    return out


def const(value: str, order: dict[str, int], n: int) -> pd.Categorical:
    """A column holding one label, as a cheap ordered categorical (no per-row strings)."""
    return pd.Categorical.from_codes(np.full(n, order[value], dtype=np.int8),
                                     categories=list(order), ordered=True)


def label(frame: pd.DataFrame, split: str, scenario: str, k: int, draw: int = 0
           ) -> pd.DataFrame:
    n = len(frame)
    return frame.assign(split=const(split, SPLIT_ORDER, n),
                        scenario=const(scenario, SCENARIO_ORDER, n), k=k, draw=draw)


def first_k_next_q(hist: pd.DataFrame, k: int, q: int, query_filter: pd.Series | None
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


def roles(sup: pd.DataFrame, query: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([sup.assign(role=const("support", ROLE_ORDER, len(sup))),
                      query.assign(role=const("query", ROLE_ORDER, len(query)))],
                     ignore_index=True)


def train_draws(hist: pd.DataFrame, p: EpisodesParams, rng: np.random.Generator
                 ) -> tuple[list[pd.DataFrame], dict[str, int]]:
    """Meta-train tasks: ``train_draws`` per user, K cycling through ``support_sizes``."""
    frames, too_few = [], {}
    for draw in range(p.train_draws):
        k = p.support_sizes[draw % len(p.support_sizes)]
        h = hist.copy()
        if p.train_draw == "random":  # a random order within each user (integer keys)
            h["key"] = rng.permutation(len(h)).astype(np.int64)
            h = sort_rows(h, ["user_id", "key"])
            h["pos"] = h.groupby("user_id", sort=False).cumcount()
        sup, query, lacking = first_k_next_q(h, k, p.query_size, None)
        too_few[f"draw{draw}_k{k}"] = lacking
        frames.append(label(roles(sup, query), "train", "train", k, draw))
    return frames, too_few


