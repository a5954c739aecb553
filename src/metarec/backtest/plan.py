"""The backtest's window and what every night of it shares (:class:`Plan`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from metarec import algorithms
from metarec.backtest import retrain
from metarec.config import BacktestParams, ScoreParams, TableSource, ValidateParams
from metarec.errors import ParamsError
from metarec.eval.choices import best_on_validation
from metarec.io import read_json, read_parquet
from metarec.scoring.inputs import landing_check, resolve
from metarec.scoring.world import DAY, day_end, landing_files, parse_as_of


def nights(p: BacktestParams) -> list[str]:
    """The replayed nights, ``from_date`` to ``to_date`` every ``every_days`` (inclusive)."""
    if p.from_date is None or p.to_date is None:
        raise ParamsError("backtest.from_date and backtest.to_date: set both (YYYY-MM-DD)")
    first, last = parse_as_of(p.from_date), parse_as_of(p.to_date)
    if last < first:
        raise ParamsError(f"backtest.to_date {last} is before backtest.from_date {first}")
    n = (last - first).days // p.every_days + 1
    return [(first + dt.timedelta(days=i * p.every_days)).isoformat() for i in range(n)]


def trained_until(episodes_dir: str | Path) -> int:
    """The first second after every interaction the models were trained or tuned on (the
    meta-train and validation task rows and the training history of the episodes)."""
    folder = Path(episodes_dir)
    tasks = read_parquet(folder / "episodes.parquet")
    seen = tasks.loc[tasks["split"].isin(["train", "val"]), "timestamp"]
    hist = read_parquet(folder / "history.parquet")["timestamp"]
    return int(max(seen.max(), hist.max() if len(hist) else seen.max())) + 1


def check_window(days: list[str], p: BacktestParams, trained_end: int, log_end: int) -> None:
    """Refuse nights whose judged days overlap training, or run past the end of the log."""
    first_judged = day_end(parse_as_of(days[0]))
    if first_judged < trained_end:
        last_day = dt.datetime.fromtimestamp(trained_end - 1, dt.UTC).date()
        raise ParamsError(
            f"backtest.from_date {days[0]}: the window overlaps the training period (the "
            f"models saw interactions up to {last_day}); start the window on {last_day} or "
            "later")
    horizon_end = day_end(parse_as_of(days[-1])) + p.horizon_days * DAY
    if horizon_end > log_end:
        last_day = dt.datetime.fromtimestamp(log_end - 1, dt.UTC).date()
        raise ParamsError(
            f"backtest.to_date {days[-1]}: its {p.horizon_days}-day horizon runs past the end "
            f"of the log ({last_day}); end the window {p.horizon_days} days before it")


def peers(selection: dict[str, Any] | None, model: str) -> str | None:
    """The non-meta model with the highest validation nDCG other than ``model``."""
    scores = (selection or {}).get(f"val_{(selection or {}).get('metric', '')}", {})
    baselines = set(algorithms.names("baseline")) - {model}
    return best_on_validation({n: v for n, v in scores.items() if n in baselines})


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every night of a backtest shares."""

    params: BacktestParams
    score: ScoreParams           # top_k = k, dynamic = warm, as_of set per night
    validated_dir: str
    models_dir: str
    selection: str | None
    nights: list[str]
    model: str
    baseline: str | None
    threshold: float
    training: retrain.Training | None = None   # what retraining needs
    validate: ValidateParams = ValidateParams()   # the rules landing rows go through
    landing_format: TableSource = TableSource()

    def resolve(self, day: str, model: str | None = None) -> Any:
        """The batch inputs of ``day`` (:func:`metarec.scoring.batch.resolve`) served by
        ``model`` (default: the backtested one) with the checkpoints of :meth:`models_for`;
        retrained models serve from the seed they were retrained with."""
        models = self.models_for(day)
        inputs = resolve(self.score, self.validated_dir, models, day, self.selection,
                         self.validate, self.landing_format)
        name = model or self.model
        steps = (inputs.selection or {}).get("inner_steps", {}).get(str(inputs.seed), {})
        inputs = dataclasses.replace(inputs, model=name, steps=steps.get(name))
        if models != self.models_dir and self.training is not None:
            inputs = dataclasses.replace(inputs, seed=self.training.train.seeds[0])
        return inputs

    def models_for(self, day: str) -> str:
        """The checkpoints that serve ``day``: params' models, or those retrained on the log
        up to the night's retrain point."""
        if self.params.retrain_every_days is None or self.training is None:
            return self.models_dir
        at = retrain.point(self.nights[0], day, self.params.retrain_every_days)
        served = (self.model,) if self.baseline is None else (self.model, self.baseline)
        return str(retrain.models_at(self.training, self.validated_dir, served, at,
                                     self.params.retrain_cache))


def plan(p: BacktestParams, score: ScoreParams, training: retrain.Training | None,
         validated_dir: str | Path, episodes_dir: str | Path, models_dir: str | Path,
         selection: str | Path | None, validate: ValidateParams | None = None,
         landing_format: TableSource | None = None) -> Plan:
    """Check the window against training and the log; resolve the model and its peers."""
    days = nights(p)
    if p.retrain_every_days is not None and training is None:
        raise ParamsError("backtest.retrain_every_days needs the episodes, model and train "
                          "params")
    score = dataclasses.replace(score, top_k=p.k, dynamic=p.warm)
    fmt = landing_format or TableSource()
    inputs = resolve(score, validated_dir, models_dir, days[0], selection, validate, fmt)
    log = read_parquet(inputs.tables["interactions"])
    stamps = [log["timestamp"]]
    landing = landing_files(score.landing_dir, dt.date.max)
    if landing:      # the landing rows that pass validation extend the log
        stamps.append(landing_check(inputs, landing).kept.column("timestamp").to_pandas())
    # retrained models see nothing after their retrain point: only the log's end can bind
    trained_end = 0 if p.retrain_every_days is not None else trained_until(episodes_dir)
    check_window(days, p, trained_end, max(int(s.max()) + 1 for s in stamps if len(s)))
    vocab = read_json(Path(episodes_dir) / "vocab.json")
    return Plan(p, score, str(validated_dir), str(models_dir),
                str(selection) if selection is not None else None, days, inputs.model,
                peers(inputs.selection, inputs.model), float(vocab["rating"]["relevant"]),
                training, inputs.validate, fmt)
