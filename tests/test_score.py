"""Nightly scoring on a tiny hand-written world, with a checkpoint trained for a few steps.

The world (as of 2024-03-10, N = 3, D = 3, so active means a last interaction at or after
2024-03-08 00:00 UTC and before 2024-03-11 00:00 UTC):

- a: 1 interaction on 03-10, not in the users table, not in the vocabulary  -> cold
- b: 3 interactions, the last exactly at 03-08 00:00:00 (window edge)       -> cold
- c: 2 interactions, the last at 03-07 23:59:59                             -> inactive
- d: 4 interactions (> N), the last on 03-09                                -> dynamic only
- e: 1 interaction on 03-09 and 1 at 03-11 00:00:00 (after the day)         -> cold (1)
- f: 1 interaction at 03-11 00:00:00 only                                   -> not yet seen
- g: 3 interactions on 03-10 plus 1 on 03-12                                -> cold (3)
- h: 1 interaction on 03-10 arriving through the landing folder             -> cold
- t00..t15: training users, active in January only                          -> inactive
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from meta_fixtures import build_algorithm, network_for, save_algorithm
from typer.testing import CliRunner

from metarec.algorithms.finetune import FinetuneParams
from metarec.checkpoint import load_model
from metarec.cli import app
from metarec.config import (
    IngestParams,
    ModelParams,
    ScoreParams,
    TrainParams,
    ValidateParams,
    to_dict,
)
from metarec.data.encoding import encode_entity, fit_entity_vocab
from metarec.data.landing import CANONICAL, check_landing
from metarec.data.tasks import EpisodeData, to_batch
from metarec.errors import DataError, ParamsError
from metarec.io import write_parquet
from metarec.meta.features import FeatureStore
from metarec.scoring import engine, heap
from metarec.scoring import inputs as scoring_inputs
from metarec.scoring import publish as scoring_publish
from metarec.scoring import stream as scoring_stream
from metarec.scoring.engine import top_k
from metarec.scoring.verify import VerifyError
from metarec.scoring.world import World, day_end, parse_as_of, users_to_score
from metarec.stages import score as stage

AS_OF = "2024-03-10"
N_ITEMS = 12
PARAMS = ScoreParams(model="maml", top_k=5, max_interactions=3, active_days=3, chunk_users=2)
MODEL = ModelParams(interaction="dot", embedding_dim=4, hidden=(8,), adapt="user")
TRAIN = TrainParams(max_steps=4, val_every=2, meta_batch=4, inner_steps=2, inner_lr=0.1,
                    outer_lr=0.01,
                    sections={"finetune": FinetuneParams(steps=(1,), lrs=(0.1,))})


def _ts(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def _log() -> pd.DataFrame:
    rows = [("a", 0, "2024-03-10T12:00:00"),
            ("b", 1, "2024-03-01T00:00:00"), ("b", 2, "2024-03-05T00:00:00"),
            ("b", 3, "2024-03-08T00:00:00"),
            ("c", 1, "2024-03-01T00:00:00"), ("c", 4, "2024-03-07T23:59:59"),
            ("d", 1, "2024-03-01T00:00:00"), ("d", 2, "2024-03-02T00:00:00"),
            ("d", 3, "2024-03-03T00:00:00"), ("d", 5, "2024-03-09T00:00:00"),
            ("e", 6, "2024-03-09T10:00:00"), ("e", 7, "2024-03-11T00:00:00"),
            ("f", 8, "2024-03-11T00:00:00"),
            ("g", 0, "2024-03-10T01:00:00"), ("g", 9, "2024-03-10T02:00:00"),
            ("g", 12, "2024-03-10T03:00:00"), ("g", 10, "2024-03-12T00:00:00")]
    rng = np.random.default_rng(0)
    for u in range(16):  # training users, January only
        for j, i in enumerate(rng.choice(N_ITEMS, 6, replace=False)):
            rows.append((f"t{u:02d}", int(i), f"2024-01-{j + 1:02d}T00:00:00"))
    frame = pd.DataFrame(rows, columns=["user_id", "item", "when"])
    return pd.DataFrame({
        "user_id": frame["user_id"].astype("string"),
        "item_id": frame["item"].map(lambda i: f"i{i:02d}").astype("string"),  # i12: no row
        "rating": rng.integers(1, 6, len(frame)).astype("float64"),
        "timestamp": frame["when"].map(_ts).astype("int64"),
        "source_row": np.arange(1, len(frame) + 1, dtype=np.int64)})


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = ["b", "c", "d", "e", "f", "g", "h", *[f"t{u:02d}" for u in range(16)]]  # no "a"
    rng = np.random.default_rng(1)
    users = pd.DataFrame({"user_id": pd.Series(ids, dtype="string"),
                          "age": rng.integers(18, 60, len(ids)).astype("float64"),
                          "gender": pd.Series(rng.choice(["F", "M"], len(ids)),
                                              dtype="string")})
    genres = ["Comedy", "Drama", "Action"]
    items = pd.DataFrame({
        "item_id": pd.Series([f"i{i:02d}" for i in range(N_ITEMS)], dtype="string"),
        "year": (1990 + np.arange(N_ITEMS)).astype("float64"),
        "genres": [[genres[i % 3]] + ([genres[(i + 1) % 3]] if i % 2 else [])
                   for i in range(N_ITEMS)]})
    return users, items


def _vocab(users: pd.DataFrame, items: pd.DataFrame, train_users: pd.Series) -> dict:
    used = _log()
    used = used[used["user_id"].isin(train_users)]
    return {"rating": {"kind": "explicit", "min": 1.0, "max": 5.0},
            "users": fit_entity_vocab(users, "user_id", {"age": {"kind": "numeric"},
                                                         "gender": {"kind": "categorical"}},
                                      train_users),
            "items": fit_entity_vocab(items, "item_id", {"year": {"kind": "numeric"},
                                                         "genres": {"kind": "multicategorical"}},
                                      used["item_id"])}


def _episode_data(vocab: dict, users_df: pd.DataFrame, items_df: pd.DataFrame) -> EpisodeData:
    """Training users' tasks: support = first 3 ratings, query = last 3; 4 users validate."""
    log = _log()
    log = log[log["user_id"].str.startswith("t")].sort_values(["user_id", "timestamp"])
    users = encode_entity(users_df, "user_id", vocab["users"])
    items = encode_entity(items_df, "item_id", vocab["items"])
    tasks = log.assign(
        task_id=log["user_id"].str[1:].astype(int),
        split=np.where(log["user_id"] >= "t12", "val", "train"),
        scenario="train", k=np.int16(3),
        role=np.tile(["support"] * 3 + ["query"] * 3, 16),
        rating=log["rating"].astype("float32"))
    tasks["user_idx"] = users.index_of(tasks["user_id"])
    tasks["item_idx"] = items.index_of(tasks["item_id"])
    return EpisodeData(tasks=tasks.reset_index(drop=True), users=users, items=items,
                       vocab=vocab)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """validated/, landing/ and models/seed0/maml.pt (trained 4 outer steps) in a temp
    folder."""
    from meta_fixtures import fit_algorithm

    root = tmp_path_factory.mktemp("world")
    users, items = _tables()
    log = _log()
    write_parquet(log, root / "validated" / "interactions.parquet")
    write_parquet(users, root / "validated" / "users.parquet")
    write_parquet(items, root / "validated" / "items.parquet")
    landing = root / "landing"
    landing.mkdir()
    pd.DataFrame({"user_id": ["h"], "item_id": ["i11"], "rating": [5.0],
                  "timestamp": [_ts("2024-03-10T20:00:00")]}).to_csv(
        landing / "2024-03-10.csv", index=False)
    pd.DataFrame({"user_id": ["h"], "item_id": ["i03"], "rating": [1.0],  # after the day
                  "timestamp": [_ts("2024-03-12T20:00:00")]}).to_parquet(
        landing / "2024-03-12.parquet")
    train_users = pd.Series([f"t{u:02d}" for u in range(16)], dtype="string")
    vocab = _vocab(users, items, train_users)
    data = _episode_data(vocab, users, items)
    torch.manual_seed(0)
    fit = fit_algorithm("maml", data, MODEL, TRAIN, root / "logs")
    save_algorithm(fit.learner, fit.learner.network_kwargs, data,
                   root / "models/seed0/maml.pt",
                   {"model": to_dict(MODEL), "train": to_dict(TRAIN)}, name=fit.name)
    return {"root": root, "validated": root / "validated", "models": root / "models",
            "landing": landing, "data": data}  # type: ignore[dict-item]


