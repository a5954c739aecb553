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

from typing import Any

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
    user, ts = data["user_id"].to_numpy(), data["timestamp"].to_numpy()
    first_row = np.flatnonzero(data["pos"].to_numpy() == 0)       # each user's first row
    by_first = np.lexsort((user[first_row], ts[first_row]))      # users by first interaction
    n = len(first_row)
    f_train, f_val, _ = p.split_fractions
    n_train, n_val = int(np.floor(f_train * n)), int(np.floor(f_val * n))
    if n_train == 0 or n - n_train - n_val <= 0:
        raise DataError(f"too few users ({n}) for split fractions {p.split_fractions}")
    split_of = np.empty(n, dtype=np.int8)                       # per user, in user order
    split_of[by_first] = np.where(np.arange(n) < n_train, 0,
                                  np.where(np.arange(n) < n_train + n_val, 1, 2))
    firsts = ts[first_row][by_first]
    test_start = int(firsts[n_train + n_val])
    val_start = int(firsts[n_train]) if n_val else test_start
    item_first = data.groupby("item_id")["timestamp"].min()
    existing_items = item_first.index[item_first < test_start]

    row_split = np.repeat(split_of, data["n"].to_numpy()[first_row])
    existing = data["item_id"].isin(existing_items).to_numpy()
    before = ts < test_start
    tasks = TaskRows(data)
    too_few: dict[str, Any] = {}

    # meta-train: train users' history before the test period
    train_hist = np.flatnonzero((row_split == 0) & before)
    too_few["train"] = train_draws(tasks, train_hist, p, rng)

    val_hist = np.flatnonzero((row_split == 1) & before)
    test_hist = np.flatnonzero(row_split == 2)
    pos = data["pos"].to_numpy()
    val_pos, test_pos = pos[val_hist], pos[test_hist]
    test_new = {"user_cold": existing[test_hist], "user_item_cold": ~existing[test_hist]}
    # warm / item-cold: train users' last K before test_start as support, later rows as query
    known = np.flatnonzero(row_split == 0)
    known_users, known_rows = runs(user[known])
    with_before, count = runs(user[known[before[known]]])
    per_user = np.zeros(len(known_users), dtype=np.int64)     # rows before test_start
    per_user[np.searchsorted(known_users, with_before)] = count
    back = np.repeat(per_user, known_rows) - pos[known]       # 1 = the last row before
    last = before[known] & (back <= max(p.support_sizes))
    last_rows, last_back = known[last], back[last]
    queries, drawn_from = {}, {}
    for scen, flt in (("warm", existing), ("item_cold", ~existing)):
        after = known[~before[known] & flt[known]]
        queries[scen] = after[cumcount(user[after]) < p.query_size]
        drawn_from[scen] = runs(user[after])[0]
    del known, back, last, after
    too_few["val"], too_few["test"] = {}, {}
    for k in p.support_sizes:
        sup, query, lacking = first_k_next_q(user, val_hist, val_pos, k, p.query_size)
        tasks.add(sup, query, "val", "user_cold", k)
        too_few["val"][f"user_cold_k{k}"] = lacking
        for scen, flt in test_new.items():
            sup, query, lacking = first_k_next_q(user, test_hist, test_pos, k, p.query_size,
                                                 flt)
            tasks.add(sup, query, "test", scen, k)
            too_few["test"][f"{scen}_k{k}"] = lacking
        sup_rows = last_rows[last_back <= k]       # the last k rows before test_start
        sup_users = runs(user[sup_rows])[0]
        for scen in ("warm", "item_cold"):
            after_users = drawn_from[scen]          # users drawn from: either kind of row
            users = len(sup_users) + len(after_users) - member(sup_users, after_users).sum()
            sup, query, lacking = support_and_query(user, sup_rows, queries[scen], k,
                                                    int(users))
            tasks.add(sup, query, "test", scen, k)
            too_few["test"][f"{scen}_k{k}"] = lacking
    users_of = data["user_id"].to_numpy()[first_row]
    info = {"test_start": test_start, "val_start": val_start,
            "users": {s: int((split_of == i).sum()) for i, s in enumerate(SPLITS)},
            "items": {"existing": int(len(existing_items)),
                      "new": int(len(item_first) - len(existing_items))},
            "too_few": too_few}
    train_users = pd.Series(users_of[by_first[:n_train]])       # by first interaction
    history = pd.DataFrame({c: data[c].to_numpy()[train_hist] for c in HISTORY_COLUMNS},
                           copy=False)
    return Split(tasks.frame(), info, train_users, existing_items.to_series(), history)
