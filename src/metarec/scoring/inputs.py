"""What one nightly batch is built from, resolved and checked (:class:`Inputs`).

:func:`resolve` fills in the as-of date, checks the validated tables and reads what
evaluation chose (``metrics/selection.json``): the model (``score.model: auto``), the seed
whose fit serves (``score.seed: auto``) and that fit's test-time inner steps.
:func:`check_day` reads and validates the landing files the batch reads
(:func:`metarec.data.landing.check_landing`, the validate stage's rules under
``validate.policy``); a night whose own file had rows and kept none is a failed night
(:class:`NightRejected`), not an empty batch. It first pins what the batch reads
(:func:`pin`): the model's bytes copied once (the copy is what scores), every input's
sha256 and md5 taken before it is read, so the manifest names what was read even if a
retrain swaps the model mid-run, and a table replaced mid-run stops the batch
(:func:`check_unchanged`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from metarec import algorithms
from metarec.checkpoint import read_checkpoint
from metarec.config import ScoreParams, TableSource, ValidateParams
from metarec.data import views
from metarec.data.landing import CANONICAL, LandingCheck, check_landing
from metarec.data.validation import TABLES
from metarec.errors import DataError
from metarec.io import file_digests, read_json, write_json
from metarec.scoring.world import day_end, landing_files, parse_as_of

QUARANTINED = "quarantine.parquet"
LANDING_ROWS, LANDING_VERDICT = "landing.parquet", "landing.json"   # in :attr:`Inputs.checked`
MODEL_COPY = "model.pt"                                             # in the pinned folder


@dataclasses.dataclass(frozen=True)
class Read:
    """One file as the batch read it: its digests, and its identity on disk at that moment
    (inode, size, mtime): a file replaced or rewritten since has another."""

    sha256: str
    md5: str
    stat: tuple[int, int, int]


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read_file(path: Path) -> Read:
    """``path``'s digests and identity, its identity taken before its bytes are read."""
    before = _stat(path)
    sha, md5 = file_digests(path)
    return Read(sha, md5, before)


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
    model_copy: str | None = None  # the model's bytes as read when the batch began (:func:`pin`)
    reads: dict[str, Read] = dataclasses.field(default_factory=dict)   # str(path) -> as read

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

    def read(self, path: Path) -> Read:
        """``path`` as the batch read it (:func:`pin`); unpinned inputs: as it is now."""
        return self.reads.get(str(path)) or read_file(path)

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
    if chosen is not None and not isinstance(chosen, dict):
        raise DataError("not an evaluation choice (expected a JSON object)", file=str(selection))
    if params.model == "auto":
        if chosen is None:
            raise DataError("score.model is auto but the evaluation's choice is missing; run "
                            "`dvc repro evaluate` (or set score.model to a trained model)",
                            file=str(selection))
        if not chosen.get("model"):
            raise DataError("names no model", file=str(selection))
    model = chosen["model"] if params.model == "auto" else params.model   # type: ignore[index]
    if not known_model(model):
        raise DataError(f"names the model {model!r}, which is no registered algorithm (known: "
                        f"{', '.join(algorithms.names())}); it would become a file name",
                        file=str(selection if params.model == "auto" else "score.model"))
    seed = served_seed(params, chosen, model, Path(models_dir))
    steps = ((chosen or {}).get("inner_steps", {}).get(str(seed), {}).get(model))
    if steps is not None and not (isinstance(steps, dict) and set(steps) == {"rate", "rank"}
                                  and all(type(v) is int and v >= 0 for v in steps.values())):
        raise DataError(f"inner_steps.{seed}.{model}: {steps!r} is not "
                        "{rate: steps, rank: steps}", file=str(selection))
    return Inputs(params, str(validated_dir), str(models_dir), model, chosen,
                  str(selection) if chosen is not None else None, seed,
                  dict(steps) if steps is not None else None,
                  validate or ValidateParams(), landing_format)


def known_model(name: Any) -> bool:
    """A registered algorithm, or its variant on a known view (``maml~notext``): nothing
    else may become a checkpoint's file name (``../x`` would leave the models folder)."""
    if not isinstance(name, str):
        return False
    base, sep, view = name.partition(views.SEP)
    return base in algorithms.names() and (not sep or view in views.VIEWS)


def served_seed(params: ScoreParams, chosen: dict[str, Any] | None, model: str,
                models_dir: Path) -> int:
    """``score.seed``, or for ``auto`` the seed evaluate chose for ``model`` (its fit with the
    best validation score; without a choice, the first seed trained)."""
    if params.seed != "auto":
        return int(params.seed)
    by_model = (chosen or {}).get("seeds", {})
    if model in by_model:
        seed = by_model[model]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise DataError(f"seeds.{model}: {seed!r} is not a seed (an integer)")
        return seed
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
              else read_checkpoint(inputs.model_path, inputs.model_copy)["vocab"]
              ).get("rating", {})
    items = pq.read_table(inputs.tables["items"], columns=["item_id"]).column("item_id")
    return check_landing(files, inputs.landing_format, rating, items.combine_chunks(),
                         inputs.validate)


class NightRejected(DataError):
    """The night's own landing file has rows and validation set every one of them aside."""

    def __init__(self, message: str, *, file: str, verdict: dict[str, Any]) -> None:
        super().__init__(message, file=file)
        self.verdict = verdict


def pin(inputs: Inputs, folder: str | Path) -> Inputs:
    """What the batch reads, fixed before it is read: the model's bytes copied into
    ``folder`` (read once: the copy scores the batch and its digests go in the manifest),
    every other input's digests and identity (:class:`Read`). Called under the project
    lock, first thing, by every scoring path (:func:`check_day`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    reads = {str(p): read_file(p) for p in inputs.inputs}
    model, copy = inputs.model_path, None
    if model.is_file():
        before = _stat(model)
        blob = model.read_bytes()
        copy = folder / MODEL_COPY
        copy.write_bytes(blob)
        sha, md5 = file_digests(copy)
        reads[str(model)] = Read(sha, md5, before)
    return dataclasses.replace(inputs, model_copy=str(copy) if copy else None, reads=reads)


def check_unchanged(inputs: Inputs) -> None:
    """Raise :class:`DataError` when an input other than the model (which scored from its
    pinned copy) was replaced or rewritten since :func:`pin`: the batch may have read a mix
    of both versions, and its manifest could not say which."""
    for path in inputs.inputs:
        was = inputs.reads.get(str(path))
        now = _stat(path) if path.is_file() else None
        if was is not None and now != was.stat:
            raise DataError("changed while the batch was being scored (another run wrote it "
                            "without the project lock?); no batch was written: score the "
                            "night again", file=str(path))


def check_day(inputs: Inputs, folder: str | Path) -> Inputs:
    """Pin what the batch reads (:func:`pin`), then read and validate every landing file it
    reads (:func:`check_landing`), write the rows kept, the verdict and the rows set aside
    into ``folder``, and return the inputs that point at them. A night whose own file had
    rows and kept none raises :class:`NightRejected`. Without landing files there is nothing
    to check."""
    inputs = pin(inputs, folder)
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