def _params(world: dict, **kw) -> ScoreParams:
    return replace(PARAMS, landing_dir=str(world["landing"]), **kw)


def _run(world: dict, out: Path, **kw) -> Path:
    return stage.run(_params(world, **kw), ValidateParams(), IngestParams(), world["validated"],
                     world["models"], out, AS_OF)


def _landing(files: list[Path]) -> pa.Table | None:
    """The rows of landing ``files`` that pass validation, as the world reads them."""
    if not files:
        return None
    return check_landing(files, CANONICAL, {"min": 1.0, "max": 5.0},
                         pa.array([f"i{i:02d}" for i in range(N_ITEMS)]), ValidateParams()).kept


# --- selection ---------------------------------------------------------------------------


def _selection(as_of: str, dynamic: bool, landing: list[Path] = ()) -> dict[str, str]:
    with World(_log(), _landing(list(landing)), day_end(parse_as_of(as_of))) as world:
        sel = users_to_score(world, max_interactions=3, active_days=3, dynamic=dynamic)
    return dict(zip(sel.user_ids.tolist(), sel.kinds.tolist(), strict=True))


def test_cold_users_exact_set():
    assert _selection(AS_OF, dynamic=False) == {"a": "cold", "b": "cold", "e": "cold",
                                                "g": "cold"}
    assert _selection(AS_OF, dynamic=True) == {"a": "cold", "b": "cold", "d": "dynamic",
                                               "e": "cold", "g": "cold"}
    # two days earlier: window 03-06..03-08; b (last 03-08 00:00), c (03-07 23:59:59)
    assert _selection("2024-03-08", dynamic=False) == {"b": "cold", "c": "cold"}
    # d had 3 interactions on 03-03, then N = 3 still holds: cold
    assert _selection("2024-03-03", dynamic=False) == {"b": "cold", "c": "cold", "d": "cold"}


def test_landing_files_join_the_world(world):
    from metarec.scoring.world import landing_files

    files = landing_files(world["landing"], parse_as_of(AS_OF))
    assert [p.name for p in files] == ["2024-03-10.csv"]  # the 03-12 file is not read yet
    assert _selection(AS_OF, dynamic=False, landing=files)["h"] == "cold"


