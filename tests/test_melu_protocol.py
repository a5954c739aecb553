"""The melu protocol on a log built so that every rule has one exact answer.

Fast and direct (no stage): each assertion pins one rule of MeLU's protocol, so a change of
a bound, a fraction, the random user split, the query size or the scenario rule fails here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from metarec.config import EpisodesParams
from metarec.data.protocols import melu

# 20 eligible users (13..17 ratings), plus the bounds: 12 and 101 are out, 13 and 100 are in
# (protocols see integer id codes): 20 = 12 ratings, 21 = 13, 22 = 100, 23 = 101
COUNTS = {**{u: 13 + u % 5 for u in range(20)}, 20: 12, 21: 13, 22: 100, 23: 101}
# val and test fractions differ, so that a swapped fraction changes the sizes
PARAMS = EpisodesParams(protocol="melu", split_fractions=(0.6, 0.25, 0.15), seed=3)


def _log() -> pd.DataFrame:
    rows = []
    for user, count in sorted(COUNTS.items()):
        for j in range(count):     # item j at time 1000*j + user: later items appear later
            rows.append((user, j, 1.0 + (user + j) % 5, 1000 * j + user))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


@pytest.fixture()  # per test (cheap): mutmut maps each test to the code it runs
def split() -> tuple[pd.DataFrame, object]:
    df = _log()
    return df, melu(df, PARAMS)


def _per_user(tasks: pd.DataFrame, col: str) -> pd.Series:
    values = tasks.groupby("user_id")[col].agg(lambda s: set(s))
    assert (values.map(len) == 1).all(), f"{col} varies within a user"
    return values.map(lambda s: next(iter(s)))


def test_eligibility_bounds_are_inclusive(split: tuple) -> None:
    _, out = split
    users = set(out.tasks["user_id"])
    assert users == set(COUNTS) - {20, 23}
    assert out.info["too_few"] == {"outside_13_100": 2}
    # a random user split has no time boundaries (evaluation reads them from here)
    assert (out.info["test_start"], out.info["val_start"]) == (None, None)
    assert out.tasks.groupby("user_id").size().to_dict() == {
        u: c for u, c in COUNTS.items() if u in users}


def test_user_split_has_exact_sizes_and_is_seeded(split: tuple) -> None:
    df, out = split
    n = len(set(out.tasks["user_id"]))                                # 22 eligible users
    sizes = {"train": int(np.floor(0.6 * n)), "val": int(np.floor(0.25 * n))}
    sizes["test"] = n - sizes["train"] - sizes["val"]
    assert out.info["users"] == sizes == {"train": 13, "val": 5, "test": 4}
    of_user = _per_user(out.tasks, "split")
    assert of_user.value_counts().to_dict() == sizes
    assert sorted(out.train_users) == sorted(of_user.index[of_user == "train"])
    again = melu(df, PARAMS)
    assert _per_user(again.tasks, "split").equals(of_user)
    other = melu(df, EpisodesParams(**{**PARAMS.__dict__, "seed": 4}))
    assert not _per_user(other.tasks, "split").equals(of_user)
    # random, not by first interaction: the train users are not the earliest 13 by id/time
    assert sorted(of_user.index[of_user == "train"]) != sorted(of_user.index)[:13]


def test_query_is_ten_random_items_and_support_the_rest(split: tuple) -> None:
    df, out = split
    t = out.tasks
    roles = t.groupby(["user_id", "role"]).size().unstack()
    assert (roles["query"] == 10).all()
    assert (roles["support"] == t.groupby("user_id").size() - 10).all()
    assert (_per_user(t, "k") == roles["support"]).all()
    assert set(t["draw"]) == {0}
    # not the first or last ten in time for every user
    first10 = {u: set(g.nsmallest(10, "timestamp")["item_id"]) for u, g in t.groupby("user_id")}
    query = {u: set(g["item_id"]) for u, g in t[t["role"] == "query"].groupby("user_id")}
    assert any(query[u] != first10[u] for u in query)
    other = melu(df, EpisodesParams(**{**PARAMS.__dict__, "seed": 4})).tasks
    q2 = {u: set(g["item_id"]) for u, g in other[other["role"] == "query"].groupby("user_id")}
    assert q2 != query


def test_scenarios_and_new_items(split: tuple) -> None:
    df, out = split
    cut = int(np.quantile(df["timestamp"].to_numpy(), 0.8))
    first = df.groupby("item_id")["timestamp"].min()
    new = set(first.index[first > cut])
    assert new and out.info["items"] == {"existing": len(first) - len(new), "new": len(new)}
    assert set(out.known_items) == set(first.index) - new
    t = out.tasks
    scen, spl = _per_user(t, "scenario"), _per_user(t, "split")
    q = t[t["role"] == "query"]
    has_new = q.groupby("user_id")["item_id"].agg(lambda s: bool(set(s) & new))
    expected = np.where(spl == "train", "train", np.where(
        spl == "val", "user_cold", np.where(has_new.reindex(spl.index), "user_item_cold",
                                            "user_cold")))
    assert list(scen) == list(expected)
    assert "user_item_cold" in set(scen) and "user_cold" in set(scen[spl == "test"])
    # the history is every row of the train users, sorted by user then time
    train_rows = t[t["split"] == "train"]
    assert len(out.history) == len(train_rows)
    assert set(out.history["user_id"]) == set(out.train_users)
    assert out.history.equals(out.history.sort_values(["user_id", "timestamp", "item_id"])
                              .reset_index(drop=True))
