"""io.py at the edges: crash points, symlinked outputs, the fallback swap, leftovers of killed
writers, a full disk, and the project lock (named holder, wait or fail, children of the
holder working under it)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from metarec import io
from metarec.errors import DataError, DiskFullError, LockedError
from metarec.io import (
    atomic_dir,
    atomic_path,
    crash_point,
    crash_stage,
    file_digests,
    md5_file,
    project_lock,
    scratch_dir,
    sha256_file,
    sweep,
)

DEAD = 2**22 + 12345          # above Linux's default pid_max: never a live process here


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


# -- crash points ----------------------------------------------------------------------------

def test_a_crash_point_is_inert_unless_named(monkeypatch) -> None:
    monkeypatch.delenv(io.CRASH_ENV, raising=False)
    with crash_stage("score"):
        crash_point("before-swap")                 # no variable: nothing
    monkeypatch.setenv(io.CRASH_ENV, "score:before-swap=ValueError")
    crash_point("before-swap")                     # no stage running: nothing
    with crash_stage("ingest"):
        crash_point("before-swap")                 # another stage's point: nothing
    with crash_stage("score"):
        crash_point("after-swap")                  # another point: nothing
        with pytest.raises(ValueError, match="planted"):
            crash_point("before-swap")
    monkeypatch.setenv(io.CRASH_ENV, "x:y=ENOSPC, score:mid-write=LookupError")
    with crash_stage("score"), pytest.raises(LookupError):
        crash_point("mid-write")
    with crash_stage("x"), pytest.raises(OSError) as caught:
        crash_point("y")
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.setenv(io.CRASH_ENV, "score:mid-write=Typo")
    with crash_stage("score"), pytest.raises(ValueError, match="unknown fault 'Typo'"):
        crash_point("mid-write")


def test_a_crash_point_without_a_fault_kills_the_process(tmp_path: Path) -> None:
    """SIGKILL: no finally block runs, so the temporary folder stays for the next run."""
    target = tmp_path / "out"
    code = ("from metarec.io import atomic_dir, crash_stage\n"
            f"with crash_stage('ingest'), atomic_dir({str(target)!r}) as tmp:\n"
            "    (tmp / 'a').write_text('new')\n")
    done = _run(code, {io.CRASH_ENV: "ingest:before-swap"})
    assert done.returncode == -9, done.stderr
    assert not target.exists()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.") and left[0].endswith(".tmp")
    with atomic_dir(target) as tmp:                # the next writer sweeps it
        (tmp / "a").write_text("again")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# -- symlinked outputs -----------------------------------------------------------------------

def test_a_symlinked_output_folder_keeps_its_link(tmp_path: Path) -> None:
    """models -> /mnt/big/models: the link's target gets the new files, the link stays."""
    big = tmp_path / "big" / "models"
    big.mkdir(parents=True)
    _write(big, {"old.pt": b"old"})
    link = tmp_path / "models"
    link.symlink_to(big, target_is_directory=True)
    with atomic_dir(link) as tmp:
        _write(tmp, {"new.pt": b"new"})
    assert link.is_symlink() and os.readlink(link) == str(big)
    assert _tree(link) == {"new.pt": b"new"} == _tree(big)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "models"]
    assert [p.name for p in big.parent.iterdir()] == ["models"]       # no leftover there


def test_a_dangling_symlinked_output_is_created_at_its_target(tmp_path: Path) -> None:
    link = tmp_path / "models"
    link.symlink_to(tmp_path / "disk" / "models")
    with atomic_dir(link) as tmp:
        _write(tmp, {"a": b"1"})
    assert link.is_symlink() and _tree(tmp_path / "disk" / "models") == {"a": b"1"}


