"""Local server management without a real Prefect server: fake servers that never answer,
die at once, or are already healthy. (`make run` / `make ui` exercise the real one.)"""

from __future__ import annotations

import http.server
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


def test_a_healthy_server_on_the_port_is_reused(tmp_path: Path, healthy_port: int) -> None:
    server, proc = start(params_for(tmp_path, healthy_port), tmp_path,
                         command=[sys.executable, "-c", "raise SystemExit('must not start')"])
    assert proc is None and not server.started
    assert server.api_url == f"http://127.0.0.1:{healthy_port}/api"
