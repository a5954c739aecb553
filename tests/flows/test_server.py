"""Local server management without a real Prefect server: fake servers that never answer,
die at once, or are already healthy. (`make run` / `make ui` exercise the real one.)"""

from __future__ import annotations

import http.server
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from metarec.config import PrefectParams
from metarec.orchestration.server import ServerError, start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def params_for(tmp_path: Path, port: int) -> PrefectParams:
    return PrefectParams(port=port, home=str(tmp_path / ".prefect"), startup_timeout_s=2)


def test_a_server_that_never_answers_times_out_and_is_reaped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    fake = [sys.executable, "-c",
            f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
            "time.sleep(60)"]
    with pytest.raises(ServerError, match="did not answer .*/api/health within 2 s"):
        start(params_for(tmp_path, free_port()), tmp_path, command=fake)
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped: no zombie left


def test_a_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    fake = [sys.executable, "-c", "import sys; print('port already in use'); sys.exit(3)"]
    with pytest.raises(ServerError, match="(?s)exited with code 3.*port already in use"):
        start(params_for(tmp_path, free_port()), tmp_path, command=fake)


@pytest.fixture
def healthy_port() -> Iterator[int]:
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()


def test_a_healthy_server_this_project_did_not_start_is_never_reused(
        tmp_path: Path, healthy_port: int) -> None:
    """Someone else's server on the port (here: no pid file, then a pid file naming a live
    process that is no Prefect server) would receive our runs and artifacts: refused."""
    params = params_for(tmp_path, healthy_port)
    never = [sys.executable, "-c", "raise SystemExit('must not start')"]
    with pytest.raises(ServerError, match=r"a Prefect server this project did not start "
                                          r"answers on http://127.0.0.1:\d+/api \(pid file "
                                          r".*server.pid: none\)"):
        start(params, tmp_path, command=never)
    home = tmp_path / ".prefect"
    home.mkdir()
    (home / "server.pid").write_text(str(os.getpid()))        # alive, but not a server
    with pytest.raises(ServerError, match="did not start"):
        start(params, tmp_path, command=never)


FAKE = ("import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'true')\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('127.0.0.1', int(sys.argv[-1])), H).serve_forever()\n")


def test_the_server_this_project_started_is_reused_and_no_other_project_takes_it(
        tmp_path: Path) -> None:
    port = free_port()
    fake = [sys.executable, "-c", FAKE, "prefect", "server", "start", "--port", str(port)]
    params = params_for(tmp_path, port)
    first, proc = start(params, tmp_path, command=fake)
    try:
        assert first.started and proc is not None and first.pid == proc.pid
        again, none = start(params, tmp_path, command=fake)
        assert none is None and not again.started and again.pid == proc.pid
        other = tmp_path / "other"
        with pytest.raises(ServerError, match="did not start"):
            start(params_for(other, port), other, command=fake)
    finally:
        from metarec.orchestration.server import _stop_group

        _stop_group(proc)


def test_a_network_host_needs_the_opt_in_and_is_announced(tmp_path: Path, capsys) -> None:
    port = free_port()
    fake = [sys.executable, "-c", FAKE, "prefect", "server", "start", "--port", str(port)]
    closed = PrefectParams(host="0.0.0.0", port=port, home=str(tmp_path / ".prefect"),
                           startup_timeout_s=5)
    with pytest.raises(ServerError, match="not a loopback address; set "
                                          "prefect.open_to_network: true"):
        start(closed, tmp_path, command=fake)
    opened = PrefectParams(host="0.0.0.0", open_to_network=True, port=port,
                           home=str(tmp_path / ".prefect"), startup_timeout_s=30)
    server, proc = start(opened, tmp_path, command=fake)   # the fake itself binds loopback
    try:
        err = " ".join(capsys.readouterr().err.split())
        assert "listens on 0.0.0.0:" in err and "anyone who can reach it can read every run" in err
        assert "start runs; it has no authentication" in err
    finally:
        from metarec.orchestration.server import _stop_group

        _stop_group(proc)