def test_the_world_read_from_its_file_is_the_world_read_from_a_table(world):
    from metarec.scoring.world import landing_files

    files = landing_files(world["landing"], parse_as_of(AS_OF))
    end = day_end(parse_as_of(AS_OF))
    with World(world["validated"] / "interactions.parquet", _landing(files), end) as scanned, \
            World(_log(), _landing(files), end) as table:
        got, ref = scanned.frame(), table.frame()
        pick = users_to_score(scanned, 3, 3, dynamic=True)
        assert scanned.count() == len(got) == 17 + 6 * 16 - 3 + 1  # 3 after the day, 1 landed
        assert scanned.item_ids().tolist() == sorted(set(got["item_id"]))
    pd.testing.assert_frame_equal(got, ref)
    log = _log()
    kept = log[log["timestamp"] < end].reset_index(drop=True)  # file order, then the landing
    assert got["user_id"].tolist() == [*kept["user_id"], "h"]
    assert got["timestamp"].tolist() == [*kept["timestamp"], _ts("2024-03-10T20:00:00")]
    assert pick.user_ids.tolist() == ["a", "b", "d", "e", "g", "h"]
    assert pick.kinds.tolist() == ["cold", "cold", "dynamic", "cold", "cold", "cold"]
    assert pick.counts.tolist() == [1, 3, 4, 1, 3, 1]


def test_a_world_streams_each_run_of_users_in_time_order_across_batches(tmp_path):
    """The chosen users' rows, exported and read back in runs of users from batches of 2
    rows: each run gets exactly its users' rows, by user then time, ties in file order."""
    from metarec.scoring.world import runs

    log = pd.DataFrame({"user_id": ["b", "a", "b", "c", "a", "a", "b"],
                        "item_id": ["i1", "i2", "i0", "i1", "i1", "i0", "i0"],
                        "rating": [1.0, 2, 3, 4, 5, 6, 7],
                        "timestamp": [30, 20, 10, 5, 20, 1, 10]})
    users = tmp_path / "users.parquet"
    write_parquet(pd.DataFrame({"user_id": ["c", "a"], "age": [30.0, 40.0]}), users)
    items = pa.table({"item_id": ["i0", "i1", "i2"], "idx": pa.array([0, 1, 2], pa.int64())})
    with World(log, None, end=100) as w:
        assert w.choose(2, 1, dynamic=True) == {"users": 3, "cold_users": 1,
                                                "dynamic_users": 2}
        who, done = w.export(tmp_path, users, items, 0, 3)
        (tmp_path / "later").mkdir()
        _, later = w.export(tmp_path / "later", users, items, 1, 3)
    chunks = list(runs(done, [0, 2, 2, 3], batch_rows=2))
    # a: i0@1, i1@20 and i2@20 (tie on time: by item), b: i0@10 twice (file order), i1@30
    assert [c["pos"].to_pylist() for c in chunks] == [[0, 0, 0, 1, 1, 1], [], [2]]
    assert chunks[0]["item"].to_pylist() == [0, 1, 2, 0, 0, 1]
    assert chunks[0]["rating"].to_pylist() == [6.0, 5.0, 2.0, 3.0, 7.0, 1.0]
    assert [c["pos"].to_pylist() for c in runs(later, [1, 3], 2)] == [[1, 1, 1, 2]]
    people = pq.read_table(who).to_pydict()
    assert people["user_id"] == ["a", "b", "c"] and people["kind"] == ["dynamic"] * 2 + ["cold"]
    assert people["age"] == [40.0, None, 30.0]    # b: not in the feature table


def test_a_user_twice_in_the_feature_table_is_an_error(tmp_path):
    users = tmp_path / "users.parquet"
    write_parquet(pd.DataFrame({"user_id": ["a", "b", "a"], "age": [1.0, 2.0, 3.0]}), users)
    items = pa.table({"item_id": ["i0"], "idx": pa.array([0], pa.int64())})
    log = pd.DataFrame({"user_id": ["a"], "item_id": ["i0"], "rating": [1.0], "timestamp": [1]})
    with World(log, None, end=100) as w, pytest.raises(DataError, match="duplicate id 'a'"):
        w.choose(2, 1, dynamic=False)
        w.export(tmp_path, users, items, 0, 1)


def test_an_engine_out_of_memory_names_the_param_to_raise():
    """What cannot spill (here one list of 5M strings) fails with the knob and a value to try,
    not with DuckDB's bare message."""
    log = pd.DataFrame({"user_id": ["a"], "item_id": ["i0"], "rating": [1.0], "timestamp": [1]})
    with World(log, None, end=100, memory_mb=16) as w, pytest.raises(
            ParamsError, match=r"out of its 16 MB \(score.engine_memory_mb\).*to 32"):
        w._all("SELECT list(i::VARCHAR || 'padding-padding') FROM range(5000000) t(i)")


