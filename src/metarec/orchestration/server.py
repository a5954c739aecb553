"""A local Prefect server for `make run` and `make ui`: started once, reused, never orphaned.

The server binds to 127.0.0.1 and keeps its SQLite database under ``PREFECT_HOME`` inside the
project (``.prefect/``, ignored by git), so runs survive between commands and can be inspected
in the UI. Starting takes ~20 s here: we poll ``/api/health`` until it answers or a timeout
passes. On timeout or early exit the whole process group is terminated and reaped, and the
error quotes the end of the server log.

The server has no authentication: whoever reaches it reads every run and artifact (user ids
included) and can start runs. So it binds to loopback unless ``prefect.open_to_network`` says
otherwise (params load refuses a non-loopback ``prefect.host`` without it, and :func:`start`
says who can reach it), and a healthy server on the port is reused only when this project
started it (its pid file names a live ``prefect server`` on that port whose ``PREFECT_HOME``
is this project's): on a shared host the port may be someone else's, and our runs and
artifacts would go to them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from metarec.config import PrefectParams
from metarec.errors import MetarecError
from metarec.schema import is_loopback

LOG_NAME, PID_NAME = "server.log", "server.pid"


class ServerError(MetarecError):
    """The local Prefect server could not be started or reached."""


@dataclass(frozen=True)
class Server:
    """A healthy local server: its API address, and its pid when this project started it."""

    api_url: str
    home: Path
    pid: int | None
    started: bool  # False: an already-running server was reused

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def api_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/api"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``<url>/health`` answers 200 (the server is up and its database is ready)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_env(home: Path, url: str) -> dict[str, str]:
    """Environment for the server and for clients of it: project-local home, no telemetry."""
    env = dict(os.environ)
    env.update({"PREFECT_HOME": str(home), "PREFECT_API_URL": url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_API_URL": url})
    return env


def server_command(host: str, port: int) -> list[str]:
    """``prefect server start`` from this interpreter's environment."""
    return [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", host,
            "--port", str(port)]


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate the server's process group (uvicorn workers included) and reap it."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start(params: PrefectParams, project_dir: str | Path = ".",
          command: Sequence[str] | None = None) -> tuple[Server, subprocess.Popen[bytes] | None]:
    """Reuse a healthy server on the port, or start one and wait for ``/api/health``.

    Returns the server and, when started here, its process (in its own session, so it
    outlives this process unless stopped: `make run` leaves it up for the UI). Raises
    :class:`ServerError` (after killing what it started) when it does not come up in time.
    """
    home = (Path(project_dir) / params.home).resolve()
    url = api_url(params.host, params.port)
    exposed = not is_loopback(params.host)
    if exposed and not params.open_to_network:
        raise ServerError(f"prefect.host {params.host!r} is not a loopback address; set "
                          "prefect.open_to_network: true to serve on the network")
    if is_healthy(url):
        pid = _read_pid(home)
        if pid is None or not _ours(pid, home, params.port):
            raise ServerError(
                f"a Prefect server this project did not start answers on {url} (pid file "
                f"{home / PID_NAME}: {pid or 'none'}); it may be someone else's, and would "
                "receive this project's runs and artifacts: stop it or set another "
                "prefect.port")
        return Server(url, home, pid, started=False), None
    if exposed:
        print(f"warning: the Prefect server listens on {params.host}:{params.port} "
              "(prefect.open_to_network): anyone who can reach it can read every run and "
              "artifact, user ids included, and start runs; it has no authentication",
              file=sys.stderr, flush=True)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / LOG_NAME
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(command or server_command(params.host, params.port)),
                                env=server_env(home, url), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + params.startup_timeout_s
        while not is_healthy(url):
            if proc.poll() is not None:
                raise ServerError(f"the Prefect server exited with code {proc.returncode} "
                                  f"before answering {url}/health (port {params.port} taken?). "
                                  f"End of {log_path}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ServerError(f"the Prefect server did not answer {url}/health within "
                                  f"{params.startup_timeout_s} s (prefect.startup_timeout_s); "
                                  f"stopped it. End of {log_path}:\n{_tail(log_path)}")
            time.sleep(0.5)
    except BaseException:  # timeout, early exit or Ctrl-C: leave nothing behind
        _stop_group(proc)
        raise
    (home / PID_NAME).write_text(str(proc.pid), encoding="utf-8")
    return Server(url, home, proc.pid, started=True), proc


def _ours(pid: int, home: Path, port: int) -> bool:
    """True when ``pid`` is a live ``prefect server`` on ``port`` whose PREFECT_HOME is
    ``home`` (Linux /proc; elsewhere: the pid is alive)."""
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return not Path("/proc/self").exists()     # no /proc on this system: trust the pid
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    serves = b"server" in argv and b"start" in argv and str(port).encode() in argv
    return serves and f"PREFECT_HOME={home}".encode() in environ


def _read_pid(home: Path) -> int | None:
    try:
        return int((home / PID_NAME).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def stop(params: PrefectParams, project_dir: str | Path = ".") -> bool:
    """Stop the server this project started (pid file), if it is still a Prefect server."""
    home = (Path(project_dir) / params.home).resolve()
    pid = _read_pid(home)
    if pid is None:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        cmdline = b""
    (home / PID_NAME).unlink(missing_ok=True)
    if b"prefect" not in cmdline or b"server" not in cmdline:
        return False  # gone, or the pid now belongs to something else
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    return True


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def serve_forever(params: PrefectParams, project_dir: str | Path = ".") -> None:
    """`make ui`: start (or find) the server, print its address, stay until Ctrl-C."""
    server, proc = start(params, project_dir)
    print(f"Prefect UI: {server.ui_url}  (database under {server.home})", flush=True)
    if proc is None:
        print(f"already running (pid {server.pid or 'unknown'}); `metarec ui --stop` stops "
              "one this project started", flush=True)
        return
    print("Ctrl-C stops it.", flush=True)
    # SIGTERM (and SIGINT where a background shell ignores it) must reach the finally below
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _stop_group(proc)
        (server.home / PID_NAME).unlink(missing_ok=True)
