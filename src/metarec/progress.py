"""Progress on long work: a rich bar on a terminal, plain periodic lines in logs and CI.

``with progress("train maml seed 0", total=800) as bar: bar.advance(1, val=0.71)``. On a
terminal (stderr is a TTY) a rich progress bar shows done / total, the latest facts and the
time left; elsewhere (CI, Prefect task logs, files) a line is logged every ``every_s`` seconds
and at the end, with the same facts and an estimate of the time left.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("metarec.progress")


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
def progress(title: str, total: int, every_s: float = 15.0) -> Iterator[Any]:
    """A progress reporter for ``total`` units of work (see the module docstring)."""
    bar: Any = _Bar(title, total) if sys.stderr.isatty() else _Lines(title, total, every_s)
    try:
        yield bar
    finally:
        bar.close()
