"""Protocol ``temporal`` (default): users split by first interaction, tasks in time order.

Users ordered by first interaction: the earliest fraction are meta-train, the next validation,
the latest test. ``test_start`` is the first interaction of the first test user; nothing dated
at or after it is used for meta-train or validation tasks. Items first seen before
``test_start`` are *existing*, the others *new*. Test tasks carry a scenario:

- warm:           meta-train users, support = their last K interactions before test_start,
                  query = their first Q later interactions with existing items;
- item_cold:      the same users and support, query = later interactions with new items;
- user_cold:      test users, support = their first K interactions, query = the next Q
                  interactions with existing items;
- user_item_cold: test users, same support, query = the next Q interactions with new items.

Validation tasks are validation users' first K / next Q interactions before test_start.
Meta-train tasks draw support and query from each train user's history before test_start, at
random (param) or in time order. Users with too few interactions for a K are counted per split,
scenario and K, never silently lost.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from metarec.config import EpisodesParams
from metarec.data.protocols.common import (
    HISTORY_COLUMNS,
    Split,
    TaskRows,
    cumcount,
    first_k_next_q,
    member,
    ordered,
    runs,
    support_and_query,
    train_draws,
)
from metarec.errors import DataError

SPLITS = ("train", "val", "test")


def temporal(df: pd.DataFrame, p: EpisodesParams) -> Split:
    rng = np.random.default_rng(p.seed)
    data = ordered(df)
    user, ts, pos = (data[c].to_numpy() for c in ("user_id", "timestamp", "pos"))
    first_row = np.flatnonzero(pos == 0)                          # each user's first row
    by_first, split_of = _split_users(user[first_row], ts[first_row], p)
    n_train, n_val = int((split_of == 0).sum()), int((split_of == 1).sum())
    firsts = ts[first_row][by_first]
    test_start = int(firsts[n_train + n_val])
    val_start = int(firsts[n_train]) if n_val else test_start
    item_first = data.groupby("item_id")["timestamp"].min()
    existing_items = item_first.index[item_first < test_start]

    row_split = np.repeat(split_of, data["n"].to_numpy()[first_row])
    existing = data["item_id"].isin(existing_items).to_numpy()
    before = ts < test_start
    tasks = TaskRows(data)
    too_few: dict[str, Any] = {"val": {}, "test": {}}

    # meta-train: train users' history before the test period
    train_hist = np.flatnonzero((row_split == 0) & before)
    too_few["train"] = train_draws(tasks, train_hist, p, rng)

    val_hist = np.flatnonzero((row_split == 1) & before)
    test_hist = np.flatnonzero(row_split == 2)
    val_pos, test_pos = pos[val_hist], pos[test_hist]
    test_new = {"user_cold": existing[test_hist], "user_item_cold": ~existing[test_hist]}
    known = _known_users(user, pos, np.flatnonzero(row_split == 0), before, existing, p)
    for k in p.support_sizes:
        sup, query, lacking = first_k_next_q(user, val_hist, val_pos, k, p.query_size)
        tasks.add(sup, query, "val", "user_cold", k)
        too_few["val"][f"user_cold_k{k}"] = lacking
        for scen, flt in test_new.items():
            sup, query, lacking = first_k_next_q(user, test_hist, test_pos, k, p.query_size,
                                                 flt)
            tasks.add(sup, query, "test", scen, k)
            too_few["test"][f"{scen}_k{k}"] = lacking
        # warm / item-cold: train users' last K before test_start as support, later rows
        # (with existing / new items) as query
        sup_rows = known.last_rows[known.last_back <= k]
        sup_users = runs(user[sup_rows])[0]
        for scen, query_rows in known.queries.items():
            after_users = known.drawn_from[scen]    # users drawn from: either kind of row
            users = len(sup_users) + len(after_users) - member(sup_users, after_users).sum()
            sup, query, lacking = support_and_query(user, sup_rows, query_rows, k, int(users))
            tasks.add(sup, query, "test", scen, k)
            too_few["test"][f"{scen}_k{k}"] = lacking
    info = {"test_start": test_start, "val_start": val_start,
            "users": {s: int((split_of == i).sum()) for i, s in enumerate(SPLITS)},
            "items": {"existing": int(len(existing_items)),
                      "new": int(len(item_first) - len(existing_items))},
            "too_few": too_few}
    train_users = pd.Series(user[first_row][by_first[:n_train]])   # by first interaction
    history = pd.DataFrame({c: data[c].to_numpy()[train_hist] for c in HISTORY_COLUMNS},
                           copy=False)
    return Split(tasks.frame(), info, train_users, existing_items.to_series(), history)


def _split_users(users: np.ndarray, first: np.ndarray, p: EpisodesParams
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Users (ascending, with their first timestamps) ordered by first interaction (ties by
    user), and each user's split code: 0 meta-train, 1 validation, 2 test."""
    by_first = np.lexsort((users, first))
    n = len(users)
    f_train, f_val, _ = p.split_fractions
    n_train, n_val = int(np.floor(f_train * n)), int(np.floor(f_val * n))
    if n_train == 0 or n - n_train - n_val <= 0:
        raise DataError(f"too few users ({n}) for split fractions {p.split_fractions}")
    rank = np.arange(n)
    split_of = np.empty(n, dtype=np.int8)
    split_of[by_first] = np.where(rank < n_train, 0, np.where(rank < n_train + n_val, 1, 2))
    return by_first, split_of


class _Known(NamedTuple):
    """The meta-train users' rows that warm and item-cold tasks draw from."""

    last_rows: np.ndarray      # their last rows before test_start (as many as the largest K)
    last_back: np.ndarray      # 1 = the last row before test_start, 2 = the one before ...
    queries: dict[str, np.ndarray]     # per scenario, the first Q later rows of each user
    drawn_from: dict[str, np.ndarray]  # per scenario, the users with such later rows


def _known_users(user: np.ndarray, pos: np.ndarray, known: np.ndarray, before: np.ndarray,
                 existing: np.ndarray, p: EpisodesParams) -> _Known:
    """Rows of meta-train users (``known``, positions into the ordered log) for their test
    tasks: support = the last K before test_start; query = the next Q rows with existing
    items (warm) or with new items (item_cold)."""
    users, rows = runs(user[known])
    with_before, count = runs(user[known[before[known]]])
    per_user = np.zeros(len(users), dtype=np.int64)           # rows before test_start
    per_user[np.searchsorted(users, with_before)] = count
    back = np.repeat(per_user, rows) - pos[known]
    last = before[known] & (back <= max(p.support_sizes))
    queries, drawn_from = {}, {}
    for scen, flt in (("warm", existing), ("item_cold", ~existing)):
        after = known[~before[known] & flt[known]]
        queries[scen] = after[cumcount(user[after]) < p.query_size]
        drawn_from[scen] = runs(user[after])[0]
    return _Known(known[last], back[last], queries, drawn_from)
