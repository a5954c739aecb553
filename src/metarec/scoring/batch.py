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
  version, model and input file sha256s, row and user counts, the Parquet's sha256, and the
  verdict on the landing files read (``landing``: rows in, kept and quarantined per file, every
  rule with its Great Expectations twin). Nothing depends on the wall clock, so a rerun gives
  byte-identical files (same machine and threads).
- ``quarantine.parquet``: the landing rows set aside, with file, row and reason (always
  written; empty when nothing was set aside).

The landing files are read and validated once per batch (:func:`check_day`, the validate
stage's rules under ``validate.policy``); a night whose own file has rows, every one of them
quarantined, is a failed night (:class:`NightRejected`), not an empty batch.

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
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import metarec
from metarec.checkpoint import from_checkpoint, read_checkpoint
from metarec.config import ScoreParams, TableSource, ValidateParams, params_hash, to_dict
from metarec.data.encoding import FeatureTable, encode_entity
from metarec.data.landing import CANONICAL, QUARANTINE, LandingCheck, check_landing
from metarec.data.tasks import EpisodeData
from metarec.errors import DataError, MetarecError
from metarec.io import (
    arrow_frame,
    atomic_dir,
    md5_file,
    project_lock,
    read_json,
    read_parquet,
    sha256_file,
    write_json,
    write_parquet_stream,
)
from metarec.progress import progress
from metarec.scoring.engine import Ragged, recommend_chunk, task_batch
from metarec.scoring.world import World, day_end, landing_files, parse_as_of, runs

log = logging.getLogger("metarec.score")
RECS, MANIFEST, QUARANTINED = "recommendations.parquet", "manifest.json", "quarantine.parquet"
LANDING_ROWS, LANDING_VERDICT = "landing.parquet", "landing.json"   # in :attr:`Inputs.checked`
TABLES = ("interactions", "users", "items")
USER_ID = "user_id"
SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                    ("score", pa.float32()), ("predicted_rating", pa.float32()),
                    ("because", pa.string()), ("kind", pa.string())])


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What one batch is built from: resolved params, tables, the model and why it."""

    params: ScoreParams            # as_of filled in
    validated_dir: str
    models_dir: str                # the trained models, one folder per seed (seed<S>/)
    model: str                     # the algorithm scored with (``auto`` resolved)
    selection: dict[str, Any] | None = None   # evaluate's record (what it chose)
    selection_path: str | None = None
    seed: int = 0                  # the seed whose fit serves (``score.seed``, ``auto`` resolved)
    steps: dict[str, int] | None = None   # test-time inner steps evaluate chose (rate, rank)
    validate: ValidateParams = ValidateParams()   # the rules every landing row goes through
    landing_format: TableSource = CANONICAL       # how landing files are read
    checked: str | None = None     # folder of the landing verdict (:func:`check_day`)

    @property
    def tables(self) -> dict[str, Path]:
        return {n: Path(self.validated_dir) / f"{n}.parquet" for n in TABLES}

    @property
    def model_path(self) -> Path:
        return Path(self.models_dir) / f"seed{self.seed}" / f"{self.model}.pt"

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

    def landing_verdict(self) -> dict[str, Any] | None:
        """The landing files' validation summary (None: no landing file was read)."""
        if self.checked is None:
            return None
        return read_json(Path(self.checked) / LANDING_VERDICT)

    def landing_rows(self) -> pa.Table | None:
        """The landing rows that passed validation (None: no landing file was read)."""
        if self.checked is None:
            return None
        return pq.read_table(Path(self.checked) / LANDING_ROWS)

    @property
    def end(self) -> int:
        return day_end(parse_as_of(self.params.as_of))


def resolve(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
            as_of: str | None, selection: str | Path | None = None,
            validate: ValidateParams | None = None, landing_format: TableSource = CANONICAL
            ) -> Inputs:
    """What a batch is built from, checked: params with the as-of date filled in, the
    validated tables, and what evaluation chose (``selection``, written by the evaluate
    stage): the model (``score.model: auto``), the seed whose fit serves (``score.seed:
    auto``) and that fit's test-time inner steps, so the batch scores users exactly as the
    evaluation measured. Shared by ``metarec score``, the nightly flow and the backtest."""
    day = parse_as_of(as_of or params.as_of)
    params = dataclasses.replace(params, as_of=day.isoformat())
    for name in TABLES:
        path = Path(validated_dir) / f"{name}.parquet"
        if not path.is_file():
            raise DataError("missing; run `dvc repro validate` (or `dvc pull`)", file=str(path))
    chosen = read_json(selection) if selection is not None and Path(selection).is_file() \
        else None
    if params.model == "auto":
        if chosen is None:
            raise DataError("score.model is auto but the evaluation's choice is missing; run "
                            "`dvc repro evaluate` (or set score.model to a trained model)",
                            file=str(selection))
        if not chosen.get("model"):
            raise DataError("names no model", file=str(selection))
    model = chosen["model"] if params.model == "auto" else params.model   # type: ignore[index]
    seed = served_seed(params, chosen, model, Path(models_dir))
    steps = ((chosen or {}).get("inner_steps", {}).get(str(seed), {}).get(model))
    return Inputs(params, str(validated_dir), str(models_dir), model, chosen,
                  str(selection) if chosen is not None else None, seed,
                  dict(steps) if steps is not None else None,
                  validate or ValidateParams(), landing_format)