def test_bad_landing_file_names_file_row_and_column(world, tmp_path):
    """Under policy fail the first bad landing row stops the batch, naming file, row and
    column; a file that cannot be read at all fails under either policy."""
    landing = tmp_path / "landing"
    landing.mkdir()
    bad = landing / "2024-03-10.csv"
    night = _ts("2024-03-10T08:00:00")
    bad.write_text(f"user_id,item_id,rating,timestamp\nh,i01,4,{night}\nh,i02,x,{night + 1}\n")
    with pytest.raises(DataError) as err:
        stage.run(_params({**world, "landing": landing}), ValidateParams(policy="fail"),
                  IngestParams(), world["validated"], world["models"], tmp_path / "out", AS_OF)
    msg = str(err.value)
    assert str(bad) in msg and "row 2" in msg and "'rating'" in msg and "NaN" in msg
    bad.write_text(f"user_id,item,rating,timestamp\nh,i01,4,{night}\n")
    with pytest.raises(DataError, match="column 'item_id': required column missing"):
        _run({**world, "landing": landing}, tmp_path / "out")
    bad.unlink()
    binary = landing / "2024-03-10.parquet"  # ids stored as bytes, not text
    pq.write_table(pa.table({"user_id": pa.array([b"h", b"h"], pa.binary()),
                             "item_id": ["i01", "i02"], "rating": [4.0, 3.0],
                             "timestamp": [night, night + 1]}), binary)
    with pytest.raises(DataError, match=r"column 'user_id'.*bytes"):
        _run({**world, "landing": landing}, tmp_path / "out")
    assert not (tmp_path / "out" / AS_OF).exists()


# --- the batch ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(world, tmp_path_factory) -> Path:
    return _run(world, tmp_path_factory.mktemp("recs"), dynamic=True, dynamic_last=2)


def test_batch_rows_ranks_and_scores(batch):
    recs = pd.read_parquet(batch / "recommendations.parquet")
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score", "predicted_rating",
                                  "because", "kind"]
    schema = pq.read_schema(batch / "recommendations.parquet")
    assert [str(t) for t in schema.types] == ["string", "int32", "string", "float", "float",
                                              "string", "string"]
    kinds = recs.groupby("user_id")["kind"].first().to_dict()
    assert kinds == {"a": "cold", "b": "cold", "d": "dynamic", "e": "cold", "g": "cold",
                     "h": "cold"}
    for _, rows in recs.groupby("user_id"):
        assert rows["rank"].tolist() == [1, 2, 3, 4, 5]
        assert (np.diff(rows["score"].to_numpy()) <= 0).all()
        assert rows["item_id"].is_unique
    assert recs["predicted_rating"].between(1.0, 5.0).all()
    manifest = json.loads((batch / "manifest.json").read_text())
    assert manifest["rows"] == len(recs) == 6 * 5
    assert (manifest["cold_users"], manifest["dynamic_users"]) == (5, 1)
    assert manifest["catalogue_items"] == N_ITEMS + 1  # i12 has no feature row: unknown
    assert manifest["algorithm"] == "maml"
    assert sorted(Path(k).name for k in manifest["inputs"]) == [
        "2024-03-10.csv", "interactions.parquet", "items.parquet", "users.parquet"]
    assert len(manifest["model_sha256"]) == 64 and manifest["as_of"] == AS_OF


def test_no_interacted_item_is_recommended(batch, world):
    recs = pd.read_parquet(batch / "recommendations.parquet")
    log = _log()
    seen = log[log["timestamp"] < day_end(parse_as_of(AS_OF))]
    seen = set(zip(seen["user_id"], seen["item_id"], strict=True)) | {("h", "i11")}
    got = set(zip(recs["user_id"], recs["item_id"], strict=True))
    assert not got & seen
    # d is re-adapted on its last 2 interactions but none of its 4 items come back
    assert not set(recs.loc[recs["user_id"] == "d", "item_id"]) & {"i01", "i02", "i03", "i05"}


def test_output_holds_only_ids(batch):
    recs = pd.read_parquet(batch / "recommendations.parquet")
    users, items = _tables()
    feature_values = {str(v) for v in users["age"]} | set(users["gender"])
    assert not set(recs.columns) & {"age", "gender", "year", "genres"}
    assert not set(recs["user_id"]) & feature_values
    assert set(recs["item_id"]) <= {f"i{i:02d}" for i in range(N_ITEMS + 1)}


def test_rerun_is_byte_identical(world, batch, tmp_path):
    again = _run(world, tmp_path, dynamic=True, dynamic_last=2)
    for name in ("recommendations.parquet", "manifest.json"):
        assert (again / name).read_bytes() == (batch / name).read_bytes()


# --- the engine --------------------------------------------------------------------------


@pytest.mark.parametrize("interaction", ["dot", "mlp"])
def test_catalogue_scores_match_the_predictor(world, tmp_path, interaction):
    """rank (items projected once, then one product per block) gives the pre-sigmoid scores
    whose ratings are exactly what rate gives item by item."""
    data = world["data"]
    kw, net = network_for(data, replace(MODEL, interaction=interaction))
    torch.manual_seed(1)
    algo = build_algorithm("maml", net, {"adapt": "user", "inner_lr": 0.1, "inner_steps": 3})
    with torch.no_grad():
        for p in algo.parameters():
            p.add_(0.1 * torch.randn_like(p))
    predictor = load_model(save_algorithm(algo, kw, data, tmp_path / "m.pt"), data)
    tasks = to_batch(data.select("train"))
    state = predictor.adapt(tasks)
    key = predictor.rank(state)
    items = torch.arange(len(data.items)).expand(len(tasks), -1)
    rating = predictor.learner.model.to_rating(key)
    torch.testing.assert_close(rating, predictor.rate(state, items), rtol=0, atol=1e-5)


