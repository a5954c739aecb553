"""The two non-default episode protocols: MeLU's and a predefined split file.

Both return what the temporal protocol returns: labelled task rows, an info dict, the ids of
meta-train users and of known items (which shape the vocabularies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metarec.config import EpisodesParams
from metarec.errors import DataError


def _user_split(users: pd.Index, fractions: tuple[float, float, float],
                rng: np.random.Generator) -> pd.Series:
    """Random user split (MeLU splits users at random, not in time)."""
    order = rng.permutation(len(users))
    n = len(users)
    n_train, n_val = int(np.floor(fractions[0] * n)), int(np.floor(fractions[1] * n))
    labels = np.where(order < n_train, "train", np.where(order < n_train + n_val, "val", "test"))
    return pd.Series(labels, index=users)


def melu(df: pd.DataFrame, p: EpisodesParams) -> tuple[pd.DataFrame, dict[str, Any],
                                                       pd.Series, pd.Series]:
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
    return data.drop(columns=["key"]), info, train_users, known


def predefined(df: pd.DataFrame, p: EpisodesParams, user_index: pd.Index,
               item_index: pd.Index) -> tuple[pd.DataFrame, dict[str, Any], pd.Series,
                                              pd.Series]:
    """A file assigns users to splits (and optionally scenarios, single interactions and
    roles), so that a published split is reproduced exactly.

    Columns: user_id, split (train|val|test), optional scenario, optional item_id + role
    (support|query) + optional k. With item_id and role, the listed interactions are the tasks;
    without, each user's first K / next Q interactions are (one task per K). ``df`` holds id
    codes; ``user_index`` / ``item_index`` map codes back to ids.
    """
    if not p.predefined_path:
        raise DataError("episodes.predefined_path must name the split file",
                        column="predefined_path")
    path = Path(p.predefined_path)
    if not path.exists():
        raise DataError("file not found", file=str(path))
    spec = (pd.read_parquet(path) if path.suffix == ".parquet"
            else pd.read_csv(path, dtype="string", keep_default_na=False))
    for col in ("user_id", "split"):
        if col not in spec.columns:
            raise DataError("required column missing", file=str(path), column=col)
    spec = spec.astype({"user_id": "string", "split": "string"})
    codes = pd.Index(user_index).get_indexer(spec["user_id"])
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0]) + 1
        raise DataError(f"user {spec['user_id'].iloc[row - 1]!r} has no interactions",
                        file=str(path), row=row, column="user_id")
    spec["user_id"] = codes
    bad = ~spec["split"].isin(["train", "val", "test"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise DataError(f"split must be train, val or test, got {spec['split'][bad].iloc[0]!r}",
                        file=str(path), row=row, column="split")
    if "scenario" not in spec.columns:
        spec["scenario"] = np.where(spec["split"] == "train", "train", "user_cold")
    if "item_id" in spec.columns and "role" in spec.columns:
        spec["item_id"] = pd.Index(item_index).get_indexer(spec["item_id"].astype("string"))
        tasks = spec.merge(df, on=["user_id", "item_id"], how="left", validate="many_to_one")
        missing = tasks["rating"].isna()
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0]) + 1
            raise DataError("interaction not found in the validated data", file=str(path),
                            row=row, column="item_id")
        if "k" not in tasks.columns:
            tasks["k"] = (tasks["role"] == "support").groupby(
                [tasks["user_id"], tasks["split"], tasks["scenario"]]).transform("sum")
        tasks["draw"] = 0
    else:
        users = spec.drop_duplicates("user_id").set_index("user_id")
        data = df[df["user_id"].isin(users.index)].sort_values(
            ["user_id", "timestamp", "item_id"], kind="stable").copy()
        data["pos"] = data.groupby("user_id", sort=False).cumcount()
        frames = []
        for k in p.support_sizes:
            part = data[data["pos"] < k + p.query_size].copy()
            enough = part.groupby("user_id", sort=False)["pos"].transform("size") > k
            part = part[enough]
            part["role"] = np.where(part["pos"] < k, "support", "query")
            part["k"] = k
            frames.append(part)
        tasks = pd.concat(frames, ignore_index=True)
        tasks["split"] = users["split"].loc[tasks["user_id"]].to_numpy()
        tasks["scenario"] = users["scenario"].loc[tasks["user_id"]].to_numpy()
        tasks["draw"] = 0
    split = spec.drop_duplicates("user_id").set_index("user_id")["split"]
    info = {"test_start": None, "val_start": None,
            "users": {s: int((split == s).sum()) for s in ("train", "val", "test")},
            "items": {}, "too_few": {}}
    train_users = split.index[split == "train"].to_series()
    known = df[df["user_id"].isin(train_users)]["item_id"].drop_duplicates()
    return tasks, info, train_users, known
