"""The nightly batch: who is scored on a date, with which model, and how it is published.

:func:`build_batch` replays the world as of a date (:mod:`metarec.scoring.world`), adapts the
checkpoint to every selected user on its interactions so far, ranks every item the user has
not interacted with (:mod:`metarec.scoring.engine`) and publishes ``<out_root>/<DATE>/``:

- ``recommendations.parquet``: user_id (string), rank (int32, 1..K), item_id (string),
  score (float32, the model's ranking score: the order), predicted_rating (float32, the
  adapted rating clamped to the scale; null for a model that only ranks), because (string:
  the user's support item that contributed most to the item's score, null if none), kind (string:
  cold | dynamic). Ids only, never user features. Rows are ordered by user_id, then rank.
- ``manifest.json``: as-of date, effective score params and their hash, git commit, metarec
  version, model and input file sha256s, row and user counts, the Parquet's sha256. Nothing
  depends on the wall clock, so a rerun gives byte-identical files (same machine and threads).

The batch is written into a hidden temporary folder beside the target and renamed into place
only when complete. The sharded nightly flow (:mod:`metarec.orchestration.sharding`) scores
runs of whole chunks with :func:`recommend` and publishes through :func:`publish_batch`, so
its batch has the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

import metarec
from metarec.config import ScoreParams, params_hash, to_dict
from metarec.data.encoding import FeatureTable, encode_entity
from metarec.data.tasks import EpisodeData
from metarec.errors import DataError, MetarecError
from metarec.io import (
    atomic_dir,
    md5_file,
    project_lock,
    read_json,
    read_parquet,
    sha256_file,
    write_json,
    write_parquet_stream,
)
from metarec.meta.checkpoint import from_checkpoint, read_checkpoint
from metarec.progress import progress
from metarec.scoring.engine import Ragged, recommend_chunk, task_batch
from metarec.scoring.world import (
    Selection,
    day_end,
    landing_files,
    load_world,
    parse_as_of,
    read_log,
    users_to_score,
)

log = logging.getLogger("metarec.score")
RECS, MANIFEST = "recommendations.parquet", "manifest.json"
TABLES = ("interactions", "users", "items")
SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float32()), ("predicted_rating", pa.float32()),
                    ("because", pa.string()), ("kind", pa.string())])


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What one batch is built from: resolved params, tables, the model and why it."""

    params: ScoreParams            # as_of filled in
    validated_dir: str
    models_dir: str
    model: str                     # the algorithm scored with (``auto`` resolved)
    selection: dict[str, Any] | None = None   # evaluate's record, when ``auto`` chose
    selection_path: str | None = None

    @property
    def tables(self) -> dict[str, Path]:
        return {n: Path(self.validated_dir) / f"{n}.parquet" for n in TABLES}

    @property
    def model_path(self) -> Path:
        return Path(self.models_dir) / f"{self.model}.pt"

    @property
    def landing(self) -> list[Path]:
        return landing_files(self.params.landing_dir, parse_as_of(self.params.as_of))

    @property
    def inputs(self) -> list[Path]:
        """Every file the batch reads besides the model (their sha256 go in the manifest)."""
        extra = [Path(self.selection_path)] if self.selection is not None else []
        schema = Path(self.validated_dir) / "schema.json"
        extra += [schema] if schema.is_file() else []
        return [*self.tables.values(), *self.landing, *extra]

    @property
    def end(self) -> int:
        return day_end(parse_as_of(self.params.as_of))


def resolve(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
            as_of: str | None, selection: str | Path | None = None) -> Inputs:
    """Params with the as-of date filled in, the model resolved (``auto``: the evaluate
    stage's choice in ``selection``) and the validated tables checked to exist. Shared by
    ``metarec score`` and the sharded nightly flow."""
    day = parse_as_of(as_of or params.as_of)
    params = dataclasses.replace(params, as_of=day.isoformat())
    for name in TABLES:
        path = Path(validated_dir) / f"{name}.parquet"
        if not path.is_file():
            raise DataError("missing; run `dvc repro validate` (or `dvc pull`)", file=str(path))
    if params.model != "auto":
        return Inputs(params, str(validated_dir), str(models_dir), params.model)
    if selection is None or not Path(selection).is_file():
        raise DataError("score.model is auto but the evaluation's choice is missing; run "
                        "`dvc repro evaluate` (or set score.model to a trained model)",
                        file=str(selection))
    chosen = read_json(selection)
    if not chosen.get("model"):
        raise DataError("names no model", file=str(selection))
    return Inputs(params, str(validated_dir), str(models_dir), chosen["model"], chosen,
                  str(selection))


def scoring_lock(out_root: str | Path, what: str = "metarec score"
                 ) -> contextlib.AbstractContextManager[None]:
    """The one lock on ``out_root``: a second scoring run of the project fails fast."""
    root = Path(out_root)
    return project_lock(root.parent / f".{root.name}.lock", f"{what} (out {out_root})")


