"""Atomic, deterministic file output, content hashing, the project lock, and the crash
points the reliability tests kill the process at.

Every output is written to a temporary file or folder beside its destination and renamed into
place, so a crash leaves either the previous complete output or none, never a partial one.
Temporary names carry the writer's pid and host (``.<name>.<pid>-<host>.<random>.tmp``, and
``metarec-<what>-<pid>-<host>-<random>`` in the system temp folder): the next writer removes
those of processes that died, so a killed run leaves nothing behind for long.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metarec.errors import DataError, DiskFullError, LockedError, WorkerLost, is_disk_full

# --------------------------------------------------------------------------------------------
# crash points: a test hook, inert unless METAREC_CRASH_AT names the point

CRASH_ENV = "METAREC_CRASH_AT"
_stage: list[str] = []          # the running stage (the CLI sets it), innermost last
# what a crash point does besides SIGKILL (``<stage>:<point>=<what>``): the failures the
# flows must classify (tests/flows/test_retries.py)
_FAULTS: dict[str, Any] = {
    "ENOSPC": lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    "EIO": lambda: OSError(errno.EIO, os.strerror(errno.EIO)),
    "ValueError": lambda: ValueError("planted by METAREC_CRASH_AT"),
    "LookupError": lambda: LookupError("unknown encoding: planted by METAREC_CRASH_AT"),
    "RuntimeError": lambda: RuntimeError("planted by METAREC_CRASH_AT"),
    "WorkerLost": lambda: WorkerLost(_stage[-1] if _stage else "cli",
                                     "planted jobs (0 of 1 done)", 2),
}


@contextlib.contextmanager
def crash_stage(name: str) -> Iterator[None]:
    """Name the stage whose crash points fire (``METAREC_CRASH_AT=<name>:<point>``)."""
    _stage.append(name)
    try:
        yield
    finally:
        _stage.pop()


def crash_point(point: str) -> None:
    """Kill this process (SIGKILL: no cleanup runs, as on a power cut or the OOM killer) when
    ``METAREC_CRASH_AT`` names ``<stage>:<point>``; with ``=<fault>`` (ENOSPC, EIO,
    ValueError, LookupError, RuntimeError) raise that instead. Points: ``mid-write`` (a file
    complete under its temporary name), ``before-swap`` and ``after-swap`` (an output folder
    exchanged with its temporary one), ``mid-download``."""
    spec = os.environ.get(CRASH_ENV)
    if not spec or not _stage:
        return
    here = f"{_stage[-1]}:{point}"
    for item in spec.split(","):
        where, _, fault = item.strip().partition("=")
        if where != here:
            continue
        if fault:
            if fault not in _FAULTS:
                raise ValueError(f"{CRASH_ENV}: unknown fault {fault!r} "
                                 f"(known: {', '.join(_FAULTS)})")
            raise _FAULTS[fault]()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# temporary names that say who made them, and the sweep of a dead writer's leftovers

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def owner_tag() -> str:
    """``<pid>-<host>``: which process on which machine owns a temporary name."""
    return f"{os.getpid()}-{_HOST}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # someone else's process: alive
        return True
    return True


def _dead_owner(tag: str) -> bool:
    """True when ``tag`` (``<pid>-<host>``) names a process of this host that has ended."""
    pid, _, host = tag.partition("-")
    return host == _HOST and pid.isdigit() and not _alive(int(pid))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep(target: Path) -> list[Path]:
    """Remove the temporary files and folders of ``target`` (``.<name>.<pid>-<host>.*.tmp``
    beside it) that processes which have died left; first put back a folder a fallback swap
    had set aside (:func:`swap_dir`) if ``target`` itself is missing. Returns what went."""
    prefix = f".{target.name}."
    try:
        found = sorted(p for p in target.parent.iterdir()
                       if p.name.startswith(prefix) and p.name.endswith(".tmp"))
    except FileNotFoundError:
        return []
    gone = []
    for path in found:
        tag = path.name[len(prefix):].split(".", 1)[0]
        if not _dead_owner(tag):
            continue
        if path.name.endswith(".aside.tmp") and not target.exists() \
                and not target.is_symlink():
            os.rename(path, target)            # the old output, back where it was
            continue
        _remove(path)
        gone.append(path)
    return gone


SCRATCH = "metarec-"


def scratch_dir(what: str) -> tempfile.TemporaryDirectory[str]:
    """A folder in the system temp folder for one run's scratch files (DuckDB spill, the
    day's users, a retrained model), named ``metarec-<what>-<pid>-<host>-...``; those of
    dead processes of this host are removed first (a killed run cannot clean up)."""
    root = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for path in root.iterdir():
            parts = path.name.split("-")
            if path.name.startswith(SCRATCH) and len(parts) >= 5 \
                    and _dead_owner(f"{parts[2]}-{parts[3]}"):
                _remove(path)
    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH}{what}-{owner_tag()}-")


def _real(path: Path) -> Path:
    """``path`` with a symlink at its end followed (``models -> /mnt/big/models``): the
    output replaces the link's target, and the link stays."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A full disk raises :class:`DiskFullError` naming ``path`` and the space left."""
    path = _real(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        crash_point("mid-write")
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, str(exc)) from exc
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; swap it in for ``path`` only on success.

    A stage that writes several files writes them all into the temporary folder, so a failure
    leaves the previous complete folder (or none) in place, never a mix of old and new files.
    The swap is atomic (:func:`swap_dir`), then the old folder is removed. A symlinked
    ``path`` keeps its link: the folder it points at is the one replaced. Leftovers of a
    killed writer beside ``path`` are removed first (:func:`sweep`).
    """
    path = _real(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp",
                                dir=path.parent))
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        crash_point("before-swap")
        swap_dir(tmp, path)
        crash_point("after-swap")
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, str(exc)) from exc
        raise
    except DiskFullError as exc:     # a file of the folder: named where it was going
        if not exc.path.is_relative_to(tmp):
            raise
        raise DiskFullError(path / exc.path.relative_to(tmp), exc.detail) from exc
    finally:
        _remove(tmp)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with renameat2(RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    res = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_dir(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``; the previous ``target`` ends up at ``new`` (caller
    deletes it). With an existing target the exchange is one atomic syscall, so a SIGKILL at
    any instant leaves either the old complete folder or the new one at ``target``.

    Without renameat2 (other kernels and systems) the old folder is first renamed aside
    (``.<name>.<pid>-<host>.aside.tmp``), then ``new`` into place: a kill between the two
    leaves no ``target`` for an instant, and the next write of ``target`` puts the old folder
    back first (:func:`sweep`), so it still ends as the old or the new."""
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        return
    aside = target.with_name(f".{target.name}.{owner_tag()}.aside.tmp")
    os.rename(target, aside)
    crash_point("mid-swap")
    os.rename(new, target)
    os.rename(aside, new)


