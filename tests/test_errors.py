"""Every failure classified once (errors.permanent): the CLI exits 2 with one clear line for
what no retry can cure (params, data, a full disk naming the path and the free space, a
bug naming its place), and lets a transient failure through to be retried."""

from __future__ import annotations

import errno
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from metarec.cli import app
from metarec.errors import (
    DataError,
    DiskFullError,
    InternalError,
    free_space,
    is_permanent,
    permanent,
)


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - a traceback to point at
        return caught


def test_permanent_failures_and_what_stands_for_them(tmp_path: Path) -> None:
    data = DataError("bad row", file="x.csv", row=3)
    assert permanent(data) is data
    full = permanent(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f")))
    assert isinstance(full, DiskFullError) and full.path == tmp_path / "f"
    arrow = permanent(OSError("Error writing bytes to file. Detail: [errno 28] No space left "
                              "on device"), path=tmp_path / "out")
    assert isinstance(arrow, DiskFullError) and str(tmp_path / "out") in str(arrow)
    quota = permanent(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert isinstance(quota, DiskFullError)
    for bug in (ValueError("v"), LookupError("unknown encoding: x"), RuntimeError("GX says"),
                KeyError("k"), ZeroDivisionError(), AssertionError(), TypeError("t")):
        found = permanent(_raised(bug))
        assert isinstance(found, InternalError) and found.original is bug
        assert str(found).startswith(f"internal error {type(bug).__name__} at ")
        assert "test_errors.py:" in str(found) and "a retry gives the same result" in str(found)
    for passing in (OSError(errno.EIO, "I/O"), ConnectionResetError(), TimeoutError(),
                    BrokenProcessPool("a worker died"), KeyboardInterrupt(), SystemExit(1)):
        assert permanent(passing) is None and not is_permanent(passing)


def test_free_space_is_measured_at_the_nearest_existing_folder(tmp_path: Path) -> None:
    text = free_space(tmp_path / "not" / "yet" / "there.parquet")
    number, unit = text.split()
    assert float(number) >= 0 and unit in ("bytes", "KiB", "MiB", "GiB")


def _ingest(tmp_path: Path, monkeypatch, fault: str | None):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"ingest": {"source": "synthetic", "allow_download": False,
                                                 "synthetic": {"users": 40, "items": 10,
                                                               "interactions": 300}}}))
    if fault:
        monkeypatch.setenv("METAREC_CRASH_AT", f"ingest:mid-write={fault}")
    else:
        monkeypatch.delenv("METAREC_CRASH_AT", raising=False)
    return CliRunner().invoke(app, ["ingest", "--params", str(params),
                                    "--out", str(tmp_path / "canonical")])


@pytest.mark.parametrize("fault, words", [
    ("ValueError", "internal error ValueError at "),
    ("LookupError", "internal error LookupError at "),
    ("RuntimeError", "internal error RuntimeError at "),
    ("ENOSPC", "disk full writing "),
])
def test_a_deterministic_failure_exits_2_with_one_line(tmp_path: Path, monkeypatch,
                                                       fault: str, words: str) -> None:
    result = _ingest(tmp_path, monkeypatch, fault)
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert out.startswith(f"error: {words}") and "Traceback" not in result.output
    if fault == "ENOSPC":       # the file being written and the space left
        assert f"disk full writing {tmp_path / 'canonical'}" in out
        assert " free on its filesystem" in out and "the previous outputs are unchanged" in out
    assert not (tmp_path / "canonical").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".metarec.lock", "params.yaml"]


def test_a_killed_worker_is_one_line_exit_1_and_passes_next_time(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """A worker process the system ended (out of memory) is not a traceback: one line naming
    the stage, the job and the memory, exit code 1 (the flows may retry it)."""
    result = _ingest(tmp_path, monkeypatch, "WorkerLost")
    out = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert out.startswith("error: ingest: a worker process died while running planted jobs "
                          "(0 of 1 done)")
    assert "out of memory" in out and "ingest.workers to 1" in out
    assert _ingest(tmp_path, monkeypatch, None).exit_code == 0


def test_a_transient_failure_is_not_turned_into_exit_2(tmp_path: Path, monkeypatch) -> None:
    result = _ingest(tmp_path, monkeypatch, "EIO")
    assert result.exit_code == 1 and isinstance(result.exception, OSError)
    assert result.exception.errno == errno.EIO
    assert _ingest(tmp_path, monkeypatch, None).exit_code == 0     # and passes next time
    assert (tmp_path / "canonical" / "interactions.parquet").is_file()
