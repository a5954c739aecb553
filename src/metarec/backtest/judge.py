"""One replayed night: its batches, judged on what their users did in the following days."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd

from metarec.backtest.plan import Plan
from metarec.config import BacktestParams
from metarec.io import scratch_dir
from metarec.scoring.inputs import check_day, landing_check
from metarec.scoring.stream import recommend
from metarec.scoring.world import DAY, World, landing_files, parse_as_of

METRICS = ("hit_rate", "recall", "ndcg")


def judge_night(pl: Plan, day: str) -> pd.DataFrame:
    """Per (user, method) metrics of one night: night, user_id, kind, method, hit_rate,
    recall, ndcg, relevant (the user's relevant future items). Users without a relevant
    future item are left out (counted by :func:`summarise` through ``scored``)."""
    with scratch_dir("backtest") as tmp:
        inputs = check_day(pl.resolve(day), tmp)
        tables = {"model": recommend(inputs)[0].to_pandas()}
        if pl.params.warm:
            tables["static"] = recommend(inputs, warm_support="first")[0].to_pandas()
        if pl.baseline is not None:
            base = dataclasses.replace(pl.resolve(day, pl.baseline), checked=inputs.checked)
            tables["baseline"] = recommend(base)[0].to_pandas()
        end = inputs.end
        horizon = end + pl.params.horizon_days * DAY
        later = landing_files(pl.score.landing_dir,
                              parse_as_of(day) + dt.timedelta(pl.params.horizon_days))
        rows = landing_check(inputs, later).kept if later else None
    with World(inputs.tables["interactions"], rows, horizon,
               pl.score.engine_memory_mb) as judged:
        world = judged.frame()
    past = world[world["timestamp"].to_numpy() < end]
    users = tables["model"].drop_duplicates("user_id")[["user_id", "kind"]]
    tables["popularity"] = _popularity(past, users, end, pl.params)
    future = world[(world["timestamp"].to_numpy() >= end)
                   & (world["rating"].to_numpy() >= pl.threshold)]
    relevant = _new_pairs(future, past, users["user_id"])
    frames = [_judge(t, relevant, pl.params.k).assign(method=m) for m, t in tables.items()]
    out = pd.concat(frames, ignore_index=True)
    out = out.merge(users, on="user_id", how="left")
    out["kind"] = np.where(out["kind"] == "cold", "cold", "warm")
    # a cold user's support is the same either way: "adapted once" is judged on warm users only
    out = out[~((out["method"] == "static") & (out["kind"] == "cold"))].reset_index(drop=True)
    out.insert(0, "night", day)
    return out[["night", "user_id", "kind", "method", *METRICS, "relevant"]]


def _new_pairs(future: pd.DataFrame, past: pd.DataFrame, users: pd.Series) -> pd.DataFrame:
    """Distinct (user_id, item_id) of ``future`` for ``users``, minus pairs seen in ``past``."""
    f = future[future["user_id"].isin(users)][["user_id", "item_id"]].drop_duplicates()
    seen = past[past["user_id"].isin(users)][["user_id", "item_id"]].drop_duplicates()
    both = f.merge(seen, on=["user_id", "item_id"], how="left", indicator=True)
    return both.loc[both["_merge"] == "left_only", ["user_id", "item_id"]]


def _judge(recs: pd.DataFrame, relevant: pd.DataFrame, k: int) -> pd.DataFrame:
    """HitRate@k, Recall@k and nDCG@k per user of ``recs`` with a relevant future item."""
    n_rel = relevant.groupby("user_id", observed=True).size().rename("relevant")
    top = recs.loc[recs["rank"] <= k, ["user_id", "item_id", "rank"]]
    hit = top.merge(relevant.assign(hit=1.0), on=["user_id", "item_id"], how="left")
    hit["hit"] = hit["hit"].fillna(0.0)
    hit["gain"] = hit["hit"] / np.log2(hit["rank"].to_numpy() + 1.0)
    per = hit.groupby("user_id", observed=True).agg(hits=("hit", "sum"), dcg=("gain", "sum"))
    per = per.join(n_rel, how="inner")
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    per["hit_rate"] = (per["hits"] > 0).astype(float)
    per["recall"] = per["hits"] / per["relevant"]
    per["ndcg"] = per["dcg"] / ideal[np.minimum(per["relevant"].to_numpy(), k)]
    return per.reset_index()[["user_id", *METRICS, "relevant"]]


def _popularity(past: pd.DataFrame, users: pd.DataFrame, end: int, p: BacktestParams
                ) -> pd.DataFrame:
    """Each user's top K of the recent-popularity order, minus the user's own items."""
    recent = past[past["timestamp"].to_numpy() >= end - p.popularity_days * DAY]
    counts = recent.groupby("item_id", observed=True).size()
    order = counts.reset_index(name="n").sort_values(["n", "item_id"], ascending=[False, True],
                                                     kind="stable")["item_id"].to_numpy()
    seen = past[past["user_id"].isin(users["user_id"])][["user_id", "item_id"]]
    most = int(seen.groupby("user_id", observed=True).size().max()) if len(seen) else 0
    head = order[:p.k + most]                     # a user's top K always lies in this head
    u = users["user_id"].to_numpy(dtype=object)
    grid = pd.DataFrame({"user_id": np.repeat(u, len(head)),
                         "item_id": np.tile(head, len(u)),
                         "pos": np.tile(np.arange(len(head)), len(u))})
    grid = grid.merge(seen.drop_duplicates().assign(seen=True), on=["user_id", "item_id"],
                      how="left")
    grid = grid[grid["seen"].isna()].sort_values(["user_id", "pos"], kind="stable")
    grid["rank"] = grid.groupby("user_id", sort=False).cumcount() + 1
    return grid.loc[grid["rank"] <= p.k, ["user_id", "rank", "item_id"]]