# --------------------------------------------------------------------------------------------
# the project lock

LOCK_NAME = ".metarec.lock"
_HELD_ENV = "METAREC_LOCK_HELD"      # "<lock path>=<pid>" entries, ":"-free paths, "\n"-joined


def lock_file(project_root: str | Path) -> Path:
    """The project's one lock file: ``.metarec.lock`` beside params.yaml and dvc.yaml."""
    return Path(project_root).resolve() / LOCK_NAME


def _held_entries() -> dict[str, int]:
    out = {}
    for line in os.environ.get(_HELD_ENV, "").splitlines():
        where, _, pid = line.rpartition("=")
        if where and pid.isdigit():
            out[where] = int(pid)
    return out


def _set_held(entries: dict[str, int]) -> None:
    if entries:
        os.environ[_HELD_ENV] = "\n".join(f"{k}={v}" for k, v in sorted(entries.items()))
    else:
        os.environ.pop(_HELD_ENV, None)


def _ancestors() -> list[int]:
    """This process's parent, its parent, ... (Linux /proc; the parent alone elsewhere)."""
    out, pid = [], os.getpid()
    for _ in range(64):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return out or [os.getppid()]
        if pid <= 1:
            break
        out.append(pid)
    return out


def _inherited(path: Path) -> bool:
    """True when an ancestor of this process holds the lock on ``path`` (a flow that runs
    its stages as ``dvc repro`` children): the child works under the parent's lock."""
    holder = _held_entries().get(str(path))
    return holder is not None and holder != os.getpid() and holder in _ancestors()


