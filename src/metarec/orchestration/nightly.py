"""What the nightly flow decides beyond the score stage: which night, whether its data is there,
and how its batch becomes a DVC-tracked output.

- The night (``prefect.clock``): ``wall`` scores yesterday (UTC); ``replay`` scores the day
  after the latest batch (the first: ``prefect.replay_start`` or ``score.as_of``), so a served
  deployment on a historical log (MovieLens) produces a new real batch on every scheduled run;
  ``auto`` replays movielens and synthetic sources.
- A night whose landing file is missing or empty fails the run with an artifact naming the
  day, never a silent empty batch.
- The batch of ``score.as_of`` is the ``score`` stage's output (``dvc commit score``); any other
  night's batch is added to DVC on its own (``dvc add``), so ``dvc push`` keeps every batch.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from metarec.config import Params
from metarec.data.landing import landing_format
from metarec.data.sources.table import read_log
from metarec.errors import DataError
from metarec.orchestration.stages import stage_env
from metarec.scoring.world import landing_files, parse_as_of

REPLAYED = ("movielens-100k", "movielens-1m", "movielens-latest", "synthetic")


class MissingDay(DataError):
    """The night's landing file is missing or empty."""


def clock_of(params: Params) -> str:
    clock = params.prefect.clock
    if clock == "auto":
        return "replay" if params.ingest.source in REPLAYED else "wall"
    return clock


def next_night(params: Params, batches: Path, today: dt.date | None = None) -> str:
    """The night a run without an explicit date scores (see the module docstring)."""
    if clock_of(params) == "wall":
        return ((today or dt.datetime.now(dt.UTC).date()) - dt.timedelta(days=1)).isoformat()
    done = sorted(p.name for p in batches.glob("????-??-??") if (p / "manifest.json").is_file())
    if done:
        return (parse_as_of(done[-1]) + dt.timedelta(days=1)).isoformat()
    start = params.prefect.replay_start or params.score.as_of
    return parse_as_of(start).isoformat()


def check_landing(params: Params, day: str) -> None:
    """Raise :class:`MissingDay` when a landing folder is configured but holds no rows for
    ``day`` (the folder's naming rules are the scoring world's: :func:`landing_files`; the
    file is read like the log it extends, so an unreadable one fails here with
    :class:`DataError`, saying what it is)."""
    folder = params.score.landing_dir
    if folder is None:
        return
    today = [f for f in landing_files(folder, parse_as_of(day)) if f.stem == day]
    if not today:
        raise MissingDay(f"no landing file for {day} (expected {day}.parquet or {day}.csv)",
                         file=str(folder))
    if today[0].stat().st_size == 0:
        raise MissingDay(f"file is empty (0 bytes): the landing file for {day} holds nothing",
                         file=str(today[0]))
    fmt = landing_format(params.ingest.source, params.ingest.table)
    if read_log(today[0], fmt, allow_empty=True).empty:
        raise MissingDay(f"the landing file for {day} holds no rows (a header only)",
                         file=str(today[0]))


def track_batch(root: Path, batch: Path, params: Params) -> str:
    """Record the batch in DVC: ``dvc commit score`` for the score stage's own night, ``dvc
    add`` for any other; returns the command run."""
    dvc = str(Path(sys.executable).parent / "dvc")
    if batch.name == params.score.as_of:
        cmd = [dvc, "commit", "--force", "--quiet", "score"]
    else:
        cmd = [dvc, "add", "--quiet", str(batch.relative_to(root))]
    subprocess.run(cmd, cwd=root, env=stage_env(), check=True, capture_output=True,
                   text=True)
    return " ".join(["dvc", *cmd[1:]])
