"""Look at the Prefect UI as a person would: headless Chromium renders the pages of the latest
training run and its artifacts, and the rendered DOM must show the headline table and a plot.

The UI is a single-page app, so each page gets a virtual-time budget to render before its DOM
is dumped and a screenshot taken (``<out>/<page>.png``). ``metarec ui-check`` runs it against
the project's server (the one ``make run`` leaves up); the tests run it on a fresh one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from metarec.errors import MetarecError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1400,1800"]


class UICheckFailed(MetarecError):
    """A page did not show what it should."""


def chromium() -> str | None:
    """The Chromium binary, or None when it is not installed (Debian package ``chromium``)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str, screenshot: Path, budget_ms: int = 20_000) -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time; a PNG screenshot beside it."""
    binary = chromium()
    if binary is None:
        raise UICheckFailed("Chromium is not installed (apt-get install chromium)")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="metarec-chromium-") as profile:
        common = [binary, *FLAGS, f"--user-data-dir={profile}",
                  f"--virtual-time-budget={budget_ms}"]
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120).stdout
        subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True,
                       timeout=120)
    return dom


def _post(api: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def check_ui(api_url: str, out: Path, flow_name: str = "metarec-training") -> dict[str, Any]:
    """Render the latest ``flow_name`` run page, its headline artifact and one curve; raise
    :class:`UICheckFailed` unless the headline table and a plot are on screen."""
    api = api_url.rstrip("/")
    ui = api.removesuffix("/api")
    runs = _post(api, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 50})
    flows = {f["id"]: f["name"] for f in _post(api, "/flows/filter", {})}
    run = next((r for r in runs if flows.get(r["flow_id"]) == flow_name), None)
    if run is None:
        raise UICheckFailed(f"no {flow_name} run on {ui}; run `make run` first")
    arts = _post(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
    by_key = {a["key"]: a for a in arts if a.get("key")}
    headline = by_key.get("evaluation-headline")
    curve = next((a for k, a in sorted(by_key.items()) if k.startswith("curve-")), None)
    if headline is None or curve is None:
        raise UICheckFailed(f"run {run['name']} has no headline or curve artifact")
    pages = {"run": f"{ui}/runs/flow-run/{run['id']}",
             "headline": f"{ui}/artifacts/artifact/{headline['id']}",
             "curve": f"{ui}/artifacts/artifact/{curve['id']}"}
    doms = {name: render(url, out / f"{name}.png") for name, url in pages.items()}
    rows = json.loads(headline["data"])
    problems = []
    if run["name"] not in doms["run"]:
        problems.append(f"the run page does not show the run's name {run['name']!r}")
    if not rows or str(rows[0]["meta-learner"]) not in doms["headline"] or \
            "<table" not in doms["headline"]:
        problems.append("the headline artifact page shows no table with the meta-learner")
    if "<img" not in doms["curve"] or "data:image/png" not in doms["curve"]:
        problems.append("the curve artifact page shows no image")
    if problems:
        raise UICheckFailed("; ".join(problems) + f" (screenshots in {out})")
    return {"pages": pages, "screenshots": sorted(str(p) for p in out.glob("*.png"))}
