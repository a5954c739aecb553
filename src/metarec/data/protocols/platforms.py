"""Cross-platform tasks: a user known on other platforms, new on this one.

A task is (user, platform). For every test user (in the protocol's test split, never a
meta-train user) and every platform the user reached after having used another one:

- support (role ``support``): the user's first K interactions on the platform;
- query (role ``query``): the next up to Q on the same platform;
- cross-platform history (role ``cross``): the user's interactions on the other platforms
  before the first query interaction, the last ``episodes.cross_max`` of them, never an item
  of the query (what the company knew of the user elsewhere when the query began).

Evaluation scores each task twice: on its support alone (scenario ``platform_cold``) and with
the cross rows added to the support (``platform_cold+cross``). The meta-train users' training
period gives the same kind of tasks (split ``train``), which meta-training adds to every
epoch's tasks with their cross rows marked, so that the meta-learners learn how much a support
item from another platform is worth; the validation users' give split ``val`` tasks, so that
every choice on validation (the best step, inner steps, baselines' grids) sees them too.
Everything is vectorised.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from metarec.config import EpisodesParams
from metarec.data.protocols.common import ROLE_ORDER, const, label, sort_rows
from metarec.data.tasks import PLATFORM_COLD as SCENARIO


def _latest(rows: pd.DataFrame, keys: list[str], n: int) -> pd.DataFrame:
    """The last ``n`` rows (by time) of each ``keys`` group; rows sorted by keys then time."""
    back = rows.groupby(keys, sort=False).cumcount(ascending=False)
    return rows[back < n]


def platform_tasks(df: pd.DataFrame, test_users: pd.Index, p: EpisodesParams,
                   split: str = "test") -> tuple[pd.DataFrame, dict[str, int]]:
    """Labelled rows of the ``platform_cold`` tasks of ``split`` (one per user, platform and K; the
    platform's code is in ``platform`` and, as the task's id key, in ``draw``) and, per K,
    the (user, platform) pairs with too few interactions on the platform. ``df``: user_id,
    item_id, rating, timestamp, platform (integer codes)."""
    rows = sort_rows(df[df["user_id"].isin(test_users)],
                     ["user_id", "timestamp", "platform", "item_id"]).reset_index(drop=True)
    first_any = rows.groupby("user_id", sort=False)["timestamp"].transform("min")
    first_here = rows.groupby(["user_id", "platform"], sort=False)["timestamp"].transform("min")
    # new here: the user had used another platform before its first interaction on this one
    cold = rows[first_here > first_any].copy()
    cold["pos"] = cold.groupby(["user_id", "platform"], sort=False).cumcount()
    n_pairs = pd.MultiIndex.from_frame(cold[["user_id", "platform"]]).unique().size
    frames, too_few = [], {}
    for k in p.support_sizes:
        sup = cold[cold["pos"] < k]
        query = cold[(cold["pos"] >= k) & (cold["pos"] < k + p.query_size)]
        enough = (sup.groupby(["user_id", "platform"]).size() == k)
        pairs = enough[enough].index.intersection(
            query.groupby(["user_id", "platform"]).size().index)
        too_few[f"{SCENARIO}_k{k}"] = int(n_pairs - len(pairs))
        keep_s = pd.MultiIndex.from_frame(sup[["user_id", "platform"]]).isin(pairs)
        keep_q = pd.MultiIndex.from_frame(query[["user_id", "platform"]]).isin(pairs)
        sup, query = sup[keep_s], query[keep_q]
        start = query.groupby(["user_id", "platform"])["timestamp"].min().rename("q_start")
        cross = _cross_rows(rows, start, query, p.cross_max)
        frames.append(label(pd.concat([
            sup.assign(role=const("support", ROLE_ORDER, len(sup))),
            query.assign(role=const("query", ROLE_ORDER, len(query))),
            cross.assign(role=const("cross", ROLE_ORDER, len(cross)))], ignore_index=True),
            split, SCENARIO, k))
    out = pd.concat(frames, ignore_index=True)
    # a task is (user, platform): the platform's code is the task's draw (its id key)
    out["draw"] = out["platform"].astype(np.int64)
    return out.drop(columns=["pos"]), too_few


def _cross_rows(rows: pd.DataFrame, start: pd.Series, query: pd.DataFrame, cap: int
                ) -> pd.DataFrame:
    """Each task's other-platform rows before its query began, no query item, latest ``cap``
    (``platform`` = the task's platform; the row's own platform is not kept)."""
    tasks = start.reset_index()                                  # user_id, platform, q_start
    other = rows.merge(tasks, on="user_id", suffixes=("_row", ""))
    other = other[(other["platform_row"] != other["platform"])
                  & (other["timestamp"] < other["q_start"])]
    in_query = query[["user_id", "platform", "item_id"]].assign(leak=True)
    other = other.merge(in_query, on=["user_id", "platform", "item_id"], how="left")
    other = other[other["leak"].isna()]
    other = sort_rows(other, ["user_id", "platform", "timestamp", "item_id"])
    other = _latest(other, ["user_id", "platform"], cap)
    return other[["user_id", "item_id", "rating", "timestamp", "platform"]
                 ].reset_index(drop=True).astype({"item_id": np.int32})