def build_batch(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
                out_root: str | Path, as_of: str | None = None,
                selection: str | Path | None = None) -> Path:
    """Score the users of ``as_of`` (default ``params.as_of``); returns the batch folder."""
    inputs = resolve(params, validated_dir, models_dir, as_of, selection)
    with scoring_lock(out_root):
        parts, stats = recommend_stream(inputs)
        target = publish_batch(inputs, parts, stats, out_root)
    log.info("score: %d users with %s -> %s", stats["users"], inputs.model, target)
    return target


def _rel(path: str | Path) -> str:
    """A path as recorded in the manifest: relative to the project root (the working
    directory) when inside it, so a batch records the same manifest however it was started."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def publish_batch(inputs: Inputs, parts: Iterable[pa.Table], stats: dict[str, Any],
                  out_root: str | Path) -> Path:
    """Write the recommendations (streamed from ``parts``, tables of SCHEMA), the manifest
    (what the batch was built from) and publish the batch atomically.

    Shared by ``metarec score`` and the sharded nightly flow, so both give the same bytes.
    """
    params, model_path = inputs.params, inputs.model_path
    read = [*inputs.inputs, *([model_path] if model_path.is_file() else [])]
    manifest = {
        "as_of": params.as_of, "params": to_dict(params), "params_hash": params_hash(params),
        "validated_dir": _rel(inputs.validated_dir), "models_dir": _rel(inputs.models_dir),
        "model": _rel(model_path), "model_name": inputs.model,
        "selection": inputs.selection, "selection_path":
            _rel(inputs.selection_path) if inputs.selection_path else None,
        "model_sha256": sha256_file(model_path) if model_path.is_file() else None,
        "inputs": {_rel(p): sha256_file(p) for p in inputs.inputs},
        # DVC's content addresses (md5 of the bytes): verify-batch restores the files from the
        # DVC cache or remote by these, whatever dvc.lock says now
        "dvc_md5": {_rel(p): md5_file(p) for p in read},
        "git_commit": _git_commit(), "metarec_version": metarec.__version__,
        "torch_version": torch.__version__, **stats,
    }
    target = Path(out_root) / params.as_of
    publish(target, parts, manifest)
    _sweep(target)
    return target


def recommend(inputs: Inputs, chunks: range | None = None, warm_support: str = "latest"
              ) -> tuple[pa.Table, dict[str, Any]]:
    """:func:`recommend_stream`'s rows as one table (the backtest judges them in memory)."""
    parts, stats = recommend_stream(inputs, chunks, warm_support)
    return pa.concat_tables([SCHEMA.empty_table(), *parts]).combine_chunks(), stats


