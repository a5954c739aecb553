"""Episodes: every rule on one tiny hand-written data set, with exact assertions.

Users by first interaction: u1 (t=100), u2 (150) -> meta-train; u3 (200) -> validation;
u4 (300) -> test. So test_start = 300; items first seen before it (i1, i2, i3, i5) are
existing, i4 (first at 500) and i9 (first at 310) are new.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from metarec.config import EpisodesParams
from metarec.data.tasks import load_episodes, to_batch
from metarec.io import read_json, sha256_file, write_json, write_parquet
from metarec.stages import episodes

ROWS = [  # user, item, rating, timestamp
    ("u1", "i1", 4, 100), ("u1", "i2", 3, 110), ("u1", "i3", 5, 120),
    ("u1", "i4", 2, 500), ("u1", "i9", 1, 510),
    ("u2", "i1", 5, 150), ("u2", "i2", 4, 160), ("u2", "i5", 3, 170),
    ("u3", "i1", 2, 200), ("u3", "i3", 3, 210), ("u3", "i2", 4, 220), ("u3", "i4", 5, 600),
    ("u4", "i2", 1, 300), ("u4", "i9", 2, 310), ("u4", "i1", 3, 320), ("u4", "i3", 4, 330),
]
PARAMS = EpisodesParams(split_fractions=(0.5, 0.25, 0.25), support_sizes=(1,), query_size=10,
                        train_draw="temporal", train_draws=1)


def write_validated(folder: Path, rows: list[tuple] = ROWS) -> Path:
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    inter = inter.astype({"user_id": "string", "item_id": "string", "rating": "float64"})
    inter["source_row"] = range(1, len(inter) + 1)
    users = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u4"], "gender": ["F", "M", "M", "X"],
                          "age": [20.0, 40.0, 30.0, None]}).astype({"user_id": "string",
                                                                   "gender": "string"})
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3", "i4", "i5", "i9"],
                          "genres": [["a"], ["a", "b"], ["b"], ["c"], [], ["z"]]})
    items["item_id"] = items["item_id"].astype("string")
    write_parquet(inter, folder / "interactions.parquet")
    write_parquet(users, folder / "users.parquet")
    write_parquet(items, folder / "items.parquet")
    write_json({"dataset": "tiny", "rating": {"kind": "explicit", "min": 1.0, "max": 5.0},
                "users": {"gender": {"kind": "categorical"}, "age": {"kind": "numeric"}},
                "items": {"genres": {"kind": "multicategorical"}}}, folder / "schema.json")
    return folder


@pytest.fixture()
def built(tmp_path: Path) -> tuple[pd.DataFrame, dict, Path]:
    src = write_validated(tmp_path / "validated")
    out = tmp_path / "episodes"
    metrics = episodes.run(PARAMS, src, out, tmp_path / "data.json")
    return pd.read_parquet(out / "episodes.parquet"), metrics, out


def _task(tasks: pd.DataFrame, split: str, scenario: str, user: str) -> dict[str, list[str]]:
    t = tasks[(tasks["split"] == split) & (tasks["scenario"] == scenario)
              & (tasks["user_id"] == user)]
    return {role: t[t["role"] == role]["item_id"].tolist() for role in ("support", "query")}


def test_time_split_and_no_leakage(built: tuple) -> None:
    tasks, _, out = built
    summary = read_json(out / "summary.json")
    assert summary["test_start"] == 300
    assert summary["val_start"] == 200                         # u3's first interaction
    assert summary["users"] == {"train": 2, "val": 1, "test": 1}
    assert summary["items"] == {"existing": 4, "new": 2}
    used_for_training = tasks[tasks["split"].isin(["train", "val"])]
    assert used_for_training["timestamp"].max() < 300          # nothing from the test period
    assert set(tasks[tasks["split"] == "train"]["user_id"]) == {"u1", "u2"}


def test_support_and_query_construction(built: tuple) -> None:
    tasks, _, _ = built
    assert _task(tasks, "train", "train", "u1") == {"support": ["i1"], "query": ["i2", "i3"]}
    assert _task(tasks, "train", "train", "u2") == {"support": ["i1"], "query": ["i2", "i5"]}
    # validation: first K / next Q before test_start only (u3's i4 at t=600 is excluded)
    assert _task(tasks, "val", "user_cold", "u3") == {"support": ["i1"], "query": ["i3", "i2"]}


def test_scenario_labels(built: tuple) -> None:
    tasks, metrics, _ = built
    assert _task(tasks, "test", "user_cold", "u4") == {"support": ["i2"],
                                                       "query": ["i1", "i3"]}
    assert _task(tasks, "test", "user_item_cold", "u4") == {"support": ["i2"],
                                                            "query": ["i9"]}
    # known user u1: support = last K before test_start, query = later rows with new items
    assert _task(tasks, "test", "item_cold", "u1") == {"support": ["i3"],
                                                       "query": ["i4", "i9"]}
    # u1 has no later interaction with an existing item, u2 none at all: no warm task, counted
    assert tasks[(tasks["scenario"] == "warm")].empty
    assert metrics["too_few"]["test"]["warm_k1"] == 2
    assert metrics["too_few"]["test"]["item_cold_k1"] == 1
    assert metrics["tasks"]["test"] == {"user_cold": {"1": 1}, "user_item_cold": {"1": 1},
                                        "item_cold": {"1": 1}}


def test_unknown_values_map_to_index_zero(built: tuple) -> None:
    _, _, out = built
    data = load_episodes(out)
    vocab = data.vocab
    assert vocab["users"]["ids"] == ["u1", "u2"]               # vocab from meta-train users
    assert vocab["users"]["features"]["gender"]["values"] == ["F", "M"]
    assert vocab["items"]["ids"] == ["i1", "i2", "i3", "i5"]   # existing items only
    users = data.users
    u4 = users.ids.index("u4")
    assert users.id_code[u4].item() == 0                       # unseen user id -> unknown
    assert users.categorical[u4, 0].item() == 0                # unseen gender "X" -> unknown
    assert users.numeric[u4, 0].item() == 0.0                  # missing age -> training mean
    assert users.numeric[users.ids.index("u1"), 0].item() == pytest.approx(-1.0)
    items = data.items
    assert items.id_code[items.ids.index("i9")].item() == 0    # new item -> unknown id
    assert items.multi[items.ids.index("i9"), 0].tolist() == [0, 0]   # unseen genre "z"
    assert items.multi[items.ids.index("i2"), 0].tolist() == [1, 2]   # a, b


def test_batches_pad_with_masks(built: tuple) -> None:
    _, _, out = built
    data = load_episodes(out)
    batch = to_batch(data.select("train"))
    assert batch.support_mask.sum(1).tolist() == [1, 1]
    assert batch.query_mask.sum(1).tolist() == [2, 2]
    assert batch.query_ratings.tolist() == [[3.0, 5.0], [4.0, 3.0]]


def test_random_draws_are_seeded_and_byte_identical(tmp_path: Path) -> None:
    src = write_validated(tmp_path / "validated")
    params = EpisodesParams(split_fractions=(0.5, 0.25, 0.25), support_sizes=(1, 2),
                            train_draw="random", train_draws=3, seed=7)
    episodes.run(params, src, tmp_path / "a", tmp_path / "a.json")
    episodes.run(params, src, tmp_path / "b", tmp_path / "b.json")
    assert sha256_file(tmp_path / "a/episodes.parquet") == \
        sha256_file(tmp_path / "b/episodes.parquet")
    tasks = pd.read_parquet(tmp_path / "a/episodes.parquet")
    train = tasks[tasks["split"] == "train"]
    # draws cycle K through support_sizes: 1, 2, 1; every draw keeps support + query disjoint
    assert sorted(train.drop_duplicates("task_id")["k"].tolist()) == [1, 1, 1, 1, 2, 2]
    for _, task in train.groupby("task_id"):
        assert not set(task[task.role == "support"].item_id) & set(task[task.role == "query"]
                                                                   .item_id)


def test_too_few_users_are_counted(tmp_path: Path) -> None:
    src = write_validated(tmp_path / "validated")
    params = EpisodesParams(split_fractions=(0.5, 0.25, 0.25), support_sizes=(1, 3),
                            train_draw="temporal", train_draws=1)
    metrics = episodes.run(params, src, tmp_path / "e", tmp_path / "m.json")
    # u4 has 4 interactions: K=3 leaves 1 query row, which is an existing item (i3)
    assert metrics["tasks"]["test"]["user_cold"] == {"1": 1, "3": 1}
    assert metrics["too_few"]["test"]["user_item_cold_k3"] == 1
    # u3 has 3 interactions before test_start: K=3 leaves no query
    assert metrics["too_few"]["val"]["user_cold_k3"] == 1


def test_melu_protocol(tmp_path: Path) -> None:
    rows = [(f"u{u}", f"i{i}", 1 + (u + i) % 5, 1000 * u + i) for u in range(10)
            for i in range(15 + u)]
    src = write_validated(tmp_path / "validated", rows)
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(10)], "gender": "F", "age": 1.0})
    write_parquet(users.astype({"user_id": "string", "gender": "string"}),
                  src / "users.parquet")
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(30)], "genres": [["a"]] * 30})
    write_parquet(items.astype({"item_id": "string"}), src / "items.parquet")
    params = EpisodesParams(protocol="melu", melu_max_ratings=20, split_fractions=(0.6, 0.2,
                                                                                  0.2))
    metrics = episodes.run(params, src, tmp_path / "e", tmp_path / "m.json")
    tasks = pd.read_parquet(tmp_path / "e/episodes.parquet")
    assert tasks["user_id"].nunique() == 6                      # 15..20 ratings: u0..u5
    assert metrics["too_few"]["outside_13_100"] == 4
    query = tasks[tasks["role"] == "query"].groupby("task_id").size()
    assert (query == 10).all()
    sizes = tasks.groupby("user_id").size()
    assert sizes.to_dict() == {f"u{u}": 15 + u for u in range(6)}


def test_predefined_protocol(tmp_path: Path) -> None:
    src = write_validated(tmp_path / "validated")
    split = tmp_path / "split.csv"
    pd.DataFrame({"user_id": ["u1", "u2", "u3", "u4"],
                  "split": ["train", "train", "val", "test"]}).to_csv(split, index=False)
    params = EpisodesParams(protocol="predefined", predefined_path=str(split),
                            support_sizes=(2,), query_size=1)
    episodes.run(params, src, tmp_path / "e", tmp_path / "m.json")
    tasks = pd.read_parquet(tmp_path / "e/episodes.parquet")
    assert _task(tasks, "test", "user_cold", "u4") == {"support": ["i2", "i9"],
                                                       "query": ["i1"]}
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"user_id": ["u1"], "split": ["training"]}).to_csv(bad, index=False)
    from metarec.errors import DataError

    with pytest.raises(DataError, match=r"bad\.csv, row 1, column 'split'"):
        episodes.run(EpisodesParams(protocol="predefined", predefined_path=str(bad)), src,
                     tmp_path / "e2", tmp_path / "m2.json")


def _long_history(tmp_path: Path) -> Path:
    """6 users x 24 interactions, one a day; u0-u3 train (first seen earliest), u4 val, u5
    test; every rating distinct in time so orders are visible."""
    rows = [(f"u{u}", f"i{(u * 7 + j) % 40:02d}", 1 + (u + j) % 5, 86_400 * (u * 3 + j))
            for u in range(6) for j in range(24)]
    src = write_validated(tmp_path / "validated", rows)
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(6)], "gender": "F", "age": 1.0})
    write_parquet(users.astype({"user_id": "string", "gender": "string"}),
                  src / "users.parquet")
    items = pd.DataFrame({"item_id": [f"i{i:02d}" for i in range(40)], "genres": [["a"]] * 40})
    write_parquet(items.astype({"item_id": "string"}), src / "items.parquet")
    return src


def _train_tasks(out: Path) -> dict[tuple[str, int], tuple[list[str], list[str]]]:
    tasks = pd.read_parquet(out / "episodes.parquet")
    train = tasks[tasks["split"] == "train"].copy()
    ids = train.drop_duplicates("task_id")
    draw = ids.groupby("user_id").cumcount()           # draws in task-id order, per user
    train["draw"] = train["task_id"].map(dict(zip(ids.task_id, draw, strict=True)))
    return {(u, int(d)): (g[g.role == "support"].item_id.tolist(),
                          g[g.role == "query"].item_id.tolist())
            for (u, d), g in train.groupby(["user_id", "draw"])}


def test_random_draws_are_random_reproducible_and_before_the_test_period(tmp_path: Path) -> None:
    src = _long_history(tmp_path)
    base = EpisodesParams(split_fractions=(4 / 6, 1 / 6, 1 / 6), support_sizes=(3,),
                          query_size=5, train_draws=2, train_draw="random", seed=7)
    runs = {}
    for name, params in {"a": base, "again": base,
                         "seed8": EpisodesParams(**{**base.__dict__, "seed": 8}),
                         "temporal": EpisodesParams(**{**base.__dict__,
                                                       "train_draw": "temporal"})}.items():
        episodes.run(params, src, tmp_path / name, tmp_path / f"{name}.json")
        runs[name] = _train_tasks(tmp_path / name)
    assert sha256_file(tmp_path / "a/episodes.parquet") == \
        sha256_file(tmp_path / "again/episodes.parquet")
    assert runs["a"] != runs["seed8"]                  # another seed, other draws
    test_start = read_json(tmp_path / "a/summary.json")["test_start"]
    inter = pd.read_parquet(src / "interactions.parquet")
    before = inter[inter["timestamp"] < test_start]
    for (user, _), (sup, qry) in runs["a"].items():
        history = before[before["user_id"] == user].sort_values("timestamp").item_id.tolist()
        assert len(sup) == 3 and len(qry) == min(5, len(history) - 3)
        assert not set(sup) & set(qry)
        assert set(sup + qry) <= set(history)          # never a test-period interaction
        assert (sup, qry) != (history[:3], history[3:8])   # not the time-ordered prefix
        assert runs["temporal"][(user, 0)] == (history[:3], history[3:8])
    assert runs["a"][("u0", 0)] != runs["a"][("u0", 1)]    # each draw draws again


def test_history_holds_the_training_period_of_the_training_users(built: tuple) -> None:
    _, _, out = built
    history = pd.read_parquet(out / "history.parquet")
    got = list(zip(history.user_id, history.item_id, history.timestamp, strict=True))
    # u1's i4 (t=500) and i9 (t=510) are in the test period; u3 validates, u4 tests
    assert got == [("u1", "i1", 100), ("u1", "i2", 110), ("u1", "i3", 120),
                   ("u2", "i1", 150), ("u2", "i2", 160), ("u2", "i5", 170)]
    data = load_episodes(out)
    assert data.relevance_threshold == 4.0             # 0.8 x the 1-5 scale's maximum


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.0), (0.1, 0.5, 0.4)])
def test_temporal_split_refuses_an_empty_train_or_test_split(tmp_path: Path,
                                                             fractions: tuple) -> None:
    """4 users: (0.5, 0.5, 0) leaves no test user, (0.1, ...) no train user."""
    from metarec.errors import DataError

    src = write_validated(tmp_path / "validated")
    params = EpisodesParams(split_fractions=fractions, support_sizes=(1,), query_size=1)
    with pytest.raises(DataError, match=r"too few users \(4\) for split fractions"):
        episodes.run(params, src, tmp_path / "e", tmp_path / "m.json")


def _predefined(tmp_path: Path, spec: dict, name: str = "split.csv", **kw) -> Path:
    src = write_validated(tmp_path / "validated")
    path = tmp_path / name
    pd.DataFrame(spec).to_csv(path, index=False)
    params = EpisodesParams(protocol="predefined", predefined_path=str(path), **kw)
    episodes.run(params, src, tmp_path / "e", tmp_path / "m.json")
    return tmp_path / "e"


def test_predefined_listed_interactions_are_the_tasks(tmp_path: Path) -> None:
    """With item_id + role the file's rows are the tasks, ratings joined from the data, k
    counted per task when not given; the summary counts users per split."""
    out = _predefined(tmp_path, {
        "user_id": ["u1", "u1", "u1", "u2", "u2", "u3", "u3", "u4", "u4", "u4"],
        "split": ["train"] * 5 + ["val"] * 2 + ["test"] * 3,
        "scenario": ["train"] * 5 + ["user_cold"] * 2 + ["user_item_cold"] * 3,
        "item_id": ["i1", "i2", "i3", "i1", "i5", "i1", "i3", "i2", "i9", "i3"],
        "role": ["support", "support", "query", "support", "query", "support", "query",
                 "support", "query", "query"]})
    tasks = pd.read_parquet(out / "episodes.parquet")
    got = tasks.sort_values(["user_id", "role", "item_id"])
    assert got[["user_id", "item_id", "role"]].values.tolist() == [
        ["u1", "i3", "query"], ["u1", "i1", "support"], ["u1", "i2", "support"],
        ["u2", "i5", "query"], ["u2", "i1", "support"], ["u3", "i3", "query"],
        ["u3", "i1", "support"], ["u4", "i3", "query"], ["u4", "i9", "query"],
        ["u4", "i2", "support"]]
    assert got["rating"].tolist() == [5, 4, 3, 3, 5, 3, 2, 4, 2, 1]
    assert tasks.groupby("user_id")["k"].first().to_dict() == {"u1": 2, "u2": 1, "u3": 1,
                                                                "u4": 1}
    assert tasks.groupby("user_id")["scenario"].first().to_dict() == {
        "u1": "train", "u2": "train", "u3": "user_cold", "u4": "user_item_cold"}
    assert tasks["task_id"].nunique() == 4
    assert read_json(out / "summary.json")["users"] == {"train": 2, "val": 1, "test": 1}


def test_predefined_k_column_keeps_several_tasks_per_user(tmp_path: Path) -> None:
    """A published split may list one user's task at several K: a given k separates them."""
    out = _predefined(tmp_path, {
        "user_id": ["u1", "u2", "u2", "u3", "u3", "u4", "u4", "u4", "u4", "u4"],
        "split": ["train", "train", "train", "val", "val"] + ["test"] * 5,
        "item_id": ["i1", "i1", "i2", "i1", "i3", "i2", "i1", "i2", "i9", "i1"],
        "role": ["support", "support", "query", "support", "query",
                 "support", "query", "support", "support", "query"],
        "k": [1, 1, 1, 1, 1, 1, 1, 2, 2, 2]})
    tasks = pd.read_parquet(out / "episodes.parquet")
    u4 = tasks[tasks["user_id"] == "u4"]
    assert u4.groupby("k")["task_id"].nunique().to_dict() == {1: 1, 2: 1}
    assert sorted(u4[(u4["k"] == 2) & (u4["role"] == "support")]["item_id"]) == ["i2", "i9"]


