"""Stage `score`: the nightly batch of recommendations for cold-start (and dynamic) users.

``run`` replays the world as of a date (:mod:`metarec.scoring.world`), adapts the checkpoint to
every selected user on its interactions so far, ranks every item the user has not interacted
with (:mod:`metarec.scoring.engine`) and publishes ``<out_root>/<DATE>/``:

- ``recommendations.parquet``: user_id (string), rank (int32, 1..K), item_id (string),
  score (float32, the adapted predicted rating), kind (string: cold | dynamic). Ids only,
  never user features. Rows are ordered by user_id, then rank.
- ``manifest.json``: as-of date, effective score params and their hash, git commit, metarec
  version, model and input file sha256s, row and user counts, the Parquet's sha256. Nothing
  depends on the wall clock, so a rerun gives byte-identical files (same machine and threads).

The batch is written into a hidden temporary folder beside the target and renamed into place
only when complete. ``verify`` rebuilds a batch from its manifest and compares bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

import metarec
from metarec.config import ScoreParams, params_hash, parse_params, to_dict
from metarec.data.encoding import FeatureTable, encode_entity
from metarec.data.tasks import EpisodeData
from metarec.errors import DataError, MetarecError, ParamsError
from metarec.io import (
    atomic_dir,
    project_lock,
    read_json,
    read_parquet,
    sha256_file,
    write_json,
    write_parquet,
)
from metarec.meta.checkpoint import load_predictor, read_checkpoint
from metarec.scoring.engine import CatalogueScorer, Ragged, task_batch, top_k
from metarec.scoring.world import (
    Selection,
    day_end,
    landing_files,
    load_world,
    parse_as_of,
    users_to_score,
)

log = logging.getLogger("metarec.score")
RECS, MANIFEST = "recommendations.parquet", "manifest.json"
TABLES = ("interactions", "users", "items")
SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float32()), ("kind", pa.string())])


class VerifyError(MetarecError):
    """A batch cannot be rebuilt from its manifest, or the rebuild differs from it."""


def resolve(params: ScoreParams, validated_dir: str | Path, as_of: str | None
            ) -> tuple[ScoreParams, dict[str, Path]]:
    """Params with the as-of date filled in and checked, and the validated tables (which must
    exist). Shared by ``metarec score`` and the sharded nightly flow."""
    day = parse_as_of(as_of or params.as_of)
    params = dataclasses.replace(params, as_of=day.isoformat())
    _check(params)
    tables = {name: Path(validated_dir) / f"{name}.parquet" for name in TABLES}
    for path in tables.values():
        if not path.is_file():
            raise DataError("missing; run `dvc repro validate` (or `dvc pull`)", file=str(path))
    return params, tables


def scoring_lock(out_root: str | Path, what: str = "metarec score"
                 ) -> contextlib.AbstractContextManager[None]:
    """The one lock on ``out_root``: a second scoring run of the project fails fast."""
    root = Path(out_root)
    return project_lock(root.parent / f".{root.name}.lock", f"{what} (out {out_root})")


def run(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
        out_root: str | Path, as_of: str | None = None) -> Path:
    """Score the users of ``as_of`` (default ``params.as_of``); returns the batch folder."""
    params, tables = resolve(params, validated_dir, as_of)
    model_path = Path(models_dir) / f"{params.model}.pt"
    with scoring_lock(out_root):
        landing = landing_files(params.landing_dir, parse_as_of(params.as_of))
        table, stats = recommend(params, tables, landing, model_path,
                                 day_end(parse_as_of(params.as_of)))
        target = publish_batch(params, validated_dir, models_dir, [*tables.values(), *landing],
                               table, stats, out_root)
    log.info("score: %d rows for %d users -> %s", stats["rows"], stats["users"], target)
    return target


def _rel(path: str | Path) -> str:
    """A path as recorded in the manifest: relative to the project root (the working
    directory) when inside it, so a batch records the same manifest however it was started."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def publish_batch(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
                  inputs: list[Path], table: pa.Table, stats: dict[str, Any],
                  out_root: str | Path) -> Path:
    """Write the manifest (what the batch was built from) and publish the batch atomically.

    Shared by ``metarec score`` and the sharded nightly flow, so both give the same bytes.
    """
    model_path = Path(models_dir) / f"{params.model}.pt"
    manifest = {
        "as_of": params.as_of, "params": to_dict(params), "params_hash": params_hash(params),
        "validated_dir": _rel(validated_dir), "models_dir": _rel(models_dir),
        "model": _rel(model_path),
        "model_sha256": sha256_file(model_path) if model_path.is_file() else None,
        "inputs": {_rel(p): sha256_file(p) for p in inputs},
        "git_commit": _git_commit(), "metarec_version": metarec.__version__,
        "torch_version": torch.__version__, **stats, "rows": table.num_rows,
    }
    target = Path(out_root) / params.as_of
    publish(target, table, manifest)
    _sweep(target)
    return target


