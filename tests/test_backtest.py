"""The backtest: exact metrics on hand-built lists, the recent-popularity peer, the window
rules (no night judged on days the models trained on), and a whole run on the session's
synthetic project whose judged items are recomputed here from the raw log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from metarec.backtest import judge as bt_judge
from metarec.backtest import plan as bt_plan
from metarec.backtest import report as bt_report
from metarec.config import BacktestParams, Params
from metarec.errors import ParamsError
from metarec.scoring.inputs import resolve
from metarec.scoring.stream import recommend
from metarec.scoring.world import DAY, day_end, parse_as_of
from metarec.stages import backtest as stage

pytestmark = pytest.mark.slow  # trains and replays a project (~35 s): not in make test-fast


def test_judge_is_exact_on_a_hand_built_list() -> None:
    recs = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b", "c"],
                         "rank": [1, 2, 3, 1, 2, 1],
                         "item_id": ["x", "y", "z", "x", "y", "x"]})
    relevant = pd.DataFrame({"user_id": ["a", "a", "b", "b", "b"],
                             "item_id": ["x", "z", "q", "r", "y"]})
    out = bt_judge._judge(recs, relevant, k=2).set_index("user_id")
    assert list(out.index) == ["a", "b"]                  # c has nothing relevant: left out
    # a: x at rank 1 is a hit, z at rank 3 is past k=2
    assert out.loc["a", "hit_rate"] == 1.0 and out.loc["a", "recall"] == 0.5
    assert out.loc["a", "ndcg"] == pytest.approx(1.0 / (1.0 + 1.0 / math.log2(3)))
    # b: y at rank 2; 3 relevant, ideal = 2 hits at k=2
    assert out.loc["b", "recall"] == pytest.approx(1 / 3)
    assert out.loc["b", "ndcg"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert out.loc["b", "relevant"] == 3


def test_recent_popularity_skips_old_rows_and_the_users_own_items() -> None:
    end = 100 * DAY
    past = pd.DataFrame({
        "user_id": ["u", "v", "v", "w", "w", "w", "u"],
        "item_id": ["p", "p", "q", "q", "r", "s", "old"],
        "timestamp": [end - DAY] * 6 + [end - 40 * DAY]})   # "old" is outside 30 days
    users = pd.DataFrame({"user_id": ["u", "z"], "kind": ["cold", "cold"]})
    recs = bt_judge._popularity(past, users, end, BacktestParams(k=3, popularity_days=30))
    got = recs.groupby("user_id")["item_id"].agg(list).to_dict()
    # counts: p 2, q 2, r 1, s 1 -> order p, q, r, s (ties by id); u has p and old
    assert got == {"u": ["q", "r", "s"], "z": ["p", "q", "r"]}
    assert recs.groupby("user_id")["rank"].agg(list).to_dict() == {"u": [1, 2, 3],
                                                                   "z": [1, 2, 3]}


def test_nights_and_window_rules() -> None:
    p = BacktestParams(from_date="2024-03-01", to_date="2024-03-10", every_days=3,
                       horizon_days=7)
    assert bt_plan.nights(p) == ["2024-03-01", "2024-03-04", "2024-03-07", "2024-03-10"]
    days = bt_plan.nights(p)
    trained = day_end(parse_as_of("2024-03-01"))            # training ended at midnight
    log_end = day_end(parse_as_of("2024-03-17"))
    bt_plan.check_window(days, p, trained, log_end)              # fits exactly
    overlap = "overlaps the training period.*up to 2024-03-02.*on 2024-03-02"
    with pytest.raises(ParamsError, match=overlap):
        bt_plan.check_window(days, p, trained + 1, log_end)
    with pytest.raises(ParamsError, match="runs past the end of the log"):
        bt_plan.check_window(days, p, trained, log_end - 1)
    with pytest.raises(ParamsError, match="before backtest.from_date"):
        bt_plan.nights(dataclasses.replace(p, to_date="2024-02-01"))
    with pytest.raises(ParamsError, match="set both"):
        bt_plan.nights(dataclasses.replace(p, from_date=None))


def sections(p: Params) -> tuple:
    """The params sections the backtest stage takes, in its order."""
    return p.backtest, p.score, p.validate, p.ingest, p.episodes, p.model, p.train


@pytest.fixture(scope="module")
def run(synthetic_project: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = synthetic_project["root"]
    params = synthetic_project["params"]
    first = dt.datetime.fromtimestamp(bt_plan.trained_until(root / "episodes") - 1, dt.UTC).date()
    p = dataclasses.replace(params.backtest, from_date=first.isoformat(),
                            to_date=(first + dt.timedelta(days=21)).isoformat(),
                            every_days=7, bootstrap_samples=100)
    score = dataclasses.replace(params.score, model="maml")
    out = tmp_path_factory.mktemp("backtest")
    full = dataclasses.replace(params, backtest=p, score=score)
    summary = stage.run(*sections(full), root / "validated", root / "episodes",
                        root / "models", None, out / "backtest.json", out / "report")
    return {"summary": summary, "out": out, "root": root, "params": p, "score": score,
            "full": full}


def test_backtest_writes_its_outputs(run: dict) -> None:
    out, summary = run["out"], run["summary"]
    assert json.loads((out / "backtest.json").read_text()) == summary
    assert (out / "report" / stage.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["window"]["nights"] == 4
    assert {r["night"] for r in summary["per_night"]} <= set(bt_plan.nights(run["params"]))
    assert set(summary["overall"]) == {"cold", "warm"}
    for kind, block in summary["overall"].items():
        assert block["users"] > 0
        for m in ("model", "popularity") + (("static",) if kind == "warm" else ()):
            assert 0.0 <= block[m]["ndcg"] <= 1.0 and 0.0 <= block[m]["recall"] <= 1.0
    assert "static" not in summary["overall"]["cold"]    # judged on warm users only
    assert summary["overall"]["warm"]["model"] != summary["overall"]["warm"]["static"]
    assert "| warm (" in (out / "report" / stage.TABLE).read_text()


def test_adapted_once_changes_warm_users_only(run: dict) -> None:
    # a cold user's support is the same either way: adapted once == re-adapted, exactly
    night = bt_plan.nights(run["params"])[0]
    score = dataclasses.replace(run["score"], dynamic=True, top_k=run["params"].k)
    inputs = resolve(score, run["root"] / "validated", run["root"] / "models", night)
    latest = recommend(inputs)[0].to_pandas()
    first = recommend(inputs, warm_support="first")[0].to_pandas()
    cold = latest["kind"] == "cold"
    assert cold.any() and (~cold).any()
    pd.testing.assert_frame_equal(latest[cold], first[first["kind"] == "cold"])
    assert not latest[~cold].reset_index(drop=True).equals(
        first[first["kind"] != "cold"].reset_index(drop=True))


def test_judged_items_are_the_users_later_relevant_new_items(run: dict) -> None:
    rows = pd.read_parquet(run["out"] / "report" / stage.ROWS)
    log = pd.read_parquet(run["root"] / "validated" / "interactions.parquet")
    thr = run["summary"]["relevance_threshold"]
    night = rows["night"].iloc[0]
    end = day_end(parse_as_of(night))
    horizon = end + run["params"].horizon_days * DAY
    ts = log["timestamp"].to_numpy()
    before = log[ts < end]
    later = log[(ts >= end) & (ts < horizon) & (log["rating"].to_numpy() >= thr)]
    seen = set(zip(before["user_id"], before["item_id"], strict=True))
    expect = {}
    for u, i in zip(later["user_id"], later["item_id"], strict=True):
        if (u, i) not in seen:
            expect.setdefault(u, set()).add(i)
    got = rows[(rows["night"] == night) & (rows["method"] == "model")]
    assert len(got) > 0
    for u, n in zip(got["user_id"], got["relevant"], strict=True):
        assert n == len(expect[u])
    # every judged user was scored: active, with history before the night
    assert set(got["user_id"]) <= set(before["user_id"])


def test_a_planted_future_interaction_changes_no_recommendation(
        run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every method's lists of a night are the same with or without a rating dated one hour
    after the night ends (it may only change what the lists are judged against)."""
    root, night = run["root"], bt_plan.nights(run["params"])[1]
    lists: list[pd.DataFrame] = []
    judge = bt_judge._judge

    def spy(recs: pd.DataFrame, relevant: pd.DataFrame, k: int) -> pd.DataFrame:
        lists.append(recs.reset_index(drop=True))
        return judge(recs, relevant, k)

    def judged(folder: Path) -> pd.DataFrame:
        pl = stage.plan(*sections(run["full"]), folder, root / "episodes",
                     root / "models", None)
        return bt_judge.judge_night(dataclasses.replace(pl, baseline="itemknn"), night)

    monkeypatch.setattr(bt_judge, "_judge", spy)
    clean = judged(root / "validated")
    assert len(lists) == 4                           # model, adapted once, baseline, popularity
    user = clean.loc[clean["kind"] == "cold", "user_id"].iloc[0]   # a scored cold user

    planted = tmp_path / "validated"
    shutil.copytree(root / "validated", planted)
    log = pd.read_parquet(planted / "interactions.parquet")
    end = day_end(parse_as_of(night))
    mine = log[(log["user_id"] == user) & (log["timestamp"].to_numpy() < end)]
    row = mine.iloc[[0]].copy()
    unseen = sorted(set(log["item_id"]) - set(mine["item_id"]))
    row["item_id"], row["rating"], row["timestamp"] = unseen[0], log["rating"].max(), end + 3600
    pd.concat([log, row], ignore_index=True).to_parquet(planted / "interactions.parquet")
    dirty = judged(planted)
    for a, b in zip(lists[:4], lists[4:], strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert len(lists) == 8 and user in set(lists[0]["user_id"])
    # the planted rating is only ever a judged item: the user's relevant count grows by one
    n = {name: df.loc[(df["user_id"] == user) & (df["method"] == "model"), "relevant"].item()
         for name, df in (("clean", clean), ("dirty", dirty))}
    assert n["dirty"] == n["clean"] + 1


def test_a_window_on_the_training_period_is_refused(run: dict) -> None:
    root = run["root"]
    early = dt.datetime.fromtimestamp(bt_plan.trained_until(root / "episodes") - 5 * DAY,
                                      dt.UTC).date()
    p = dataclasses.replace(run["params"], from_date=early.isoformat())
    with pytest.raises(ParamsError, match="overlaps the training period"):
        stage.plan(*sections(dataclasses.replace(run["full"], backtest=p)), root / "validated",
                   root / "episodes",
                   root / "models", None)


def test_warm_support_first_takes_the_earliest_rows(tmp_path) -> None:
    from metarec.io import write_parquet
    from metarec.scoring.stream import _user_rows
    from metarec.scoring.world import World, runs

    log = pd.DataFrame({"user_id": ["w"] * 5 + ["c"] * 2,
                        "item_id": ["i4", "i0", "i3", "i1", "i2", "i0", "i1"],
                        "rating": [5.0, 1, 4, 2, 3, 1, 2],
                        "timestamp": [50, 10, 40, 20, 30, 5, 6]})
    items = pa.table({"item_id": [f"i{n}" for n in range(5)], "idx": list(range(5))})
    users = write_parquet(pd.DataFrame({"user_id": ["c"]}), tmp_path / "users.parquet")
    with World(log, None, end=100) as world:
        kinds = world.select(max_interactions=2, active_days=1, dynamic=True).kinds
        _, done = world.export(tmp_path, users, items, 0, 2)
    rows = next(runs(done, [0, 2]))
    pos, item, rating = (rows[c].to_numpy() for c in ("pos", "item", "rating"))
    assert kinds.tolist() == ["cold", "dynamic"]    # c, w
    latest, _ = _user_rows(pos, item, rating, kinds, last=2)
    first, _ = _user_rows(pos, item, rating, kinds, last=2, first=3)
    w = slice(int(latest.starts[1]), int(latest.starts[2]))
    assert list(latest.items[w]) == [3, 4]                  # the latest 2, in time order
    assert list(latest.ratings[w]) == [4.0, 5.0]
    w = slice(int(first.starts[1]), int(first.starts[2]))
    assert list(first.items[w]) == [0, 1, 2]                # the earliest 3
    assert list(first.items[:2]) == list(latest.items[:2]) == [0, 1]   # cold: all rows


def test_backfill_gives_each_nights_score_bytes(synthetic_project: dict, tmp_path: Path
                                                ) -> None:
    from metarec.stages import score

    root = synthetic_project["root"]
    p = dataclasses.replace(synthetic_project["params"].score, model="maml")
    first = dt.datetime.fromtimestamp(bt_plan.trained_until(root / "episodes"), dt.UTC).date()
    days = [(first + dt.timedelta(days=i)).isoformat() for i in range(3)]
    v, ing = synthetic_project["params"].validate, synthetic_project["params"].ingest
    batches = score.backfill(p, v, ing, root / "validated", root / "models", tmp_path / "fill",
                             days[0], days[-1])
    assert [b.name for b in batches] == days
    for day in days:
        one = score.run(p, v, ing, root / "validated", root / "models", tmp_path / "one", day)
        for name in ("recommendations.parquet", "manifest.json"):
            assert (one / name).read_bytes() == (tmp_path / "fill" / day / name).read_bytes()
    with pytest.raises(ParamsError, match="before --from"):
        score.backfill(p, v, ing, root / "validated", root / "models", tmp_path / "x",
                       days[-1], days[0])


def test_readme_backtest_block_is_generated_from_the_metrics(run: dict, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from metarec.cli import app
    from metarec.readme import BACKTEST, START

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nkept\n<!-- results:end -->\n{BACKTEST[0]}\nstale numbers\n"
                      f"{BACKTEST[1]}\noutro\n")
    drift = {"params": "p.yaml", "runs": [{"drift": 4.0, "seconds": 1.0,
                                           "summary": run["summary"]}]}
    (tmp_path / "drift.json").write_text(json.dumps(drift))
    res = CliRunner().invoke(app, ["readme-results", "--section", "backtest", "--readme",
                                   str(readme), "--backtest", str(run["out"] / "backtest.json"),
                                   "--drift", str(tmp_path / "drift.json")])
    assert res.exit_code == 0, res.output
    text = readme.read_text()
    assert "stale numbers" not in text and "kept" in text and text.endswith("outro\n")
    assert text.count(bt_report.markdown(run["summary"])) == 2      # the project's, then drift 4
    assert "**Synthetic, drift 4** (`p.yaml`, 1 s)" in text
    bad = CliRunner().invoke(app, ["readme-results", "--section", "nope", "--readme",
                                   str(readme)])
    assert bad.exit_code == 2 and "--section must be results or backtest" in bad.output


def test_retrained_models_see_nothing_after_their_retrain_point(run: dict,
                                                                tmp_path: Path) -> None:
    """With retrain_every_days a window may start inside the training period; the models of
    a retrain point are the same whether or not the log holds a rating dated after it."""
    from metarec.backtest import retrain

    root = run["root"]
    early = dt.datetime.fromtimestamp(bt_plan.trained_until(root / "episodes") - 5 * DAY,
                                      dt.UTC).date()
    cache = tmp_path / "retrained"            # this test's own: nothing trained elsewhere
    p = dataclasses.replace(run["params"], from_date=early.isoformat(),
                            to_date=(early + dt.timedelta(days=9)).isoformat(), every_days=3,
                            retrain_every_days=7, bootstrap_samples=20,
                            retrain_cache=str(cache))
    full = dataclasses.replace(run["full"], backtest=p)
    pl = stage.plan(*sections(full), root / "validated", root / "episodes",
                    root / "models", None)
    days = pl.nights                                      # early, +3, +6, +9
    week = str(early + dt.timedelta(days=7))
    assert [retrain.point(days[0], d, 7) for d in days] == [days[0]] * 3 + [week]
    rows = stage.night(pl, days[1])
    assert set(rows["method"]) >= {"model", "popularity"} and len(rows) > 0
    assert pl.models_for(days[0]) == pl.models_for(days[2]) != pl.models_for(days[3])
    # trained here, into params' cache: one folder per retrain point, each the one served
    served = {Path(pl.models_for(d)) for d in days}
    assert {f / "models" for f in cache.iterdir()} == served and len(served) == 2
    assert all((m / "seed0/maml.pt").is_file() for m in served)

    planted = tmp_path / "validated"
    shutil.copytree(root / "validated", planted)
    log = pd.read_parquet(planted / "interactions.parquet")
    # every user rates the catalogue's first items an hour after the first retrain point
    users = log["user_id"].unique()
    extra = pd.DataFrame({"user_id": users.repeat(5),
                          "item_id": np.tile(sorted(log["item_id"].unique())[:5], len(users))})
    extra = extra.merge(log[["user_id", "item_id"]], how="left", indicator=True)
    extra = extra[extra["_merge"] == "left_only"].assign(
        rating=log["rating"].max(), timestamp=day_end(parse_as_of(days[0])) + 3600)
    extra["source_row"] = np.arange(len(extra)) + len(log) + 1
    pd.concat([log, extra[log.columns]], ignore_index=True).to_parquet(
        planted / "interactions.parquet")
    training = retrain.Training(full.episodes, full.model, full.train)
    clean = retrain.models_at(training, root / "validated", ("maml",), days[0], tmp_path / "c")
    dirty = retrain.models_at(training, planted, ("maml",), days[0], tmp_path / "d")
    a, b = (torch.load(m / "seed0/maml.pt", weights_only=False) for m in (clean, dirty))
    assert a["vocab_sha256"] == b["vocab_sha256"]   # (the digest covers fit seconds too)
    for name, value in a["state"]["state_dict"].items():
        assert torch.equal(value, b["state"]["state_dict"][name]), name
    before = torch.load(root / "models/seed0/maml.pt", weights_only=False)["state"]
    assert not all(torch.equal(v, a["state"]["state_dict"][n])      # a shorter log: other
                   for n, v in before["state_dict"].items())        # weights
