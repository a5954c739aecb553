"""What a person sees, through headless Chromium (Debian package ``chromium``; skipped with the
reason where it is absent): the HTML report shows the answer and its curves, and the Prefect
UI's run and artifact pages show the headline table and a plot."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metarec.config import PrefectParams
from metarec.orchestration import server as prefect_server
from metarec.orchestration.uicheck import check_ui, chromium, render

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium() is None,
                                 reason="Chromium is not installed (apt-get install chromium)")]


def _png_has_content(path: Path) -> bool:
    """A screenshot that is not one flat colour (a page that rendered something)."""
    from matplotlib import image

    pixels = image.imread(str(path))
    return float(pixels[..., :3].std()) > 0.02


def test_the_html_report_shows_the_answer_and_its_curves(synthetic_project: dict,
                                                         tmp_path: Path) -> None:
    page = synthetic_project["root"] / "eval" / "index.html"
    dom = render(page.as_uri(), tmp_path / "report.png", budget_ms=2000)
    assert 'id="verdicts"' in dom and "<li>user-cold ndcg@20:" in dom
    assert dom.count('src="data:image/png;base64,') >= 2
    assert _png_has_content(tmp_path / "report.png")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_prefect_ui_shows_the_headline_and_a_plot(synthetic_project: dict,
                                                      tmp_path: Path) -> None:
    params = PrefectParams(port=_free_port(), home=str(tmp_path / "prefect"),
                           startup_timeout_s=120)
    srv, _ = prefect_server.start(params, tmp_path)
    try:
        report = synthetic_project["root"] / "eval" / "report.md"
        script = textwrap.dedent(f"""
            from prefect import flow
            from metarec.orchestration.tasks import publish_evaluation

            @flow(name="metarec-training")
            def training():
                publish_evaluation({str(report)!r},
                                   {str(synthetic_project['root'] / 'eval.json')!r})

            training()
        """)
        env = {**os.environ, "PREFECT_API_URL": srv.api_url}
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300,
                       capture_output=True)
        found = check_ui(srv.api_url, tmp_path / "shots")
        for shot in found["screenshots"]:
            assert _png_has_content(Path(shot)), shot
    finally:
        prefect_server.stop(params, tmp_path)