def test_predefined_first_k_next_q_needs_more_than_k(tmp_path: Path) -> None:
    """Without listed items each user's first K / next Q are its task; a user with exactly K
    interactions (u2: 3) has no query and no task."""
    out = _predefined(tmp_path, {"user_id": ["u1", "u2", "u3", "u4"],
                                 "split": ["train", "train", "val", "test"]},
                      support_sizes=(3,), query_size=1)
    tasks = pd.read_parquet(out / "episodes.parquet")
    assert sorted(tasks["user_id"].unique()) == ["u1", "u3", "u4"]
    assert _task(tasks, "test", "user_cold", "u4") == {"support": ["i2", "i9", "i1"],
                                                       "query": ["i3"]}
    assert read_json(out / "summary.json")["users"] == {"train": 2, "val": 1, "test": 1}


@pytest.mark.parametrize(("spec", "message"), [
    ({"user_id": ["u1", "u9"], "split": ["train", "test"]},
     r"split\.csv, row 2, column 'user_id': user 'u9' has no interactions"),
    ({"user_id": ["u1"], "fold": ["train"]}, r"split\.csv, column 'split': required column"),
    ({"user_id": ["u1", "u1"], "split": ["train", "train"], "item_id": ["i1", "i5"],
      "role": ["support", "query"]},
     r"split\.csv, row 2, column 'item_id': interaction not found in the validated data"),
])
def test_predefined_file_errors_name_row_and_column(tmp_path: Path, spec: dict,
                                                    message: str) -> None:
    from metarec.errors import DataError

    with pytest.raises(DataError, match=message):
        _predefined(tmp_path, spec)


