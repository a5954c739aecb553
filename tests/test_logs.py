"""Logs a person can read in the Prefect UI: one record per event (never a line rich cut at 80
columns, never a second level inside a message), and none of DVC's git hints."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from metarec.orchestration.stages import _log_lines, stage_env
from metarec.progress import PlainFormatter, parse_record, progress
from metarec.workers import Workers

URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _collector() -> tuple[logging.Logger, Records]:
    log = logging.getLogger(f"test-logs-{id(object())}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = Records()
    log.addHandler(handler)
    return log, handler


def test_a_piped_stage_logs_one_whole_record_per_event() -> None:
    """The real CLI logging setup with its output piped, as under a Prefect task: a long line
    with a URL, a multi-line message, a Python warning and a progress line each come back as
    one record at their level. Planted: rich's handler kept off a terminal put its timestamp
    and level inside the message (and, without COLUMNS, cut the line at 80): this failed."""
    script = textwrap.dedent(f"""
        import logging, warnings
        from metarec.cli import _setup
        from metarec.progress import progress
        _setup(verbose=False)
        log = logging.getLogger("metarec.ingest")
        log.info("downloading %s into a cache folder whose name is long enough to wrap", {URL!r})
        log.warning("two lines:\\nthe second")
        warnings.warn("a warning with its source line")
        with progress("evaluate", 4, every_s=0.0) as bar:
            bar.advance(1, step="test")
        print("Running stage 'ingest':")
    """)
    out = subprocess.run([sys.executable, "-c", script], env=stage_env(), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                         check=True).stdout
    log, seen = _collector()
    list(_log_lines(out.splitlines(keepends=True), "ingest", log))
    messages = [(r.levelno, r.getMessage()) for r in seen.records]
    assert messages[0] == (logging.INFO, f"ingest: metarec.ingest: downloading {URL} into a "
                                         "cache folder whose name is long enough to wrap")
    assert messages[1] == (logging.WARNING, "ingest: metarec.ingest: two lines:\nthe second")
    assert messages[2][0] == logging.WARNING and "py.warnings" in messages[2][1] \
        and "a warning with its source line" in messages[2][1]
    assert [m for _, m in messages[3:]] == [
        "ingest: metarec.progress: evaluate: 1/4 (step test), 0 s, ~0 s left",
        "ingest: metarec.progress: evaluate: 1/4 (step test), 0 s, ~0 s left",
        "ingest: Running stage 'ingest':"]


def test_one_line_records_round_trip() -> None:
    record = logging.LogRecord("metarec.x", logging.ERROR, __file__, 1,
                               "a\\nb: C:\\new\nsecond line", None, None)
    line = PlainFormatter(one_line=True).format(record)
    assert "\n" not in line
    assert parse_record(line) == (logging.ERROR, "metarec.x: a\\nb: C:\\new\nsecond line")
    assert parse_record("Running stage 'train':") is None


DVC_OUTPUT = """Running stage 'train':
> metarec train --episodes data/episodes --out models
WARNING: 'src/metarec/x/__init__.py' is empty.
INFO metarec.progress: train maml seed 0: 100/500, 15 s, ~60 s left
Updating lock file 'dvc.lock'

To track the changes with git, run:

\tgit add dvc.lock

To enable auto staging, run:

\tdvc config core.autostage true
Use `dvc push` to send your updates to remote storage.
"""


def test_dvc_git_hints_are_left_out_and_levels_kept() -> None:
    """Planted: with the hint filter off, 'git add dvc.lock' reached the run log: failed."""
    log, seen = _collector()
    passed = list(_log_lines(DVC_OUTPUT.splitlines(keepends=True), "train", log))
    assert "".join(passed) == DVC_OUTPUT            # the tail for errors keeps everything
    assert [(r.levelname, r.getMessage()) for r in seen.records] == [
        ("INFO", "train: Running stage 'train':"),
        ("INFO", "train: > metarec train --episodes data/episodes --out models"),
        ("WARNING", "train: WARNING: 'src/metarec/x/__init__.py' is empty."),
        ("INFO", "train: metarec.progress: train maml seed 0: 100/500, 15 s, ~60 s left"),
        ("INFO", "train: Updating lock file 'dvc.lock'"),
        ("INFO", "train: Use `dvc push` to send your updates to remote storage.")]


def _log_in_worker(shared: object, text: str) -> str:
    logging.getLogger("metarec.progress").info(text)
    return text


def test_a_worker_record_reaches_the_parent_without_a_second_level() -> None:
    """Planted: the workers' queue handler with basicConfig's format sent
    'INFO:metarec.progress:evaluate ...' as the message: failed."""
    seen = Records()
    root = logging.getLogger()
    old = root.handlers[:], root.level
    root.handlers, root.level = [seen], logging.INFO
    try:
        with Workers(None, 2, 1) as pool:
            pool.map(_log_in_worker, [("evaluate: 3/10",), ("evaluate: 4/10",)])
    finally:
        root.handlers, root.level = old
    got = sorted(r.getMessage() for r in seen.records if r.name == "metarec.progress")
    assert got == ["evaluate: 3/10", "evaluate: 4/10"]


def test_progress_lines_say_what_is_left(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="metarec.progress"), \
            progress("train", 4, every_s=0.0) as bar:
        bar.advance(2, val=0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("train: 2/4 (val 0.5000), ") and lines[0].endswith(" s left")
