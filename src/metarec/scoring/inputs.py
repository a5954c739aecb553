"""What one nightly batch is built from, resolved and checked (:class:`Inputs`).

:func:`resolve` fills in the as-of date, checks the validated tables and reads what
evaluation chose (``metrics/selection.json``): the model (``score.model: auto``), the seed
whose fit serves (``score.seed: auto``) and that fit's test-time inner steps.
:func:`check_day` reads and validates the landing files the batch reads
(:func:`metarec.data.landing.check_landing`, the validate stage's rules under
``validate.policy``); a night whose own file had rows and kept none is a failed night
(:class:`NightRejected`), not an empty batch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from metarec.checkpoint import read_checkpoint
from metarec.config import ScoreParams, TableSource, ValidateParams
from metarec.data.landing import CANONICAL, LandingCheck, check_landing
from metarec.data.validation import TABLES
from metarec.errors import DataError
from metarec.io import read_json, write_json
from metarec.scoring.world import day_end, landing_files, parse_as_of

QUARANTINED = "quarantine.parquet"
LANDING_ROWS, LANDING_VERDICT = "landing.parquet", "landing.json"   # in :attr:`Inputs.checked`


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
