"""The batch's rows: the world of the as-of day, its users adapted to and ranked, chunk by
chunk (:func:`recommend_stream`).

The world (:class:`~metarec.scoring.world.World`) chooses the users and writes their features
and interactions, sorted by user, to a temporary folder, out of core; then each chunk of
``score.chunk_users`` users reads only its own rows, is adapted to with the served model (its
evaluated seed and steps) and ranked over every item it has not interacted with
(:mod:`metarec.scoring.engine`). Memory follows the chunk and the catalogue, not the day.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from metarec.checkpoint import from_checkpoint, read_checkpoint
from metarec.data.encoding import FeatureTable, encode_entity
from metarec.data.recency import Recency, recency_at, window_bounds
from metarec.data.tasks import EpisodeData
from metarec.data.text import TextCache, cache_file
from metarec.errors import DataError, MetarecError
from metarec.io import arrow_frame, read_json, read_parquet, scratch_dir
from metarec.progress import progress
from metarec.scoring.engine import Ragged, recommend_chunk, task_batch
from metarec.scoring.inputs import Inputs
from metarec.scoring.world import World, runs

USER_ID = "user_id"
SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float32()), ("predicted_rating", pa.float32()),
                    ("because", pa.string()), ("kind", pa.string())])


def recommend(inputs: Inputs, chunks: range | None = None, warm_support: str = "latest"
              ) -> tuple[pa.Table, dict[str, Any]]:
    """:func:`recommend_stream`'s rows as one table (the backtest judges them in memory)."""
    parts, stats = recommend_stream(inputs, chunks, warm_support)
    return pa.concat_tables([SCHEMA.empty_table(), *parts]).combine_chunks(), stats