def _check(params: ScoreParams) -> None:
    for key in ("top_k", "max_interactions", "active_days", "chunk_users", "dynamic_last"):
        if getattr(params, key) < 1:
            raise ParamsError(f"score.{key}: must be at least 1, got {getattr(params, key)}")


def recommend(params: ScoreParams, tables: dict[str, Path], landing: list[Path],
              model_path: Path, end: int, chunks: range | None = None
              ) -> tuple[pa.Table, dict[str, Any]]:
    """The recommendations table (SCHEMA) and counts for the world before ``end``.

    ``chunks`` restricts scoring to those chunk numbers (a shard of the nightly flow); each
    chunk keeps its users, padding and seed, so concatenated shards equal the whole table.
    The counts always describe the whole day.
    """
    vocab = read_checkpoint(model_path)["vocab"]
    check_compatible(vocab, tables["users"].parent / "schema.json", model_path)
    world = load_world(read_parquet(tables["interactions"]), landing, end)
    sel = users_to_score(world, end, params.max_interactions, params.active_days,
                         params.dynamic)
    users = _encode(read_parquet(tables["users"]), "user_id", world["user_id"], vocab["users"])
    items = _encode(read_parquet(tables["items"]), "item_id", world["item_id"], vocab["items"])
    data = EpisodeData(tasks=pd.DataFrame(), users=users, items=items, vocab=vocab)
    scorer = CatalogueScorer(load_predictor(model_path, data), len(items))
    support, history = _user_rows(world, sel, items, params.dynamic_last)
    user_idx = torch.from_numpy(users.index_of(sel.user_ids))               # (U,)
    n, k = len(sel.user_ids), params.top_k
    out_user, out_item, out_score, out_rank = [], [], [], []
    size = params.chunk_users
    for chunk_no in chunks if chunks is not None else range(-(-n // size)):
        a, b = chunk_no * size, min((chunk_no + 1) * size, n)
        batch = task_batch(user_idx[a:b], *support.padded(a, b))
        key, rating = scorer.score(batch, chunk_no)                         # (T, C) each
        lengths = np.diff(history.starts[a:b + 1])
        rows = torch.from_numpy(np.repeat(np.arange(b - a), lengths))
        cols = torch.from_numpy(history.items[history.starts[a]:history.starts[b]])
        idx, valid = top_k(key, rows, cols, k)                              # (T, k')
        picked = rating.gather(1, idx)                                      # (T, k')
        valid_np = valid.numpy()
        out_user.append(np.repeat(np.arange(a, b), valid_np.sum(1)))
        out_item.append(idx.numpy()[valid_np])
        out_score.append(picked.numpy()[valid_np])
        out_rank.append(np.broadcast_to(np.arange(1, idx.shape[1] + 1), idx.shape)[valid_np])
        log.info("score: %d / %d users adapted and ranked", b, n)
    cat = lambda parts, dtype: (np.concatenate(parts) if parts  # noqa: E731
                                else np.zeros(0, dtype)).astype(dtype)
    u_pos, i_pos = cat(out_user, np.int64), cat(out_item, np.int64)
    table = pa.table({
        "user_id": pa.array(sel.user_ids.to_numpy(dtype=object), pa.string()).take(u_pos),
        "rank": pa.array(cat(out_rank, np.int32)),
        "item_id": pa.array(items.ids, pa.string()).take(i_pos),
        "score": pa.array(cat(out_score, np.float32)),
        "kind": pa.array(sel.kinds.astype(object), pa.string()).take(u_pos),
    }, schema=SCHEMA)
    stats = {"rows": table.num_rows, "users": n,
             "cold_users": int((sel.kinds == "cold").sum()),
             "dynamic_users": int((sel.kinds == "dynamic").sum()),
             "catalogue_items": len(items), "world_interactions": len(world),
             "scoring_path": "catalogue-matmul" if scorer.fast_path else "predictor.predict"}
    return table, stats


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


def _encode(table: pd.DataFrame, id_col: str, seen: pd.Series, vocab: dict[str, Any]
            ) -> FeatureTable:
    """Encode ``table`` plus a featureless row per id in ``seen`` it lacks; rows sorted by id.

    Ids and values the checkpoint's vocabulary never saw map to the unknown index 0.
    """
    known = pd.Index(table[id_col].astype("string"))
    new = pd.Index(pd.unique(seen.astype("string"))).difference(known)
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


def _user_rows(world: pd.DataFrame, sel: Selection, items: FeatureTable, last: int
               ) -> tuple[Ragged, Ragged]:
    """(support: each user's interactions in time order, the latest ``last`` for dynamic
    users; history: the distinct items each user interacted with, to be masked)."""
    n = len(sel.user_ids)
    pos = pd.Index(sel.user_ids).get_indexer(world["user_id"])
    keep = pos >= 0
    p = pos[keep]
    item = items.index_of(world["item_id"][keep])
    rating = world["rating"].to_numpy(np.float32)[keep]
    order = np.lexsort((item, world["timestamp"].to_numpy()[keep], p))
    p, item, rating = p[order], item[order], rating[order]
    counts = np.bincount(p, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)])
    within = np.arange(len(p)) - starts[p]
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


