"""Models retrained inside a backtest window (``backtest.retrain_every_days``).

Without retraining a backtest serves every night with the models trained before the window.
With it, the nights from a retrain point on are served by models trained on the log as it stood
at the end of that night: the validated interactions dated before it go through the real
``episodes`` and ``train`` stages (first seed only; the served model, what it requires, and
the baselines), so no model ever sees a later interaction. Retrain points are the window's
first night and every ``retrain_every_days`` after it.

Trained models are cached by content (the validated files' md5s, the params that shape
training, the retrain point and metarec's own source) in ``backtest.retrain_cache`` (in the
project, not the system temp folder: one project's runs share it, nothing else does), so the
Prefect flow's night subflows and a rerun share them and a change of any of those trains
afresh. Each is trained in a scratch folder (removed after, or by the next run if this one
was killed) and swapped into the cache whole.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

from metarec import algorithms
from metarec.config import EpisodesParams, ModelParams, TrainParams
from metarec.data.episodes import build
from metarec.fitting import fit_models
from metarec.io import md5_file, read_parquet, scratch_dir, write_parquet
from metarec.scoring.world import day_end, parse_as_of

TABLES = ("interactions.parquet", "users.parquet", "items.parquet", "schema.json")


@dataclasses.dataclass(frozen=True)
class Training:
    """The params sections that shape a retrained model."""

    episodes: EpisodesParams
    model: ModelParams
    train: TrainParams


def point(first_night: str, day: str, every_days: int) -> str:
    """The latest retrain point at or before ``day`` (the first night, then every N days)."""
    first = dt.date.fromisoformat(first_night)
    gap = (dt.date.fromisoformat(day) - first).days
    return str(first + dt.timedelta(days=gap - gap % every_days))


def _needed(params: Training, served: tuple[str, ...]) -> tuple[str, ...]:
    """The served models and every algorithm they require, in params order."""
    need = {*served, *(r for name in served for r in algorithms.requirements(name))}
    return tuple(a for a in params.train.algorithms if a in need)


def _key(params: Training, validated_dir: Path, served: tuple[str, ...], at: str) -> str:
    src = Path(algorithms.__file__).resolve().parents[1]
    code = hashlib.sha256()
    for f in sorted(src.rglob("*.py")):
        code.update(f.relative_to(src).as_posix().encode() + f.read_bytes())
    blob = {"inputs": {n: md5_file(validated_dir / n) for n in TABLES
                       if (validated_dir / n).exists()},
            "episodes": dataclasses.asdict(params.episodes),
            "model": dataclasses.asdict(params.model),
            "train": dataclasses.asdict(params.train), "served": list(served), "at": at,
            "code": code.hexdigest()}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def models_at(params: Training, validated_dir: str | Path, served: tuple[str, ...], at: str,
              cache: str | Path) -> Path:
    """The models folder (one ``seed<S>`` inside: the first of ``train.seeds``) of models
    trained on the log before the end of night ``at``; trained on first use, then read from
    ``cache``."""
    validated_dir = Path(validated_dir)
    root = Path(cache)
    folder = root / _key(params, validated_dir, served, at)[:20]
    seed = params.train.seeds[0]
    out = folder / "models"
    if (out / f"seed{seed}").is_dir():
        return out
    end = day_end(parse_as_of(at))
    with scratch_dir("retrain") as tmp:
        work = Path(tmp)
        for name in TABLES[1:]:
            if (validated_dir / name).exists():
                shutil.copy(validated_dir / name, work / name)
        log = read_parquet(validated_dir / "interactions.parquet")
        write_parquet(log[log["timestamp"].to_numpy() < end], work / "interactions.parquet")
        build(params.episodes, work, work / "episodes")
        tp = dataclasses.replace(params.train, seeds=(seed,),
                                 algorithms=_needed(params, served))
        folder.mkdir(parents=True, exist_ok=True)
        fit_models(params.model, tp, work / "episodes", folder / "models")
    return out


__all__ = ["Training", "models_at", "point"]
