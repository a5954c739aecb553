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
    Split,
    first_k_next_q,
    history_of,
    label,
    ordered,
    roles,
    train_draws,
)
from metarec.errors import DataError


def temporal(df: pd.DataFrame, p: EpisodesParams) -> Split:
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

    data = ordered(df)
    data["user_split"] = split.reindex(data["user_id"]).to_numpy()
    data["existing"] = data["item_id"].isin(existing_items)
    before = data["timestamp"] < test_start
    frames: list[pd.DataFrame] = []
    too_few: dict[str, Any] = {}

    # meta-train: train users' history before the test period
    train_hist = data[(data["user_split"] == "train") & before]
    draws, too_few["train"] = train_draws(train_hist, p, rng)
    frames += draws

    val_hist = data[(data["user_split"] == "val") & before]
    test_hist = data[data["user_split"] == "test"]
    # warm / item-cold: train users' last K before test_start as support, later rows as query
    known = data[data["user_split"] == "train"].copy()
    n_before = before[known.index].groupby(known["user_id"], sort=False).transform("sum")
    too_few["val"], too_few["test"] = {}, {}
    for k in p.support_sizes:
        sup, query, lacking = first_k_next_q(val_hist, k, p.query_size, None)
        frames.append(label(roles(sup, query), "val", "user_cold", k))
        too_few["val"][f"user_cold_k{k}"] = lacking
        for scen, flt in (("user_cold", data["existing"]), ("user_item_cold", ~data["existing"])):
            sup, query, lacking = first_k_next_q(test_hist, k, p.query_size, flt)
            frames.append(label(roles(sup, query), "test", scen, k))
            too_few["test"][f"{scen}_k{k}"] = lacking
        # shift positions so that the last k rows before test_start get pos < k
        shifted = known.assign(pos=known["pos"] - (n_before - k))
        shifted = shifted[shifted["pos"] >= 0]
        for scen, flt in (("warm", data["existing"]), ("item_cold", ~data["existing"])):
            after = shifted[(shifted["timestamp"] >= test_start) & flt.loc[shifted.index]]
            sup_rows = shifted[(shifted["timestamp"] < test_start) & (shifted["pos"] < k)]
            hist = pd.concat([sup_rows, after.assign(pos=k + after.groupby(
                "user_id", sort=False).cumcount())])
            sup, query, lacking = first_k_next_q(hist, k, p.query_size, None)
            frames.append(label(roles(sup, query), "test", scen, k))
            too_few["test"][f"{scen}_k{k}"] = lacking
    tasks = pd.concat(frames, ignore_index=True)
    info = {"test_start": test_start, "val_start": val_start,
            "users": {s: int((split == s).sum()) for s in ("train", "val", "test")},
            "items": {"existing": int(len(existing_items)),
                      "new": int(len(item_first) - len(existing_items))},
            "too_few": too_few}
    train_users = split.index[split == "train"].to_series()
    return Split(tasks, info, train_users, existing_items.to_series(), history_of(train_hist))