def publish(target: Path, table: pa.Table, manifest: dict[str, Any]) -> None:
    """Write the batch into a temporary folder beside ``target``, then rename it into place.

    The folders are exchanged in one atomic syscall (:func:`metarec.io.swap_dir`), so a crash
    or SIGKILL at any instant leaves either no batch or the previous complete one (plus a
    hidden temporary folder at worst, removed by the next run), never a half-written one.
    """
    with atomic_dir(target) as tmp:
        write_parquet(table, tmp / RECS)
        manifest = {**manifest, "parquet_sha256": sha256_file(tmp / RECS)}
        write_json(manifest, tmp / MANIFEST)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --------------------------------------------------------------------------------------------
# verify-batch


def verify(batch_dir: str | Path) -> dict[str, Any]:
    """Rebuild ``batch_dir`` from its manifest and compare bytes; raise :class:`VerifyError`.

    Checks, in order: the manifest's params hash, the model and input files' sha256 (and
    that no landing file dated on or before the as-of date appeared or vanished), then the
    rebuilt Parquet against the batch's, then the rebuilt manifest against the batch's (all
    but ``git_commit``, which moves with every commit). Returns the manifest on success.
    """
    batch_dir = Path(batch_dir)
    if not (batch_dir / MANIFEST).is_file() or not (batch_dir / RECS).is_file():
        raise VerifyError(f"{batch_dir}: not a batch ({MANIFEST} or {RECS} missing)")
    manifest = read_json(batch_dir / MANIFEST)
    try:
        params = parse_params({"score": manifest["params"]}).score
    except (KeyError, ParamsError) as exc:
        raise VerifyError(f"{batch_dir / MANIFEST}: unreadable params: {exc}") from exc
    if params_hash(params) != manifest.get("params_hash"):
        raise VerifyError(f"{batch_dir / MANIFEST}: params do not match their recorded hash "
                          "(manifest edited?)")
    changed = _changed_inputs(manifest, params)
    if changed:
        raise VerifyError(
            "cannot rebuild: inputs changed since the batch was written:\n  "
            + "\n  ".join(changed)
            + "\nrestore them with `dvc pull` (tracked data and models), or `dvc repro` to "
              "rebuild them from their sources, then verify again")
    with tempfile.TemporaryDirectory(prefix="metarec-verify-") as tmp:
        rebuilt = run(params, manifest["validated_dir"], manifest["models_dir"], tmp,
                      manifest["as_of"])
        same = (rebuilt / RECS).read_bytes() == (batch_dir / RECS).read_bytes()
        new_sha = sha256_file(rebuilt / RECS)
        again = read_json(rebuilt / MANIFEST)
    if not same:
        current = sha256_file(batch_dir / RECS)
        if current != manifest.get("parquet_sha256"):
            why = (f"{batch_dir / RECS} was modified after it was written (sha256 {current}, "
                   f"manifest records {manifest.get('parquet_sha256')})")
        else:
            why = (f"the rebuild gives different bytes (sha256 {new_sha}): code or environment "
                   f"changed (batch written at commit {manifest.get('git_commit')}, now "
                   f"{_git_commit()}; torch {manifest.get('torch_version')}, now "
                   f"{torch.__version__})")
        raise VerifyError(f"{batch_dir}: not reproducible: {why}")
    differ = sorted(k for k in set(manifest) | set(again)
                    if k != "git_commit" and manifest.get(k) != again.get(k))
    if differ:
        raise VerifyError(f"{batch_dir / MANIFEST}: the rebuild records different "
                          f"{', '.join(differ)} (manifest edited?)")
    return manifest


def _changed_inputs(manifest: dict[str, Any], params: ScoreParams) -> list[str]:
    problems = []
    recorded = {**manifest["inputs"], manifest["model"]: manifest["model_sha256"]}
    for path, sha in recorded.items():
        if not Path(path).is_file():
            problems.append(f"{path}: missing")
        elif sha is None or sha256_file(path) != sha:
            problems.append(f"{path}: sha256 {sha256_file(path)} != recorded {sha}")
    landing = {str(p) for p in landing_files(params.landing_dir, parse_as_of(params.as_of))}
    tables = {str(Path(manifest["validated_dir"]) / f"{n}.parquet") for n in TABLES}
    for path in sorted(landing - set(manifest["inputs"]) - tables):
        problems.append(f"{path}: landing file dated on or before the as-of date appeared")
    return problems