def test_choices_on_validation_read_a_seeded_sample_of_validation_users(
        synthetic_project: dict) -> None:
    """``episodes.val_users`` caps the validation users every choice reads: a sample drawn
    with ``episodes.seed``, the same on every load, each kept user with all its tasks."""
    from dataclasses import replace

    from metarec.data.tasks import validation_tasks

    data = load_episodes(synthetic_project["root"] / "episodes")
    every = data.tasks[data.tasks["split"] == "val"]
    users = set(every["user_id"].unique())
    assert len(users) > 6 and data.vocab["draws"]["val_users"] >= len(users)
    assert data.validation_users is None and len(data.select("val")) == len(every)

    def capped(n: int, seed: int = 0):
        return replace(data, vocab={**data.vocab, "draws": {**data.vocab["draws"],
                                                            "val_users": n, "seed": seed}})

    small = capped(6)
    kept = small.validation_users
    assert len(kept) == 6 and set(kept) <= users
    assert list(kept) == list(capped(6).validation_users)               # seeded
    assert any(list(capped(6, s).validation_users) != list(kept) for s in (1, 2, 3))
    val = small.select("val")
    assert set(val["user_id"]) == set(kept)
    pd.testing.assert_frame_equal(val, every[every["user_id"].isin(kept)])
    assert len(validation_tasks(small)) == val["task_id"].nunique() < every["task_id"].nunique()
