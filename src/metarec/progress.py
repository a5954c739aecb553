"""Progress on long work, and log records that survive being piped.

``with progress("train maml seed 0", total=800) as bar: bar.advance(1, val=0.71)``. On a
terminal (stderr is a TTY) a rich progress bar shows done / total, the latest facts and the
time left; elsewhere (CI, Prefect task logs, files) a line is logged every ``every_s`` seconds
and at the end, with the same facts and an estimate of the time left.

Off a terminal, log records are plain lines ``LEVEL logger: message`` (:class:`PlainFormatter`),
never rich's columns (which wrap at 80 characters and add a second timestamp). Under a
Prefect task (:data:`RECORDS_ENV` set by the task that runs the stage) each record is exactly
one line, its newlines escaped, so the task turns each line back into one record with its level
(:func:`parse_record`): no record in the UI continues another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("metarec.progress")
EVERY_S = 10.0           # a plain progress line at most this often (and at the end)
RECORDS_ENV = "METAREC_LOG_RECORDS"   # "1": one line per log record, newlines escaped
_RECORD = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.\-]+): (.*)$")


class PlainFormatter(logging.Formatter):
    """``INFO metarec.evaluate: message``; with ``one_line``, a multi-line message (a
    traceback) stays on its line, ``\\`` and newlines escaped (:func:`parse_record` undoes
    it)."""

    def __init__(self, one_line: bool = False) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.one_line = one_line

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.one_line:
            return text
        return text.replace("\\", "\\\\").replace("\r", "").replace("\n", "\\n")


def plain_handler(stream: Any = None) -> logging.Handler:
    """A stderr handler for output that is not a terminal (one line per record under a
    Prefect task, see :data:`RECORDS_ENV`)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(PlainFormatter(one_line=os.environ.get(RECORDS_ENV) == "1"))
    return handler


def parse_record(line: str) -> tuple[int, str] | None:
    """(level, ``logger: message``) of a line a one-line :class:`PlainFormatter` wrote, its
    newlines restored; None for any other line (a command's own output)."""
    found = _RECORD.match(line.rstrip("\n"))
    if found is None:
        return None
    level, name, message = found.groups()
    message = re.sub(r"\\(\\|n)", lambda m: "\n" if m.group(1) == "n" else "\\", message)
    return logging.getLevelNamesMapping()[level], f"{name}: {message}"


class _Lines:
    """Periodic plain lines: what is done, the latest facts, time spent and left."""

    def __init__(self, title: str, total: int, every_s: float) -> None:
        self.title, self.total, self.every_s = title, max(int(total), 1), every_s
        self.done, self.facts = 0, ""
        self.start = self.last = time.perf_counter()

    def advance(self, n: int = 1, **facts: Any) -> None:
        self.done += n
        if facts:
            self.facts = ", ".join(f"{k} {_fmt(v)}" for k, v in facts.items())
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        spent = now - self.start
        left = spent / self.done * (self.total - self.done) if self.done else float("nan")
        log.info("%s: %d/%d%s, %.0f s, ~%.0f s left", self.title, self.done, self.total,
                 f" ({self.facts})" if self.facts else "", spent, left)

    def close(self) -> None:
        self._line(time.perf_counter())


class _Bar:
    def __init__(self, title: str, total: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.rich = Progress(TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("{task.fields[facts]}"),
                             TimeElapsedColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=False)
        self.rich.start()
        self.task = self.rich.add_task(title, total=max(int(total), 1), facts="")

    def advance(self, n: int = 1, **facts: Any) -> None:
        kw = {"facts": ", ".join(f"{k} {_fmt(v)}" for k, v in facts.items())} if facts else {}
        self.rich.update(self.task, advance=n, **kw)

    def close(self) -> None:
        self.rich.stop()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@contextlib.contextmanager
def progress(title: str, total: int, every_s: float = EVERY_S) -> Iterator[Any]:
    """A progress reporter for ``total`` units of work (see the module docstring)."""
    bar: Any = _Bar(title, total) if sys.stderr.isatty() else _Lines(title, total, every_s)
    try:
        yield bar
    finally:
        bar.close()