def test_a_symlinked_output_file_keeps_its_link(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.json"
    real.write_text("old")
    link = tmp_path / "eval.json"
    link.symlink_to(real)
    io.write_text("new", link)
    assert link.is_symlink() and real.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.json", "eval.json"]


# -- the fallback swap (no renameat2) --------------------------------------------------------

def test_the_fallback_swap_replaces_the_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    target = tmp_path / "out"
    target.mkdir()
    _write(target, {"a": b"old", "b": b"old"})
    with atomic_dir(target) as tmp:
        _write(tmp, {"a": b"new"})
    assert _tree(target) == {"a": b"new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_kill_inside_the_fallback_swap_leaves_the_old_folder_after_recovery(
        tmp_path: Path) -> None:
    """Killed between the fallback's two renames: the target is missing for a moment; the
    next write of it puts the old folder back first, and a failed write keeps it."""
    target = tmp_path / "out"
    target.mkdir()
    _write(target, {"a": b"old"})
    code = ("from metarec import io\n"
            "io._exchange = lambda a, b: False\n"
            f"with io.crash_stage('train'), io.atomic_dir({str(target)!r}) as tmp:\n"
            "    (tmp / 'a').write_bytes(b'new')\n")
    done = _run(code, {io.CRASH_ENV: "train:mid-swap"})
    assert done.returncode == -9, done.stderr
    assert not target.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.endswith(".aside.tmp")]
    assert len(aside) == 1 and _tree(aside[0]) == {"a": b"old"}
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        _write(tmp, {"a": b"half"})
        raise RuntimeError("this write fails too")
    assert _tree(target) == {"a": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# -- leftovers of dead writers ---------------------------------------------------------------

def test_sweep_removes_only_what_dead_processes_of_this_host_left(tmp_path: Path) -> None:
    target = tmp_path / "out"
    host = io.owner_tag().split("-")[1]
    names = {f".out.{DEAD}-{host}.abc.tmp": False,            # dead, this host: swept
             f".out.{os.getpid()}-{host}.abc.tmp": True,      # alive: kept
             f".out.{DEAD}-00000000.abc.tmp": True,           # another host: kept
             f".out.{DEAD}-{host}.abc": True,                 # not a temporary name: kept
             f".outer.{DEAD}-{host}.abc.tmp": True,           # another target's: kept
             f".out.x.{DEAD}-{host}.abc.tmp": True}           # the temp of out.x: kept
    for name in names:
        (tmp_path / name).mkdir()
    (tmp_path / f".out.{DEAD}-{host}.f.tmp").write_text("a file")
    gone = sweep(target)
    assert sorted(p.name for p in gone) == sorted(
        [f".out.{DEAD}-{host}.abc.tmp", f".out.{DEAD}-{host}.f.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, k in names.items() if k)
    assert sweep(tmp_path / "missing" / "out") == []


def test_scratch_dirs_of_dead_processes_are_removed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host = io.owner_tag().split("-")[1]
    for name in (f"metarec-score-{DEAD}-{host}-abc", f"metarec-world-{os.getpid()}-{host}-x",
                 f"metarec-score-{DEAD}-00000000-abc", "metarec-retrain", "other-1-2-3-4"):
        (tmp_path / name).mkdir()
    (tmp_path / f"metarec-day-{DEAD}-{host}-y").write_text("a file")
    with scratch_dir("day") as mine:
        assert Path(mine).name.startswith(f"metarec-day-{io.owner_tag()}-")
        left = sorted(p.name for p in tmp_path.iterdir() if p.name != Path(mine).name)
    assert left == sorted([f"metarec-score-{DEAD}-00000000-abc", "metarec-retrain",
                           f"metarec-world-{os.getpid()}-{host}-x", "other-1-2-3-4"])
    assert not Path(mine).exists()


# -- a full disk -----------------------------------------------------------------------------

def test_a_full_disk_names_the_output_and_the_free_space(tmp_path: Path) -> None:
    target = tmp_path / "out" / "recs.parquet"
    with pytest.raises(DiskFullError) as caught, atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    msg = str(caught.value)
    assert f"disk full writing {target} (" in msg and " free on its filesystem" in msg
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(DiskFullError, match=f"disk full writing {tmp_path / 'dir'}"), \
            atomic_dir(tmp_path / "dir"):
        raise OSError(errno.EIO, "Error writing bytes to file. Detail: [errno 28] No space "
                                 "left on device")   # Arrow's wording
    with pytest.raises(OSError) as other, atomic_path(target):
        raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(other.value, DiskFullError)


def test_file_digests_are_the_sha256_and_md5_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * 1024 + 7))
    assert file_digests(path, chunk=1024) == (sha256_file(path), md5_file(path))


# -- the project lock ------------------------------------------------------------------------

def test_a_second_run_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / ".metarec.lock"
    with project_lock(lock, "metarec train"):
        content = lock.read_text()
        assert content.startswith(f"pid {os.getpid()}, metarec train, since ")
        assert content.endswith("Z")
        with pytest.raises(LockedError) as caught, project_lock(lock, "metarec score"):
            pass
    msg = str(caught.value)
    assert msg.startswith("metarec score: another run is already running (pid ")
    assert "metarec train, since" in msg and str(lock) in msg and "waited" not in msg
    with project_lock(lock, "metarec score"):        # released: the next run takes it
        assert "metarec score" in lock.read_text()


def test_a_second_run_waits_when_params_say_so(tmp_path: Path) -> None:
    lock = tmp_path / ".metarec.lock"
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with project_lock(lock, "metarec train"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    start = time.monotonic()
    with pytest.raises(LockedError, match=r"waited 0.3 s \(prefect.lock_wait_s\)"), \
            project_lock(lock, "metarec score", wait_s=0.3):
        pass
    assert time.monotonic() - start >= 0.3
    threading.Timer(0.3, release.set).start()
    with project_lock(lock, "metarec score", wait_s=30):
        assert "metarec score" in lock.read_text()
    thread.join()


def test_children_of_the_holder_work_under_its_lock(tmp_path: Path) -> None:
    """A flow holds the lock and runs its stages as `dvc repro` children: they take it as
    theirs; a process the holder did not start, given the same variable, does not."""
    lock = tmp_path / ".metarec.lock"
    code = ("import sys\nfrom metarec.io import project_lock\n"
            f"with project_lock({str(lock)!r}, 'metarec ingest'):\n"
            "    print('ran')\n")
    with project_lock(lock, "the nightly flow"):
        child = _run(code)
        assert child.returncode == 0 and child.stdout == "ran\n", child.stderr
        grandchild = _run(f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                          f"{code!r}], check=True)")
        assert grandchild.returncode == 0 and "ran" in grandchild.stdout, grandchild.stderr
        held = os.environ[io._HELD_ENV]
        stranger = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  text=True, timeout=60,
                                  env={**os.environ, io._HELD_ENV: held.replace(
                                      f"={os.getpid()}", f"={DEAD}")})
        assert stranger.returncode == 1 and "already running" in stranger.stderr
        assert "the nightly flow" in stranger.stderr
    assert io._HELD_ENV not in os.environ


def test_two_holders_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    """Two nightly flows in threads of one process: the second never borrows the first's."""
    lock = tmp_path / ".metarec.lock"
    with project_lock(lock, "first"), pytest.raises(LockedError), \
            project_lock(lock, "second"):
        pass


# -- the plain helpers (read, write, JSON) ---------------------------------------------------

def test_plain_turns_values_into_json_data() -> None:
    import numpy as np

    assert io.plain(np.int64(3)) == 3 and type(io.plain(np.int64(3))) is int
    assert io.plain(np.float32(0.5)) == 0.5 and io.plain(float("nan")) is None
    assert io.plain((1, [2.123456, np.float64(3.5)]), digits=2) == [1, [2.12, 3.5]]
    assert io.plain(2.0000001, digits=3) == 2.0 and io.plain(2.5) == 2.5
    assert io.plain(True) is True and io.plain(None) is None and io.plain("x") == "x"
    assert io.plain(Path("a/b")) == "a/b" and io.plain({"a": 1}) == "{'a': 1}"


def test_json_is_written_sorted_and_plain(tmp_path: Path) -> None:
    import numpy as np

    path = io.write_json({"b": np.int64(2), "a": {3, 1}, "c": Path("x")}, tmp_path / "o.json")
    assert path == tmp_path / "o.json"
    assert path.read_text() == '{\n  "a": [\n    1,\n    3\n  ],\n  "b": 2,\n  "c": "x"\n}\n'
    assert io.read_json(path) == {"a": [1, 3], "b": 2, "c": "x"}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        io.write_json({"x": object()}, tmp_path / "bad.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]
    assert io.write_text("héllo", tmp_path / "t.txt").read_bytes() == "héllo".encode()


def test_a_tracked_input_that_is_missing_or_broken_names_how_to_restore_it(
        tmp_path: Path) -> None:
    missing = tmp_path / "validated" / "interactions.parquet"
    with pytest.raises(DataError) as caught:
        io.read_tracked(missing, "dvc repro validate")
    assert str(caught.value) == (f"file {missing}: missing; run `dvc repro validate` (or "
                                 "`dvc pull`) to restore it")
    missing.parent.mkdir()
    missing.write_bytes(b"PAR1 cut short")
    with pytest.raises(DataError, match=r"unreadable \(truncated or corrupt\?\): .*; run "
                                        r"`dvc repro validate` \(or `dvc pull`\)"):
        io.read_tracked(missing, "dvc repro validate")
    (tmp_path / "s.json").write_text("{")
    with pytest.raises(DataError, match="unreadable"):
        io.read_tracked(tmp_path / "s.json", "dvc repro ingest", io.read_json)
    (tmp_path / "s.json").write_text('{"a": 1}')
    assert io.read_tracked(tmp_path / "s.json", "x", io.read_json) == {"a": 1}


def test_parquet_round_trips_with_stable_dtypes_and_no_metadata(tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pd.DataFrame({"id": ["a", "b"], "n": [1, 2], "tags": [["x"], ["y", "z"]]},
                         index=[5, 6])
    path = io.write_parquet(frame, tmp_path / "t.parquet")
    assert pq.read_schema(path).metadata is None and pq.read_schema(path).names == [
        "id", "n", "tags"]
    back = io.read_parquet(path)
    assert str(back["id"].dtype) == "string" and str(back["n"].dtype) == "int64"
    assert isinstance(back["tags"].dtype, pd.ArrowDtype)
    assert back["tags"].tolist() == [["x"], ["y", "z"]] and back.index.tolist() == [0, 1]
    meta = pq.ParquetFile(path).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    big = pa.table({"s": pa.array(["q"], pa.large_string())})
    assert str(io.arrow_frame(big)["s"].dtype) == "string"


# -- the pieces of the lock and the temporary names ------------------------------------------

def test_owner_tags_and_liveness() -> None:
    pid, host = io.owner_tag().split("-")
    assert pid == str(os.getpid()) and len(host) == 8
    assert io._alive(os.getpid()) and not io._alive(DEAD)
    assert io._alive(1)                       # init: someone else's, alive
    assert io._dead_owner(f"{DEAD}-{host}") and not io._dead_owner(f"{os.getpid()}-{host}")
    assert not io._dead_owner(f"{DEAD}-ffffffff") and not io._dead_owner("abc-" + host)
    assert not io._dead_owner(f"{DEAD}")


def test_the_held_locks_travel_in_one_variable(monkeypatch) -> None:
    monkeypatch.setenv(io._HELD_ENV, "/a/.metarec.lock=12\n/b=c/.metarec.lock=34\nbad\n=5\nx=y")
    assert io._held_entries() == {"/a/.metarec.lock": 12, "/b=c/.metarec.lock": 34}
    io._set_held({"/z": 1, "/y": 2})
    assert os.environ[io._HELD_ENV] == "/y=2\n/z=1"
    io._set_held({})
    assert io._HELD_ENV not in os.environ
    assert os.getppid() in io._ancestors() and os.getpid() not in io._ancestors()
    assert io._ancestors()[0] == os.getppid()


def test_the_exchange_swaps_two_folders_atomically(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    (b / "f").write_text("b")
    assert io._exchange(a, b) is True
    assert (a / "f").read_text() == "b" and (b / "f").read_text() == "a"
    with pytest.raises(OSError) as caught:
        io._exchange(a, tmp_path / "missing")
    assert caught.value.errno == errno.ENOENT and str(tmp_path / "missing") in str(caught.value)
    io.swap_dir(a, tmp_path / "new")                   # no target yet: a plain rename
    assert not a.exists() and (tmp_path / "new" / "f").read_text() == "b"


def test_a_lock_file_lives_beside_params(tmp_path: Path) -> None:
    assert io.lock_file(tmp_path) == tmp_path.resolve() / ".metarec.lock"
    deep = tmp_path / "x" / "y"
    with project_lock(deep / ".metarec.lock", "metarec ingest"):
        assert (deep / ".metarec.lock").is_file()
        assert io._held_entries() == {str((deep / ".metarec.lock").resolve()): os.getpid()}
    assert io._held_entries() == {}


def test_the_exchange_reports_the_error_of_its_own_call(tmp_path: Path) -> None:
    """Two failed exchanges in a row name their own causes (the errno of that call, not one
    left over from an earlier call), so a real failure is never mistaken for "unsupported"."""
    a = tmp_path / "a"
    a.mkdir()
    (tmp_path / "file").write_text("x")
    for other, expected in ((tmp_path / "missing", errno.ENOENT),
                            (tmp_path / "file" / "below", errno.ENOTDIR),
                            (tmp_path / "missing", errno.ENOENT)):
        with pytest.raises(OSError) as caught:
            io._exchange(a, other)
        assert caught.value.errno == expected, other


def test_relative_output_paths_are_swapped_in_atomically(tmp_path: Path, monkeypatch) -> None:
    """Outputs named relative to the working directory (``models/``, as the CLI passes them)
    are exchanged relative to it too."""
    monkeypatch.chdir(tmp_path)
    Path("a").mkdir()
    Path("b").mkdir()
    Path("a/f").write_text("a")
    Path("b/f").write_text("b")
    assert io._exchange(Path("a"), Path("b")) is True
    assert Path("a/f").read_text() == "b" and Path("b/f").read_text() == "a"
    _write(Path("b"), {"old": b"old"})
    with atomic_dir("b") as tmp:
        _write(tmp, {"new": b"new"})
    assert _tree(Path("b")) == {"new": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_sweep_puts_the_set_aside_folder_back_and_still_removes_the_rest(
        tmp_path: Path) -> None:
    """A writer killed inside the fallback swap leaves the old folder set aside and its new
    folder half-renamed: the sweep restores the one and removes the other."""
    target = tmp_path / "out"
    host = io.owner_tag().split("-")[1]
    aside = tmp_path / f".out.{DEAD}-{host}.aside.tmp"
    aside.mkdir()
    _write(aside, {"a": b"old"})
    left = tmp_path / f".out.{DEAD}-{host}.zzz.tmp"      # sorts after the aside folder
    left.mkdir()
    assert sweep(target) == [left]
    assert _tree(target) == {"a": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_text_is_written_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """A server whose locale is plain C (ASCII) still writes UTF-8 text."""
    import locale

    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode ignores the locale")
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        assert locale.getpreferredencoding(False).lower() in {"ansi_x3.4-1968", "ascii"}
        path = io.write_text("héllo ✓", tmp_path / "t.txt")
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert path.read_bytes() == "héllo ✓".encode()