def recommend_stream(inputs: Inputs, chunks: range | None = None, warm_support: str = "latest"
                     ) -> tuple[Iterator[pa.Table], dict[str, Any]]:
    """The recommendations (SCHEMA), one table per chunk of ``score.chunk_users`` users as
    they are scored, and the day's counts, for the world of ``inputs``' day. The world, the
    selection and the users' rows are built before this returns; a chunk's rows exist only
    until the consumer has written them, so memory does not grow with the output.

    ``chunks`` restricts scoring to those chunk numbers (a shard of the nightly flow); each
    chunk keeps its users, padding and seed, so concatenated shards equal the whole table.
    The counts always describe the whole day. ``warm_support``: a dynamic user is adapted on
    its ``latest`` ``dynamic_last`` interactions (the nightly batch), or on its ``first``
    ``max_interactions`` (the model it got as a cold user and kept: the backtest's peer).
    """
    if warm_support not in ("latest", "first"):
        raise ValueError(f"warm_support must be latest or first, got {warm_support!r}")
    params, tables, model_path = inputs.params, inputs.tables, inputs.model_path
    blob = read_checkpoint(model_path)
    vocab = blob["vocab"]
    check_compatible(vocab, tables["users"].parent / "schema.json", model_path)
    world = load_world(read_log(tables["interactions"]), inputs.landing, inputs.end)
    sel = users_to_score(world, inputs.end, params.max_interactions, params.active_days,
                         params.dynamic)
    users = _encode(read_parquet(tables["users"]), "user_id",
                    world["user_id"].cat.categories, vocab["users"])
    items = _encode(read_parquet(tables["items"]), "item_id",
                    world["item_id"].cat.categories, vocab["items"])
    data = EpisodeData(tasks=pd.DataFrame(), users=users, items=items, vocab=vocab)
    predictor = from_checkpoint(blob, data, model_path)
    support, history = _user_rows(world, sel, items, params.dynamic_last,
                                  params.max_interactions if warm_support == "first" else None)
    stats = {"users": len(sel.user_ids), "cold_users": int((sel.kinds == "cold").sum()),
             "dynamic_users": int((sel.kinds == "dynamic").sum()),
             "catalogue_items": len(items), "world_interactions": len(world),
             "algorithm": blob["algorithm"]}
    del world
    user_idx = torch.from_numpy(users.index_of(sel.user_ids))               # (U,)
    n, size = len(sel.user_ids), params.chunk_users
    todo = list(chunks if chunks is not None else range(-(-n // size)))
    user_ids = pa.array(sel.user_ids.to_numpy(dtype=object), pa.string())
    kinds = pa.array(sel.kinds.astype(object), pa.string())
    item_ids = pa.array(items.ids, pa.string())

    def rows() -> Iterator[pa.Table]:
        with progress(f"score {params.as_of}", len(todo)) as tick:
            for chunk_no in todo:
                a, b = chunk_no * size, min((chunk_no + 1) * size, n)
                batch = task_batch(user_idx[a:b], *support.padded(a, b))
                lengths = np.diff(history.starts[a:b + 1])
                seen_rows = torch.from_numpy(np.repeat(np.arange(b - a), lengths))
                seen = torch.from_numpy(history.items[history.starts[a]:history.starts[b]])
                got = recommend_chunk(predictor, batch, chunk_no, seen_rows, seen, params.top_k)
                yield _chunk_table(a, *got, user_ids, kinds, item_ids)
                tick.advance(1, users=b)

    return rows(), stats


def _chunk_table(first: int, idx: torch.Tensor, valid: torch.Tensor, score: torch.Tensor,
                 rating: torch.Tensor, because: torch.Tensor, user_ids: pa.Array,
                 kinds: pa.Array, item_ids: pa.Array) -> pa.Table:
    """One chunk's rows (SCHEMA) from recommend_chunk's (T, K) picks; ``first``: the chunk's
    first user position in the day's selection."""
    v = valid.numpy()
    u_pos = np.repeat(np.arange(first, first + v.shape[0]), v.sum(1))
    rank = np.broadcast_to(np.arange(1, v.shape[1] + 1, dtype=np.int32), v.shape)[v]
    r = rating.numpy()[v].astype(np.float32)
    why = because.numpy()[v].astype(np.int64)
    return pa.table({
        "user_id": user_ids.take(u_pos),
        "rank": pa.array(rank, pa.int32()),
        "item_id": item_ids.take(idx.numpy()[v].astype(np.int64)),
        "score": pa.array(score.numpy()[v].astype(np.float32)),
        "predicted_rating": pa.array(r, pa.float32(), mask=np.isnan(r)),
        "because": item_ids.take(pa.array(np.maximum(why, 0), mask=why < 0)),
        "kind": kinds.take(u_pos),
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


def _encode(table: pd.DataFrame, id_col: str, seen: pd.Index, vocab: dict[str, Any]
            ) -> FeatureTable:
    """Encode ``table`` plus a featureless row per id in ``seen`` it lacks; rows sorted by id.

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
    return encode_entity(table, id_col, vocab)


def _user_rows(world: pd.DataFrame, sel: Selection, items: FeatureTable, last: int,
               first: int | None = None) -> tuple[Ragged, Ragged]:
    """(support: each user's interactions in time order, the latest ``last`` for dynamic
    users, or the earliest ``first`` for every user when given; history: the distinct items
    each user interacted with, to be masked)."""
    n = len(sel.user_ids)
    # through the categoricals' codes: one lookup per distinct id, not per interaction
    user_cat, item_cat = world["user_id"].array, world["item_id"].array
    pos = pd.Index(sel.user_ids).get_indexer(user_cat.categories.astype("string"))
    pos = pos[user_cat.codes]
    keep = pos >= 0
    p = pos[keep]
    item = items.index_of(pd.Series(item_cat.categories, dtype="string"))
    item = item[item_cat.codes[keep]]
    rating = world["rating"].to_numpy(np.float32)[keep]
    order = np.lexsort((item, world["timestamp"].to_numpy()[keep], p))
    p, item, rating = p[order], item[order], rating[order]
    counts = np.bincount(p, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)])
    within = np.arange(len(p)) - starts[p]
    if first is not None:
        sup = within < first
    else:
        sup = (sel.kinds[p] == "cold") | (within >= counts[p] - last)
    sup_starts = np.concatenate([[0], np.cumsum(np.bincount(p[sup], minlength=n))])
    pairs = np.unique(p * len(items) + item)                               # sorted by user
    hist_p = pairs // len(items)
    hist_starts = np.concatenate([[0], np.cumsum(np.bincount(hist_p, minlength=n))])
    return (Ragged(item[sup], rating[sup], sup_starts.astype(np.int64)),
            Ragged(pairs % len(items), np.zeros(len(pairs), np.float32),
                   hist_starts.astype(np.int64)))


def _sweep(target: Path) -> None:
    """Remove temporary folders a killed run may have left beside the batch."""
    for stale in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)


def publish(target: Path, parts: Iterable[pa.Table], manifest: dict[str, Any]) -> None:
    """Stream the rows into a temporary folder beside ``target``, then rename it into place.

    The folders are exchanged in one atomic syscall (:func:`metarec.io.swap_dir`), so a crash
    or SIGKILL at any instant leaves either no batch or the previous complete one (plus a
    hidden temporary folder at worst, removed by the next run), never a half-written one.
    """
    with atomic_dir(target) as tmp:
        rows = write_parquet_stream(parts, tmp / RECS, SCHEMA)
        manifest = {**manifest, "rows": rows, "parquet_sha256": sha256_file(tmp / RECS)}
        write_json(manifest, tmp / MANIFEST)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


