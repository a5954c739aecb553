"""What a person sees, through headless Chromium (Debian package ``chromium``; skipped with the
reason where it is absent): the HTML report's first screen holds the verdicts with their users
and its figures are drawn large; the Prefect UI's run and artifact pages show the headline
table and each plot at least 800 x 400 px, with no data URI printed as text."""

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
from metarec.orchestration.uicheck import UICheckFailed, check_report, check_ui, chromium

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium() is None,
                                 reason="Chromium is not installed (apt-get install chromium)")]


def _png_has_content(path: Path) -> bool:
    """A screenshot that is not one flat colour (a page that rendered something)."""
    from matplotlib import image

    pixels = image.imread(str(path))
    return float(pixels[..., :3].std()) > 0.02


def test_the_html_report_answers_on_its_first_screen(synthetic_project: dict,
                                                     tmp_path: Path) -> None:
    page = synthetic_project["root"] / "eval" / "index.html"
    found = check_report(page, tmp_path)
    assert found["figures"] == 4 and _png_has_content(Path(found["screenshot"]))
    # the check sees what is on screen: the same page with the verdicts pushed below the
    # first screen fails it (planted)
    pushed = tmp_path / "pushed.html"
    text = page.read_text()
    pushed.write_text(text.replace("<h2>The answer</h2>",
                                   '<div style="height:1200px"></div><h2>The answer</h2>'))
    with pytest.raises(UICheckFailed, match="below the first screen"):
        check_report(pushed, tmp_path / "pushed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_prefect_ui_shows_the_headline_and_each_plot_large(synthetic_project: dict,
                                                               tmp_path: Path) -> None:
    """Planted: the plots published as image artifacts (as before issue 37) failed this:
    'a data URI is printed as text'."""
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
        assert {"run", "headline", "curve-ndcg-at-20-vs-k"} <= set(found["pages"])
        for shot in found["screenshots"]:
            assert _png_has_content(Path(shot)), shot
    finally:
        prefect_server.stop(params, tmp_path)
