"""Errors that the CLI turns into a clear message and a non-zero exit, and the one rule that
says which failures a retry can cure (:func:`is_permanent`).

Exit code 2 means "the same command fails the same way again": bad params or data, a full
disk, a bug. The flows never retry it. Anything else (a network hiccup, a process killed by a
signal, a worker pool that lost a process) may pass on a second try.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path


class MetarecError(Exception):
    """Base class: a problem the user can act on (bad input, missing file, bad params)."""


class ParamsError(MetarecError):
    """params.yaml is missing a key, has an unknown key or a value of the wrong type.

    ``problems`` holds one line per problem, each starting with its dotted key, so one error
    can name every mistake of a params file at once."""

    def __init__(self, message: str = "", problems: Sequence[str] = ()) -> None:
        self.problems = list(problems) or [message]
        if not message:
            message = (self.problems[0] if len(self.problems) == 1 else
                       f"{len(self.problems)} problems:\n  " + "\n  ".join(self.problems))
        super().__init__(message)


class DataError(MetarecError):
    """Input data is malformed. Names the file and, where known, the row and the column."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        self.file, self.row, self.column = file, row, column
        where = ", ".join(
            part for part in (
                f"file {file}" if file is not None else "",
                f"row {row}" if row is not None else "",
                f"column {column!r}" if column is not None else "",
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class IntegrityError(MetarecError):
    """A downloaded or tracked file does not match its expected checksum."""


class LockedError(MetarecError):
    """Another run of the same project holds the lock."""


class DiskFullError(MetarecError):
    """No space left where an output was being written: names the path and the free space."""

    def __init__(self, path: str | Path, detail: str = "") -> None:
        self.path, self.detail = Path(path), detail
        free = free_space(self.path)
        super().__init__(
            f"disk full writing {self.path} ({free} free on its filesystem"
            + (f"; {detail}" if detail else "") + "): free some space or point the output "
            "elsewhere, then run again (the previous outputs are unchanged)")


class InternalError(MetarecError):
    """An unexpected exception (a bug, not the input): deterministic, so never retried."""

    def __init__(self, exc: BaseException) -> None:
        self.original = exc
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
                 if tb is not None else "")
        super().__init__(f"internal error {type(exc).__name__}{where}: {exc} (a bug or an "
                         "unchecked input; rerun with --verbose for the traceback; a retry "
                         "gives the same result)")


class WorkerLost(BrokenProcessPool):
    """A worker process of a stage ended without a result: the system killed it, most often
    for lack of memory. Not the input's fault and not a bug, so a retry may pass (with more
    memory free); the CLI says so in one line, exit code 1 (:func:`permanent`: None)."""

    def __init__(self, stage: str, job: str, workers: int) -> None:
        gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        super().__init__(
            f"{stage}: a worker process died while running {job} (ended by the system, most "
            f"likely out of memory: this machine has {gib:.1f} GiB and {workers} worker "
            f"processes each hold their own copy of the inputs); free memory or set "
            f"{stage}.workers to 1, then run again (the previous outputs are unchanged)")


def free_space(path: str | Path) -> str:
    """Free bytes on the filesystem of ``path`` (or of its nearest existing parent), human
    readable; "unknown" when no parent can be measured."""
    folder = Path(path).absolute()
    for candidate in (folder, *folder.parents):
        try:
            left = shutil.disk_usage(candidate).free
        except OSError:
            continue
        for unit in ("bytes", "KiB", "MiB", "GiB"):
            if left < 1024 or unit == "GiB":
                return f"{left:.0f} {unit}" if unit == "bytes" else f"{left:.1f} {unit}"
            left /= 1024
    return "unknown"


_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """An OSError saying the disk (or the quota) is full; Arrow's carry it only in words."""
    if not isinstance(exc, OSError):
        return False
    return exc.errno in _FULL or "No space left on device" in str(exc) \
        or "Disk quota exceeded" in str(exc)


# exceptions of Python code that a second run of the same inputs raises again
DETERMINISTIC = (ValueError, TypeError, LookupError, ArithmeticError, AssertionError,
                 AttributeError, NotImplementedError, RuntimeError)


def permanent(exc: BaseException, path: str | Path | None = None) -> MetarecError | None:
    """``exc`` as the :class:`MetarecError` that stands for it when no retry can cure it
    (itself, a :class:`DiskFullError` naming ``path`` or the file the OSError names, or an
    :class:`InternalError`); None when a retry may pass (another OSError, a lost worker
    process, an interrupt)."""
    if isinstance(exc, MetarecError):
        return exc
    if is_disk_full(exc):
        where = getattr(exc, "filename", None) or path or Path.cwd()
        return DiskFullError(where, str(exc))
    if isinstance(exc, BrokenProcessPool):   # a worker killed (out of memory?): may pass
        return None
    if isinstance(exc, DETERMINISTIC):
        return InternalError(exc)
    return None


def is_permanent(exc: BaseException) -> bool:
    """True when retrying cannot help (see :func:`permanent`)."""
    return permanent(exc) is not None
