"""Protocol ``predefined``: a file assigns users to splits (and optionally scenarios, single
interactions and roles), so that a published split is reproduced exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metarec.config import EpisodesParams
from metarec.data.protocols.common import Split, history_of
from metarec.errors import DataError


def predefined(df: pd.DataFrame, p: EpisodesParams, user_index: pd.Index,
               item_index: pd.Index) -> Split:
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
    history = history_of(df[df["user_id"].isin(train_users)])
    return Split(tasks, info, train_users, known, history)