def served_seed(params: ScoreParams, chosen: dict[str, Any] | None, model: str,
                models_dir: Path) -> int:
    """``score.seed``, or for ``auto`` the seed evaluate chose for ``model`` (its fit with the
    best validation score; without a choice, the first seed trained)."""
    if params.seed != "auto":
        return int(params.seed)
    by_model = (chosen or {}).get("seeds", {})
    if model in by_model:
        return int(by_model[model])
    seeds = sorted(int(p.name.removeprefix("seed")) for p in models_dir.glob("seed*")
                   if p.name.removeprefix("seed").isdigit())
    if not seeds:
        raise DataError("no trained models (expected seed<S>/ folders); run `dvc repro train`",
                        file=str(models_dir))
    return seeds[0]


def landing_check(inputs: Inputs, files: list[Path]) -> LandingCheck:
    """:func:`check_landing` of ``files`` against the inputs' validated tables: the label
    scale of their schema (the checkpoint's, for hand-assembled inputs without one) and the
    catalogue of their item table."""
    schema = Path(inputs.validated_dir) / "schema.json"
    rating = (read_json(schema) if schema.is_file()
              else read_checkpoint(inputs.model_path)["vocab"]).get("rating", {})
    items = pq.read_table(inputs.tables["items"], columns=["item_id"]).column("item_id")
    return check_landing(files, inputs.landing_format, rating, items.combine_chunks(),
                         inputs.validate)


class NightRejected(DataError):
    """The night's own landing file has rows and validation set every one of them aside."""

    def __init__(self, message: str, *, file: str, verdict: dict[str, Any]) -> None:
        super().__init__(message, file=file)
        self.verdict = verdict


def check_day(inputs: Inputs, folder: str | Path) -> Inputs:
    """Read and validate every landing file the batch reads (:func:`check_landing`), write
    the rows kept, the verdict and the rows set aside into ``folder``, and return the inputs
    that point at them. A night whose own file had rows and kept none raises
    :class:`NightRejected`. Without landing files there is nothing to check."""
    files = inputs.landing
    if not files:
        return dataclasses.replace(inputs, checked=None)
    check = landing_check(inputs, files)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(check.kept, folder / LANDING_ROWS)
    pq.write_table(check.quarantine, folder / QUARANTINED)
    write_json(check.summary, folder / LANDING_VERDICT)
    night = check.night(files[-1].name) if files[-1].stem == inputs.params.as_of else None
    if night is not None and night["rows_in"] and not night["rows_kept"]:
        reasons = check.quarantine.to_pandas()
        reasons = reasons[reasons["file"] == files[-1].name]["reason"].value_counts()
        raise NightRejected(
            f"every one of the night's {night['rows_in']} rows was quarantined ("
            + "; ".join(f"{n} x {r}" for r, n in reasons.head(3).items())
            + "); no batch was written for this night: fix the file and score it again",
            file=str(files[-1]), verdict=check.summary)
    return dataclasses.replace(inputs, checked=str(folder))


def scoring_lock(out_root: str | Path, what: str = "metarec score"
                 ) -> contextlib.AbstractContextManager[None]:
    """The one lock on ``out_root``: a second scoring run of the project fails fast."""
    root = Path(out_root)
    return project_lock(root.parent / f".{root.name}.lock", f"{what} (out {out_root})")