def test_top_k_breaks_ties_by_position_and_skips_excluded():
    key = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [-1.0, -1.0, -2.0, -1.0, -0.0]])
    idx, valid = top_k(key, torch.tensor([0, 1, 1, 1]), torch.tensor([2, 0, 1, 4]), 4)
    assert idx.tolist() == [[1, 4, 3, 0], [3, 2, 0, 1]]
    assert valid.tolist() == [[True] * 4, [True, True, False, False]]


def _dense_reference(key: np.ndarray, excluded: np.ndarray, k: int) -> tuple[list, list]:
    """Top k per row by a plain sort: score descending (0.0 above -0.0, as float bits order
    them), then column ascending; excluded cells after every other cell (by column), marked
    invalid."""
    idx, valid = [], []
    for row, ex in zip(key, excluded, strict=True):
        cols = np.arange(len(row))
        order = np.lexsort((cols, ~ex & np.signbit(row), np.where(ex, 0, -row), ex))  # last first
        idx.append(order[:k].tolist())
        valid.append((~ex[order[:k]]).tolist())
    return idx, valid


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("cells", [1, 7, 40, 10_000])
def test_streamed_top_k_is_exactly_the_dense_top_k(cells, compiled):
    """Blocks of every size (1 column .. the whole row), scores drawn from 4 values (ties
    everywhere, -0.0 and 0.0 included), rows with fewer than k allowed cells; the compiled
    heaps (CPU) and the PyTorch path (any device) alike."""
    rng = np.random.default_rng(cells)
    t, n, k = 6, 23, 8
    key = rng.choice(np.array([-1.5, -0.0, 0.0, 2.25], np.float32), (t, n))
    excluded = rng.random((t, n)) < 0.3
    excluded[0, :20] = True                            # 3 allowed cells < k
    rows, cols = np.nonzero(excluded)
    step = max(1, cells // t)
    blocks = [(c0, torch.from_numpy(key[:, c0:c0 + step])) for c0 in range(0, n, step)]
    idx, valid, score = engine.top_k_blocks(blocks, t, n, torch.from_numpy(rows),
                                            torch.from_numpy(cols), k, compiled=compiled)
    ref_idx, ref_valid = _dense_reference(key, excluded, k)
    assert idx.tolist() == ref_idx and valid.tolist() == ref_valid
    picked = np.take_along_axis(key, np.array(ref_idx), 1)
    np.testing.assert_array_equal(score.numpy()[valid.numpy()], picked[np.array(ref_valid)])
    assert torch.isnan(score[~valid]).all()
    assert (torch.signbit(score[valid]) == torch.from_numpy(
        np.signbit(picked[np.array(ref_valid)]))).all()   # -0.0 stays -0.0


def _count_kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each block the compiled kernel merges (its first column)."""
    calls: list[int] = []
    merge = heap.merge

    def counted(key, c0, *args):  # noqa: ANN001, ANN002, ANN202 - a pass-through spy
        calls.append(c0)
        return merge(key, c0, *args)

    monkeypatch.setattr(heap, "merge", counted)
    return calls


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("width", [128, 300, 700])
def test_tiled_top_k_is_exactly_the_dense_top_k(width, compiled, monkeypatch):
    """Wide blocks, where a row's k-th best filters whole tiles of columns first: whole
    tiles, tiles plus a remainder, one block; ties everywhere, a row with fewer than k
    allowed cells, a row whose best cells all come late in the catalogue, and one whose k-th
    best is -0.0 when later tiles hold 0.0 (which ranks above it)."""
    rng = np.random.default_rng(width)
    t, n, k = 7, 1_500, 20
    key = rng.choice(np.array([-1.5, -0.0, 0.0, 2.25, 3.0], np.float32), (t, n),
                     p=[0.3, 0.2, 0.2, 0.28, 0.02])
    key[1, :1_400] = -1.5                                 # its top 20 lie in the last block
    key[2] = -1.5
    key[2, :60], key[2, 900:910] = -0.0, 0.0              # a k-th best of -0.0, then 0.0s
    excluded = rng.random((t, n)) < 0.3
    excluded[0, :1_490] = True                            # 10 allowed cells < k
    rows, cols = np.nonzero(excluded)
    blocks = [(c0, torch.from_numpy(key[:, c0:c0 + width])) for c0 in range(0, n, width)]
    calls = _count_kernel_calls(monkeypatch)
    idx, valid, score = engine.top_k_blocks(blocks, t, n, torch.from_numpy(rows),
                                            torch.from_numpy(cols), k, compiled=compiled)
    ref_idx, ref_valid = _dense_reference(key, excluded, k)
    assert idx.tolist() == ref_idx and valid.tolist() == ref_valid
    picked = np.take_along_axis(key, np.array(ref_idx), 1)
    np.testing.assert_array_equal(score.numpy()[valid.numpy()], picked[np.array(ref_valid)])
    # every block after the first goes through the kernel (a first block wider than
    # engine.SEED columns is cut there, and its rest too)
    later = ([engine.SEED] if width > engine.SEED else []) + list(range(width, n, width))
    assert calls == (later if compiled else [])


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("column", [5, 140, 700, 1_499])
def test_top_k_refuses_nan_scores(column, compiled, monkeypatch):
    """A NaN anywhere (the first block, a tile, a middle block, the last columns) stops the
    ranking; past the first block it is the compiled kernel that finds it."""
    key = np.random.default_rng(0).normal(size=(3, 1_500)).astype(np.float32)
    key[2, column] = np.nan
    blocks = [(c0, torch.from_numpy(key[:, c0:c0 + 300])) for c0 in range(0, 1_500, 300)]
    none = torch.empty(0, dtype=torch.long)
    calls = _count_kernel_calls(monkeypatch)
    with pytest.raises(FloatingPointError, match="NaN"):
        engine.top_k_blocks(blocks, 3, 1_500, none, none, 10, compiled=compiled)
    assert calls == (list(range(300, column // 300 * 300 + 1, 300))
                     if compiled and column >= 300 else [])


def _heap_case(exclude: bool) -> dict[str, np.ndarray]:
    """Heaps of 5 rows x 6 picks (ties, a row holding excluded picks) and a 300-column block
    at catalogue column 2000 (ties, -0.0/0.0, a NaN in row 2); row 1's excluded columns are
    its best cells of the block, which would enter its heap otherwise."""
    rng = np.random.default_rng(3)
    t, k, b = 5, 6, 300
    key = rng.choice(np.array([-1.5, -0.0, 0.0, 2.25, 3.0], np.float32), (t, b),
                     p=[0.3, 0.2, 0.2, 0.25, 0.05])
    key[2, 100:105] = np.nan
    hs = rng.choice(np.array([-1.5, 0.0, 2.25], np.float32), (t, k))
    hc = rng.permutation(np.arange(1_000, 1_000 + t * k)).reshape(t, k).astype(np.int64)
    hx = np.zeros((t, k), bool)
    hx[4, :2] = True
    ex_cols = (2_000 + np.flatnonzero(key[1] == 3.0)).astype(np.int64) if exclude else (
        np.zeros(0, np.int64))
    ends = np.array([0, len(ex_cols), len(ex_cols), len(ex_cols), len(ex_cols)], np.int64)
    starts = np.array([0, 0, len(ex_cols), len(ex_cols), len(ex_cols)], np.int64)
    return {"key": key, "hs": hs, "hc": hc, "hx": hx, "ex_start": starts, "ex_end": ends,
            "ex_cols": ex_cols, "nan_at": np.full(t, -1, np.int64)}


def _run_heaps(case: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {name: case[name].copy() for name in ("hs", "hc", "hx", "ex_start", "nan_at")}
    heap.heapify(out["hs"], out["hc"], out["hx"])
    heap.merge(case["key"], 2_000, out["hs"], out["hc"], out["hx"], out["ex_start"],
               case["ex_end"], case["ex_cols"], out["nan_at"])
    return out


_PURE = """
import sys
import numpy as np
from metarec.scoring import heap
case = dict(np.load(sys.argv[1]))
out = {name: case[name].copy() for name in ("hs", "hc", "hx", "ex_start", "nan_at")}
heap.heapify(out["hs"], out["hc"], out["hx"])
heap.merge(case["key"], 2_000, out["hs"], out["hc"], out["hx"], out["ex_start"],
           case["ex_end"], case["ex_cols"], out["nan_at"])
np.savez(sys.argv[2], **out)
"""


def test_compiled_heaps_mean_what_their_python_says(tmp_path):
    """The kernels of ``scoring.heap`` run as plain Python (``NUMBA_DISABLE_JIT=1``, in a
    subprocess) update the heaps exactly as compiled; their order of two picks is the
    engine's (score, 0.0 above -0.0, lower column; an excluded pick below every other); an
    excluded cell never enters a full heap, though it would without its exclusion."""
    vals = [(-1.5, 3, False), (-0.0, 2, False), (0.0, 5, False), (0.0, 2, False),
            (2.25, 9, False), (2.25, 1, False), (float("-inf"), 4, True), (float("-inf"), 7, True)]

    def rank(v: tuple[float, int, bool]) -> tuple:
        s, c, x = v
        return (not x, s if not x else 0.0, not np.signbit(s), -c)     # higher ranks first

    for a in vals:
        for b in vals:
            assert heap._worse.py_func(*a, *b) == (rank(a) < rank(b)), (a, b)
    case = _heap_case(exclude=True)
    compiled = _run_heaps(case)
    np.savez(tmp_path / "case.npz", **case)
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    done = subprocess.run([sys.executable, "-c", _PURE, str(tmp_path / "case.npz"),
                           str(tmp_path / "out.npz")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    pure = np.load(tmp_path / "out.npz")
    for name, value in compiled.items():
        np.testing.assert_array_equal(value, pure[name], err_msg=name)
    assert compiled["nan_at"].tolist() == [-1, -1, 2_100, -1, -1]   # the NaN row stopped there
    excluded = set(case["ex_cols"].tolist())
    assert len(excluded) >= 3 and not set(compiled["hc"][1].tolist()) & excluded
    free = _run_heaps(_heap_case(exclude=False))
    assert set(free["hc"][1].tolist()) & excluded                # they would have entered


@pytest.mark.parametrize("adapt", ["user", "all"])
def test_engine_blocks_give_the_evaluation_ranking(world, tmp_path, adapt):
    """The nightly engine (the catalogue in blocks, running top K) picks exactly the top K of
    the scores evaluation ranks with (``rank``: the whole catalogue at once), for any block
    size and both item paths (vectors once per run; item side adapted per user)."""
    data = world["data"]
    kw, net = network_for(data, MODEL)
    torch.manual_seed(5)
    algo = build_algorithm("maml", net, {"adapt": adapt, "inner_lr": 0.1, "inner_steps": 2})
    with torch.no_grad():
        for p in algo.parameters():
            p.add_(0.3 * torch.randn_like(p))
    predictor = load_model(save_algorithm(algo, kw, data, tmp_path / "m.pt"), data)
    tasks = to_batch(data.select("train"))
    rows = torch.arange(len(tasks)).repeat_interleave(tasks.support_items.shape[1])
    cols = tasks.support_items.reshape(-1)
    keep = tasks.support_mask.reshape(-1)
    rows, cols = rows[keep], cols[keep]
    full = predictor.rank(predictor.adapt(tasks))                          # evaluation's path
    ref_idx, ref_valid = top_k(full, rows, cols, 5)
    for cells in (len(tasks), 3 * len(tasks), 1 << 20):
        idx, valid, score, *_ = engine.recommend_chunk(predictor, tasks, 0, rows, cols, 5,
                                                       cells)
        assert torch.equal(idx, ref_idx) and torch.equal(valid, ref_valid)
        # blocks of another width may round the last bit differently (another GEMM shape)
        torch.testing.assert_close(score[valid], full.gather(1, idx)[valid], rtol=1e-5,
                                   atol=1e-6)


# --- verify-batch and atomic writes --------------------------------------------------------


def test_verify_batch_passes_then_fails_after_tampering(world, tmp_path):
    out = _run(world, tmp_path / "recs")
    runner = CliRunner()
    ok = runner.invoke(app, ["verify-batch", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "identical" in ok.output
    table = pq.read_table(out / "recommendations.parquet").to_pandas()
    table.loc[0, "score"] = np.float32(table.loc[0, "score"] + 0.5)
    write_parquet(table, out / "recommendations.parquet")
    bad = runner.invoke(app, ["verify-batch", str(out)])
    assert bad.exit_code == 2
    assert "modified after it was written" in bad.output


def test_verify_batch_catches_an_edited_manifest(world, tmp_path):
    out = _run(world, tmp_path / "recs")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "rows": 3}))
    with pytest.raises(VerifyError, match="different rows"):
        stage.verify(out)
    (out / "manifest.json").write_text(json.dumps({**manifest, "params": {
        **manifest["params"], "top_k": 4}}))
    with pytest.raises(VerifyError, match="params do not match their recorded hash"):
        stage.verify(out)


def test_verify_batch_names_changed_inputs(world, tmp_path):
    out = _run(world, tmp_path / "recs")
    (world["models"] / "seed0/maml.pt").rename(tmp_path / "kept.pt")
    try:
        with pytest.raises(VerifyError, match=r"maml\.pt: missing(.|\n)*dvc pull"):
            stage.verify(out)
    finally:
        (tmp_path / "kept.pt").rename(world["models"] / "seed0/maml.pt")
    extra = world["landing"] / "2024-03-09.csv"
    extra.write_text("user_id,item_id,rating,timestamp\nz,i01,4,1709980000\n")
    try:
        with pytest.raises(VerifyError, match="2024-03-09.csv: landing file"):
            stage.verify(out)
    finally:
        extra.unlink()
    stage.verify(out)


def test_crash_leaves_no_partial_batch(world, tmp_path, monkeypatch):
    out = tmp_path / "recs"

    def broken(parts, path, schema):
        next(iter(parts))  # the first chunk scored and part of it written, then the crash
        Path(path).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(scoring_publish, "write_parquet_stream", broken)
    with pytest.raises(OSError, match="disk full"):
        _run(world, out)
    assert list(out.iterdir()) == []  # no batch, no temporary folder
    monkeypatch.undo()
    first = _run(world, out)
    before = (first / "recommendations.parquet").read_bytes()
    monkeypatch.setattr(scoring_publish, "write_json", lambda *a, **k: (_ for _ in ()).throw(
        OSError("crash before the manifest")))
    with pytest.raises(OSError, match="crash before"):
        _run(world, out, top_k=3)
    assert [p.name for p in out.iterdir()] == [AS_OF]  # the previous complete batch
    assert (first / "recommendations.parquet").read_bytes() == before


def test_cli_score_writes_the_batch_and_fails_cleanly(world, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"score:\n  model: maml\n  top_k: 4\n  max_interactions: 3\n"
                      f"  active_days: 3\n  landing_dir: {world['landing']}\n")
    args = ["score", "--as-of", AS_OF, "--in", str(world["validated"]), "--models",
            str(world["models"]), "--out", str(tmp_path / "recs"), "--params", str(params),
            # no evaluation choice: not the project's own metrics/selection.json (after
            # `make run`, the default path holds one that names another models folder's seed)
            "--selection", str(tmp_path / "no-selection.json")]
    ok = CliRunner().invoke(app, args)
    assert ok.exit_code == 0, ok.output
    recs = pd.read_parquet(tmp_path / "recs" / AS_OF / "recommendations.parquet")
    assert sorted(recs["user_id"].unique()) == ["a", "b", "e", "g", "h"]
    assert (recs.groupby("user_id").size() == 4).all()
    missing = CliRunner().invoke(app, [*args[:5], "--models", str(tmp_path), *args[7:]])
    assert missing.exit_code == 2 and "dvc repro train" in missing.output
    bad_date = CliRunner().invoke(app, ["score", "--as-of", "10/03/2024", "--params",
                                        str(params)])
    assert bad_date.exit_code == 2 and "YYYY-MM-DD" in bad_date.output


def test_ridge_scores_match_its_predict(world, tmp_path):
    """The closed-form learner ranks on its unclamped rating; clamped, it is its predict."""
    data = world["data"]
    kw, net = network_for(data, MODEL)
    torch.manual_seed(2)
    algo = build_algorithm("ridge", net, {"adapt": "user", "inner_lr": 0.1, "inner_steps": 1,
                                          "lam": 0.5})
    predictor = load_model(save_algorithm(algo, kw, data, tmp_path / "r.pt"), data)
    tasks = to_batch(data.select("train"))
    state = predictor.adapt(tasks)
    key = predictor.rank(state)
    items = torch.arange(len(data.items)).expand(len(tasks), -1)
    model = predictor.learner.model
    torch.testing.assert_close(key.clamp(model.rating_min, model.rating_max),
                               predictor.rate(state, items), rtol=0, atol=1e-5)


def test_item_side_adaptation_ranks_in_item_blocks(world, tmp_path, monkeypatch):
    """adapt = all (item side adapted per user): raw item features go through each user's
    own network, in blocks of items; the same numbers as rate."""
    from metarec.meta import predictor as predictor_mod

    data = world["data"]
    kw, net = network_for(data, MODEL)
    torch.manual_seed(3)
    algo = build_algorithm("maml", net, {"adapt": "all", "inner_lr": 0.1, "inner_steps": 2})
    predictor = load_model(save_algorithm(algo, kw, data, tmp_path / "a.pt"), data)
    tasks = to_batch(data.select("train"))
    monkeypatch.setattr(predictor_mod, "CELLS", 5 * len(tasks))  # blocks of 5 items
    state = predictor.adapt(tasks)
    key = predictor.rank(state)
    items = torch.arange(len(data.items)).expand(len(tasks), -1)
    torch.testing.assert_close(predictor.learner.model.to_rating(key),
                               predictor.rate(state, items), rtol=0, atol=1e-5)


def test_chunk_ranges_concatenate_to_the_whole_table(world, tmp_path):
    params = _params(world, dynamic=True, chunk_users=2, model="maml")
    inputs = scoring_inputs.resolve(params, world["validated"], world["models"], AS_OF)
    with pytest.raises(RuntimeError, match="only after check_day validated them"):
        scoring_stream.recommend(inputs)        # a landing row is never read unchecked
    inputs = scoring_inputs.check_day(inputs, tmp_path)
    whole, stats = scoring_stream.recommend(inputs)
    parts = [scoring_stream.recommend(inputs, range(lo, hi))[0] for lo, hi in [(0, 1), (1, 3)]]
    import pyarrow as pa

    assert pa.concat_tables(parts).combine_chunks().equals(whole.combine_chunks())
    assert stats["users"] == 6 and whole.num_rows == 30


def test_because_names_the_support_item_nearest_to_each_pick(world):
    """Hand-built item vectors: item rows 0-3 point along the axes; a user whose support is
    rows 1 and 2 gets, for a pick near row 2's direction, because = row 2."""
    from metarec.data.tasks import TaskBatch
    from metarec.meta.predictor import AdaptivePredictor

    data = world["data"]
    kw, net = network_for(data, MODEL)
    algo = build_algorithm("maml", net, {"adapt": "vector", "inner_lr": 0.1,
                                         "inner_steps": 1})
    predictor = AdaptivePredictor("maml", algo, FeatureStore(data.users, data.items))
    n, d = len(data.items), MODEL.embedding_dim
    v = torch.zeros(n, d)
    v[torch.arange(n), torch.arange(n) % d] = 1.0
    v[5] = torch.tensor([0.0, 0.2, 1.0, 0.0])                # row 5 is near row 2, not row 1
    v[6] = torch.tensor([0.0, 1.0, 0.1, 0.0])                # row 6 is near row 1
    predictor._item_table = {"v": v, "bias": torch.zeros(n), "rbias": torch.zeros(n)}
    batch = TaskBatch(torch.arange(1), torch.zeros(1, dtype=torch.long),
                      torch.tensor([[1, 2, 0]]), torch.ones(1, 3),
                      torch.tensor([[True, True, False]]), torch.zeros(1, 1, dtype=torch.long),
                      torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.bool))
    pos = predictor.explain(batch, torch.tensor([[5, 6]]))
    assert pos.tolist() == [[1, 0]]                           # support positions: rows 2, 1
    empty = TaskBatch(**{**batch.__dict__, "support_mask": torch.zeros(1, 3, dtype=torch.bool)})
    assert predictor.explain(empty, torch.tensor([[5, 6]])).tolist() == [[-1, -1]]


def test_the_batch_explains_every_pick_with_one_of_the_users_items(batch, world):
    recs = pd.read_parquet(batch / "recommendations.parquet")
    log = _log()
    seen = log[log["timestamp"] < day_end(parse_as_of(AS_OF))]
    have = seen.groupby("user_id")["item_id"].apply(set).to_dict()
    have["h"] = {"i11"}
    for row in recs.itertuples():
        assert row.because in have[row.user_id], row
