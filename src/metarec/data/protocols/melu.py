"""Protocol ``melu`` (MeLU, KDD 2019): users with 13-100 ratings, random user split, query = 10
random items, support = the rest; one task per user, k = its support size."""

from __future__ import annotations

import numpy as np
import pandas as pd

from metarec.config import EpisodesParams
from metarec.data.protocols.common import Split, history_of


def _user_split(users: pd.Index, fractions: tuple[float, float, float],
                rng: np.random.Generator) -> pd.Series:
    """Random user split (MeLU splits users at random, not in time)."""
    order = rng.permutation(len(users))
    n = len(users)
    n_train, n_val = int(np.floor(fractions[0] * n)), int(np.floor(fractions[1] * n))
    labels = np.where(order < n_train, "train", np.where(order < n_train + n_val, "val", "test"))
    return pd.Series(labels, index=users)


def melu(df: pd.DataFrame, p: EpisodesParams) -> Split:
    """MeLU (KDD 2019): users with 13-100 ratings, random user split, query = 10 random
    items, support = the rest. Items first seen after the ``melu_new_item_quantile`` time
    quantile are new; a test user's task is user_cold when its query holds only existing
    items, else user_item_cold. One task per user; k = its support size."""
    rng = np.random.default_rng(p.seed)
    counts = df.groupby("user_id").size()
    eligible = counts.index[(counts >= p.melu_min_ratings) & (counts <= p.melu_max_ratings)]
    split = _user_split(pd.Index(sorted(eligible)), p.split_fractions, rng)
    data = df[df["user_id"].isin(eligible)].sort_values(["user_id", "timestamp", "item_id"],
                                                        kind="stable").copy()
    cut = int(np.quantile(df["timestamp"].to_numpy(), p.melu_new_item_quantile))
    item_first = df.groupby("item_id")["timestamp"].min()
    new_items = item_first.index[item_first > cut]
    data["key"] = rng.random(len(data))
    data = data.sort_values(["user_id", "key"], kind="stable")
    rank = data.groupby("user_id", sort=False).cumcount()
    data["role"] = np.where(rank < p.melu_query_size, "query", "support")
    data["split"] = split.loc[data["user_id"]].to_numpy()
    data["k"] = (data["role"] == "support").groupby(data["user_id"], sort=False).transform("sum")
    has_new = (data["item_id"].isin(new_items) & (data["role"] == "query")).groupby(
        data["user_id"], sort=False).transform("any")
    data["scenario"] = np.where(data["split"] == "train", "train",
                                np.where(data["split"] == "val", "user_cold",
                                         np.where(has_new, "user_item_cold", "user_cold")))
    data["draw"] = 0
    info = {"test_start": None, "val_start": None,
            "users": {s: int((split == s).sum()) for s in ("train", "val", "test")},
            "items": {"existing": int(len(item_first) - len(new_items)),
                      "new": int(len(new_items))},
            "too_few": {"outside_13_100": int(len(counts) - len(eligible))}}
    train_users = split.index[split == "train"].to_series()
    known = item_first.index.difference(new_items).to_series()
    history = history_of(data[data["split"] == "train"])
    return Split(data.drop(columns=["key"]), info, train_users, known, history)