def build_batch(params: ScoreParams, validated_dir: str | Path, models_dir: str | Path,
                out_root: str | Path, as_of: str | None = None,
                selection: str | Path | None = None, validate: ValidateParams | None = None,
                landing_format: TableSource = CANONICAL) -> Path:
    """Score the users of ``as_of`` (default ``params.as_of``); returns the batch folder."""
    inputs = resolve(params, validated_dir, models_dir, as_of, selection, validate,
                     landing_format)
    with scoring_lock(out_root), tempfile.TemporaryDirectory(prefix="metarec-day-") as day:
        inputs = check_day(inputs, day)
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
        "model": _rel(model_path), "model_name": inputs.model, "seed": inputs.seed,
        "inner_steps": inputs.steps,
        "selection": inputs.selection, "selection_path":
            _rel(inputs.selection_path) if inputs.selection_path else None,
        "model_sha256": sha256_file(model_path) if model_path.is_file() else None,
        "inputs": {_rel(p): sha256_file(p) for p in inputs.inputs},
        # DVC's content addresses (md5 of the bytes): verify-batch restores the files from the
        # DVC cache or remote by these, whatever dvc.lock says now
        "dvc_md5": {_rel(p): md5_file(p) for p in read},
        "git_commit": _git_commit(), "metarec_version": metarec.__version__,
        "torch_version": torch.__version__, **stats,
        # how landing rows were read and checked (verify-batch rebuilds with the same) and
        # the verdict: rows in = kept + quarantined, per file and rule
        "landing_params": {"validate": to_dict(inputs.validate),
                           "format": to_dict(inputs.landing_format)},
        "landing": inputs.landing_verdict(),
    }
    target = Path(out_root) / params.as_of
    quarantine = (pq.read_table(Path(inputs.checked) / QUARANTINED)
                  if inputs.checked is not None else QUARANTINE.empty_table())
    publish(target, parts, manifest, quarantine)
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
    blob = read_checkpoint(model_path)
    vocab = blob["vocab"]
    check_compatible(vocab, tables["users"].parent / "schema.json", model_path)
    # the run's users and their interactions, sorted by user, live here until it ends (a
    # stream dropped unread is cleaned up when collected)
    tmp = tempfile.TemporaryDirectory(prefix="metarec-score-")
    folder = Path(tmp.name)
    try:
        if inputs.landing and inputs.checked is None:
            raise RuntimeError("landing files are read only after check_day validated them")
        with World(tables["interactions"], inputs.landing_rows(), inputs.end,
                   params.engine_memory_mb) as world:
            counts = world.choose(params.max_interactions, params.active_days,
                                  params.dynamic)
            items = _encode(read_parquet(tables["items"]), "item_id", world.item_ids(),
                            vocab["items"])
            stats = {**counts, "catalogue_items": len(items),
                     "world_interactions": world.count(), "algorithm": blob["algorithm"]}
            n, size = counts["users"], params.chunk_users
            todo = chunks if chunks is not None else range(-(-n // size))
            bounds = [min(c * size, n) for c in range(todo.start, todo.stop + 1)]
            item_ids = pa.array(items.ids, pa.string())
            catalogue = pa.table({"item_id": item_ids, "idx": pa.array(np.arange(len(items)))})
            users_file, rows_file = world.export(folder, tables["users"], catalogue,
                                                 bounds[0], bounds[-1])
        # the engine is closed: its memory is free before the scoring starts
        users = _encode_users(users_file, vocab["users"])   # this run's users, in pos order
    except BaseException:
        tmp.cleanup()
        raise
    if not todo:
        tmp.cleanup()
        return iter(()), stats
    data = EpisodeData(tasks=pd.DataFrame(), users=users, items=items, vocab=vocab)
    predictor = from_checkpoint(blob, data, model_path)
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
                                       *support.padded(0, b - a))
                    lengths = np.diff(history.starts)
                    seen_rows = torch.from_numpy(np.repeat(np.arange(b - a), lengths))
                    got = recommend_chunk(predictor, batch, chunk_no, seen_rows,
                                          torch.from_numpy(history.items), params.top_k)
                    yield _chunk_table(*got, who["user_id"], who["kind"], item_ids)
                    tick.advance(1, users=b)
        finally:
            tmp.cleanup()

    return rows(), stats


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


def _sweep(target: Path) -> None:
    """Remove temporary folders a killed run may have left beside the batch."""
    for stale in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)


def publish(target: Path, parts: Iterable[pa.Table], manifest: dict[str, Any],
            quarantine: pa.Table | None = None) -> None:
    """Stream the rows into a temporary folder beside ``target``, then rename it into place.

    The folders are exchanged in one atomic syscall (:func:`metarec.io.swap_dir`), so a crash
    or SIGKILL at any instant leaves either no batch or the previous complete one (plus a
    hidden temporary folder at worst, removed by the next run), never a half-written one.
    ``quarantine``: the landing rows set aside (written empty when None).
    """
    with atomic_dir(target) as tmp:
        rows = write_parquet_stream(parts, tmp / RECS, SCHEMA)
        write_parquet_stream([quarantine if quarantine is not None
                              else QUARANTINE.empty_table()], tmp / QUARANTINED, QUARANTINE)
        manifest = {**manifest, "rows": rows, "parquet_sha256": sha256_file(tmp / RECS),
                    "quarantine_sha256": sha256_file(tmp / QUARANTINED)}
        write_json(manifest, tmp / MANIFEST)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