@contextlib.contextmanager
def project_lock(path: str | Path, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` for the duration of ``what``.

    A second run waits up to ``wait_s`` seconds (``prefect.lock_wait_s``) for it, then fails
    with a :class:`LockedError` naming the holder (pid, command, start time). Processes that
    the holder starts (the stages of a flow) work under its lock. The OS releases the lock if
    the process dies (even SIGKILL)."""
    path = Path(path).resolve()
    if _inherited(path):
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    waited = f"; waited {wait_s:g} s (prefect.lock_wait_s)" if wait_s else ""
                    raise LockedError(
                        f"{what}: another run is already running ({holder}; lock file "
                        f"{path}{waited}); wait for it to finish or stop it, then retry"
                    ) from exc
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
        fh.seek(0)
        fh.truncate()
        since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        fh.write(f"pid {os.getpid()}, {what}, since {since}")
        fh.flush()
        held = _held_entries()
        previous = held.get(str(path))
        _set_held({**held, str(path): os.getpid()})
        try:
            yield
        finally:
            held = _held_entries()
            if previous is None:
                held.pop(str(path), None)
            else:
                held[str(path)] = previous
            _set_held(held)
    finally:
        fh.close()


def read_tracked(path: str | Path, restore: str, reader: Any = None) -> Any:
    """Read a pipeline input that DVC tracks (default reader: :func:`read_parquet`).

    Missing, truncated or corrupt files raise DataError naming the file and the command that
    restores it (``dvc repro <stage>`` or ``dvc pull``) instead of a raw pyarrow traceback.
    """
    path = Path(path)
    hint = f"run `{restore}` (or `dvc pull`) to restore it"
    if not path.exists():
        raise DataError(f"missing; {hint}", file=str(path))
    try:
        return (reader or read_parquet)(path)
    except (pa.ArrowException, OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"unreadable (truncated or corrupt?): {exc}; {hint}",
                        file=str(path)) from exc


PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": True, "write_statistics": True}
ROW_GROUP = 1024 * 1024  # rows: pyarrow's default, so streamed and whole writes share bytes


def write_parquet(df: pd.DataFrame | pa.Table, path: str | Path) -> Path:
    """Write a table atomically; same content gives the same bytes (no index, fixed options)."""
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP, **PARQUET_OPTIONS)
    return Path(path)


def write_parquet_stream(parts: Iterable[pa.Table], path: str | Path, schema: pa.Schema
                         ) -> int:
    """Write ``parts`` (tables of ``schema``, any sizes) atomically as one Parquet file; returns
    its rows. Rows are regrouped into row groups of exactly :data:`ROW_GROUP` (the last one
    shorter), each written as one contiguous chunk, so the bytes are those
    :func:`write_parquet` gives for the concatenated table however the rows were split,
    while at most one row group plus one part is held in memory."""
    schema = schema.remove_metadata()
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, **PARQUET_OPTIONS) as writer:
        pending: list[pa.Table] = []
        held = 0
        for part in parts:
            part = part.cast(schema)
            rows += part.num_rows
            pending.append(part)
            held += part.num_rows
            while held >= ROW_GROUP:
                group = pa.concat_tables(pending).combine_chunks()
                writer.write_table(group.slice(0, ROW_GROUP), row_group_size=ROW_GROUP)
                pending, held = [group.slice(ROW_GROUP)], held - ROW_GROUP
        if held or not rows:
            last = pa.concat_tables(pending) if pending else schema.empty_table()
            writer.write_table(last.combine_chunks(), row_group_size=ROW_GROUP)
    return rows


def read_parquet(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_parquet` with stable dtypes: strings as "string",
    list columns arrow-backed (no per-row Python lists)."""
    return arrow_frame(pq.read_table(path))


def arrow_frame(table: pa.Table) -> pd.DataFrame:
    """An arrow table as pandas with :func:`read_parquet`'s dtypes."""

    def mapper(tp: pa.DataType) -> Any:
        if pa.types.is_list(tp) or pa.types.is_large_list(tp):
            return pd.ArrowDtype(tp)
        if pa.types.is_string(tp) or pa.types.is_large_string(tp):
            return pd.StringDtype()
        return None

    return table.to_pandas(types_mapper=mapper)


def plain(value: Any, digits: int | None = None) -> Any:
    """A value as plain JSON data: numpy scalars as Python numbers, a NaN as None (a metric a
    model or the labels do not have), tuples as lists, floats rounded to ``digits``."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v, digits) for v in value]
    if isinstance(value, float):
        if value != value:
            return None
        return round(value, digits) if digits is not None else value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically with sorted keys, so reruns give identical bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n",
                       encoding="utf-8")
    return Path(path)


def write_text(text: str, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_digests(path: str | Path, chunk: int = 1 << 20) -> tuple[str, str]:
    """(sha256, md5) of a file's bytes in one read: the manifest's checksum and DVC's
    content address of the same bytes."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The md5 of a file's bytes: DVC 3's content address of the file (its cache key)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