def recommend_stream(inputs: Inputs, chunks: range | None = None, warm_support: str = "latest"
                     ) -> tuple[Iterator[pa.Table], dict[str, Any]]:
    """The recommendations (SCHEMA), one table per chunk of ``score.chunk_users`` users as
    they are scored, and the day's counts, for the world of ``inputs``' day.

    Before this returns, the world (:class:`~metarec.scoring.world.World`) chooses the users
    and writes their features and interactions, sorted by user, to a temporary folder, out
    of core; then each chunk reads only its own users' rows, and a chunk's recommendations
    exist only until the consumer has written them: memory follows the chunk and the
    catalogue, not the number of users or interactions.

    ``chunks`` restricts scoring to those chunk numbers (a shard of the nightly flow); each
    chunk keeps its users, padding and seed, so concatenated shards equal the whole table.
    The counts always describe the whole day. ``warm_support``: a dynamic user is adapted on
    its ``latest`` ``dynamic_last`` interactions (the nightly batch), or on its ``first``
    ``max_interactions`` (the model it got as a cold user and kept: the backtest's peer).
    """
    if warm_support not in ("latest", "first"):
        raise ValueError(f"warm_support must be latest or first, got {warm_support!r}")
    if chunks is not None and chunks.step != 1:
        raise ValueError(f"chunks must be a run of consecutive chunks, got {chunks}")
    params, tables, model_path = inputs.params, inputs.tables, inputs.model_path
    blob = read_checkpoint(model_path, inputs.model_copy)   # the bytes pinned when it began
    vocab = blob["vocab"]
    check_compatible(vocab, tables["users"].parent / "schema.json", model_path)
    # the run's users and their interactions, sorted by user, live here until it ends (a
    # stream dropped unread is cleaned up when collected)
    tmp = scratch_dir("score")
    folder = Path(tmp.name)
    try:
        if inputs.landing and inputs.checked is None:
            raise RuntimeError("landing files are read only after check_day validated them")
        with World(tables["interactions"], inputs.landing_rows(), inputs.end,
                   params.engine_memory_mb) as world:
            counts = world.choose(params.max_interactions, params.active_days,
                                  params.dynamic)
            items = _encode(read_parquet(tables["items"]), "item_id", world.item_ids(),
                            vocab["items"], _text_cache(vocab["items"], params.text_cache))
            stats = {**counts, "catalogue_items": len(items),
                     "world_interactions": world.count(), "algorithm": blob["algorithm"]}
            n, size = counts["users"], params.chunk_users
            todo = chunks if chunks is not None else range(-(-n // size))
            bounds = [min(c * size, n) for c in range(todo.start, todo.stop + 1)]
            item_ids = pa.array(items.ids, pa.string())
            catalogue = pa.table({"item_id": item_ids, "idx": pa.array(np.arange(len(items)))})
            users_file, rows_file = world.export(folder, tables["users"], catalogue,
                                                 bounds[0], bounds[-1])
            users = _encode_users(users_file, vocab["users"])   # this run's users, in order
            data = EpisodeData(tasks=pd.DataFrame(), users=users, items=items, vocab=vocab)
            predictor = from_checkpoint(blob, data, model_path)
            window = predictor.recency_window()
            if window is not None:        # what is popular tonight, counted by the engine
                predictor.use_recency(_recency(world, items, inputs.end, *window))
        # the engine is closed: its memory is free before the scoring starts
    except BaseException:
        tmp.cleanup()
        raise
    if not todo:
        tmp.cleanup()
        return iter(()), stats
    if inputs.steps is not None:          # the test-time inner steps evaluation chose
        predictor.set_steps(rate=inputs.steps["rate"], rank=inputs.steps["rank"])
    first = params.max_interactions if warm_support == "first" else None

    def rows() -> Iterator[pa.Table]:
        lo = bounds[0]
        try:
            with progress(f"score {params.as_of}", len(todo)) as tick:
                for chunk_no, a, b, who, done in zip(todo, bounds[:-1], bounds[1:],
                                                     runs(users_file, bounds),
                                                     runs(rows_file, bounds), strict=True):
                    kinds = np.asarray(who["kind"].to_numpy(zero_copy_only=False), object)
                    support, history = _user_rows(
                        done["pos"].to_numpy() - a, done["item"].to_numpy().astype(np.int64),
                        done["rating"].to_numpy(), kinds, params.dynamic_last, first)
                    batch = task_batch(torch.arange(a - lo, b - lo),
                                       *support.padded(0, b - a), now=inputs.end)
                    lengths = np.diff(history.starts)
                    seen_rows = torch.from_numpy(np.repeat(np.arange(b - a), lengths))
                    got = recommend_chunk(predictor, batch, chunk_no, seen_rows,
                                          torch.from_numpy(history.items), params.top_k)
                    yield _chunk_table(*got, who["user_id"], who["kind"], item_ids)
                    tick.advance(1, users=b)
        finally:
            tmp.cleanup()

    return rows(), stats


def _recency(world: World, items: FeatureTable, end: int, steps: int, step_days: int
             ) -> Recency:
    """What is popular at ``end`` (:mod:`metarec.data.recency`): each catalogue row's
    interactions in the window before it, counted by the log's engine."""
    per_item = world.item_counts(*window_bounds(end, steps, step_days))
    counts = np.zeros(len(items), dtype=np.int64)
    counts[items.index_of(pd.Series(per_item.index))] = per_item.to_numpy()
    return recency_at(counts, end, step_days)


def _chunk_table(idx: torch.Tensor, valid: torch.Tensor, score: torch.Tensor,
                 rating: torch.Tensor, because: torch.Tensor, user_ids: pa.ChunkedArray,
                 kinds: pa.ChunkedArray, item_ids: pa.Array) -> pa.Table:
    """One chunk's rows (SCHEMA) from recommend_chunk's (T, K) picks of its users
    ``user_ids`` (of kinds ``kinds``)."""
    v = valid.numpy()
    u_pos = np.repeat(np.arange(v.shape[0]), v.sum(1))
    rank = np.broadcast_to(np.arange(1, v.shape[1] + 1, dtype=np.int32), v.shape)[v]
    r = rating.numpy()[v].astype(np.float32)
    why = because.numpy()[v].astype(np.int64)
    return pa.table({
        "user_id": user_ids.take(u_pos).cast(pa.string()),
        "rank": pa.array(rank, pa.int32()),
        "item_id": item_ids.take(idx.numpy()[v].astype(np.int64)),
        "score": pa.array(score.numpy()[v].astype(np.float32)),
        "predicted_rating": pa.array(r, pa.float32(), mask=np.isnan(r)),
        "because": item_ids.take(pa.array(np.maximum(why, 0), mask=why < 0)),
        "kind": kinds.take(u_pos).cast(pa.string()),
    }, schema=SCHEMA)


def check_compatible(vocab: dict[str, Any], schema_path: Path, model_path: Path) -> None:
    """Stop when the checkpoint was trained on data shaped differently from the scoring inputs:
    another rating scale, or a feature that is missing or of another kind. Names which."""
    if not schema_path.is_file():
        return  # hand-assembled inputs (tests): encoding still maps unknowns to 0
    schema = read_json(schema_path)
    problems = []
    for key in ("min", "max"):
        trained, now = vocab.get("rating", {}).get(key), schema.get("rating", {}).get(key)
        if trained is not None and now is not None and float(trained) != float(now):
            problems.append(f"rating {key}: trained on {trained}, inputs have {now}")
    for entity in ("users", "items"):
        current = schema.get(entity, {})
        for name, spec in vocab.get(entity, {}).get("features", {}).items():
            if name not in current:
                problems.append(f"{entity} feature {name!r} ({spec['kind']}): missing from "
                                "the inputs")
            elif current[name]["kind"] != spec["kind"]:
                problems.append(f"{entity} feature {name!r}: trained as {spec['kind']}, "
                                f"inputs declare {current[name]['kind']}")
    if problems:
        raise MetarecError(f"{model_path} does not match the scoring inputs ({schema_path}): "
                           + "; ".join(problems)
                           + ". Retrain on these inputs (`dvc repro train`) or score the "
                           "inputs it was trained on.")


def _text_cache(vocab: dict[str, Any], folder: str | None) -> TextCache | None:
    """The episodes stage's cache of the text vectors of the encoder the checkpoint's
    vocabulary names (``score.text_cache``, read only: nothing is written back), so that a
    night encodes only the item texts not there; None without text features or cache."""
    specs = [f for f in vocab.get("features", {}).values() if f["kind"] == "text"]
    if folder is None or not specs or not cache_file(folder, specs[0]).is_file():
        return None
    return TextCache(cache_file(folder, specs[0]))


def _encode(table: pd.DataFrame, id_col: str, seen: pd.Index, vocab: dict[str, Any],
            text_cache: TextCache | None = None) -> FeatureTable:
    """Encode ``table`` plus a featureless row per id in ``seen`` it lacks; rows sorted by id;
    text vectors read from ``text_cache`` where it holds them (the same vectors).

    Ids and values the checkpoint's vocabulary never saw map to the unknown index 0.
    """
    known = pd.Index(table[id_col].astype("string"))
    new = pd.Index(seen.astype("string")).difference(known)
    if len(new):
        extra = pd.DataFrame({c: pd.Series([None] * len(new), dtype=object)
                              for c in table.columns})
        extra[id_col] = np.asarray(new, dtype=object)
        table = pd.concat([table.astype(object), extra], ignore_index=True)
    table = table.assign(**{id_col: table[id_col].astype("string")})
    table = table.sort_values(id_col, kind="stable").reset_index(drop=True)
    if table[id_col].duplicated().any():
        dup = table[id_col][table[id_col].duplicated()].iloc[0]
        raise DataError(f"duplicate id {dup!r} in the feature table", column=id_col)
    return encode_entity(table, id_col, vocab, text_cache)


def _encode_users(path: Path, vocab: dict[str, Any], rows: int = 1 << 16) -> FeatureTable:
    """The encoded features of the users in the Parquet file ``path`` (:meth:`World.export`:
    pos, kind, user_id, features), row i = its i-th user, ``rows`` users at a time: a day
    of millions of users never holds them all as pandas rows."""
    source = pq.ParquetFile(path)
    parts = [encode_entity(arrow_frame(pa.Table.from_batches([b])), USER_ID, vocab)
             for b in source.iter_batches(rows)]
    if not parts:
        return encode_entity(arrow_frame(source.schema_arrow.empty_table()), USER_ID, vocab)
    # the ids as arrow strings: a Python str per user would cost more than its features
    ids = source.read(columns=[USER_ID])[USER_ID].combine_chunks().cast(pa.string())
    return _concat(parts, pd.Series(pd.arrays.ArrowStringArray(ids), dtype="string"))


def _concat(parts: list[FeatureTable], ids: pd.Series) -> FeatureTable:
    """One table of ``parts``' rows in order, ``ids`` theirs (multi-valued codes padded to
    the widest)."""
    width = max(p.multi.shape[2] for p in parts)
    multi = torch.cat([torch.nn.functional.pad(p.multi, (0, width - p.multi.shape[2]))
                       for p in parts])
    return dataclasses.replace(
        parts[0], ids=ids,
        id_code=torch.cat([p.id_code for p in parts]),
        categorical=torch.cat([p.categorical for p in parts]), multi=multi,
        numeric=torch.cat([p.numeric for p in parts]))


def _user_rows(pos: np.ndarray, item: np.ndarray, rating: np.ndarray, kinds: np.ndarray,
               last: int, first: int | None = None) -> tuple[Ragged, Ragged]:
    """(support, history) of ``len(kinds)`` users from their interactions (pos: the user's
    position, item: catalogue row, rating), sorted by user, then time. Support: each user's
    interactions in time order, the latest ``last`` for dynamic users, or the earliest
    ``first`` for every user when given; history: the distinct items each user interacted
    with, to be masked."""
    n, n_items = len(kinds), int(item.max()) + 1 if len(item) else 1
    counts = np.bincount(pos, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)])
    within = np.arange(len(pos)) - starts[pos]
    if first is not None:
        sup = within < first
    else:
        sup = (kinds[pos] == "cold") | (within >= counts[pos] - last)
    sup_starts = np.concatenate([[0], np.cumsum(np.bincount(pos[sup], minlength=n))])
    pairs = np.unique(pos * n_items + item)                                # sorted by user
    hist_p = pairs // n_items
    hist_starts = np.concatenate([[0], np.cumsum(np.bincount(hist_p, minlength=n))])
    return (Ragged(item[sup], rating[sup], sup_starts.astype(np.int64)),
            Ragged(pairs % n_items, np.zeros(len(pairs), np.float32),
                   hist_starts.astype(np.int64)))
