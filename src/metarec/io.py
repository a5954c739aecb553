"""Atomic, deterministic file output and content hashing.

Every output is written to a temporary file beside its destination and renamed into place, so
a crash leaves either the previous complete file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metarec.errors import DataError, LockedError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; swap it in for ``path`` only on success.

    A stage that writes several files writes them all into the temporary folder, so a failure
    leaves the previous complete folder (or none) in place, never a mix of old and new files.
    The swap is atomic (:func:`swap_dir`), then the old folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        swap_dir(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


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
    any instant leaves either the old complete folder or the new one at ``target``."""
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        return
    aside = target.with_name(f".{target.name}.{os.getpid()}.old")   # no renameat2: 2 renames
    os.rename(target, aside)
    os.rename(new, target)
    os.rename(aside, new)


@contextlib.contextmanager
def project_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``path`` for the duration of ``what``.

    A second run of the same project fails fast with a clear message instead of two runs
    interleaving their writes. The OS releases the lock if the process dies (even SIGKILL).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise LockedError(f"{what} is already running ({holder}; lock file {path}); "
                              "wait for it to finish or stop it, then retry") from exc
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
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


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The md5 of a file's bytes: DVC 3's content address of the file (its cache key)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
