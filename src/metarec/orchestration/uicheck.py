"""Look at the Prefect UI and the HTML report as a person would: headless Chromium renders the
pages of the latest training run, its artifacts and ``reports/eval/index.html`` at 1400 px,
and what is on screen is checked, not the markup.

- the run page shows the run's name;
- the headline artifact shows a table with the meta-learner;
- each plot artifact draws its figure at least 800 x 400 px and prints no data URI as text
  (Prefect's image artifacts print the whole ``data:`` URI under the picture; the plots are
  Markdown images, which it does not);
- the run's log has no record that continues another (a line cut by rich, a second level
  inside a message) and none of DVC's noise (empty-file warnings, git hints);
- the HTML report's first screen (1400 x 900) holds the verdicts with their user counts.

Each page is saved as ``<out>/<page>.png`` (the README shows them). ``metarec ui-check`` runs
it against the project's server (the one ``make run`` leaves up); the tests run it on a fresh
one.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from metarec.errors import MetarecError
from metarec.orchestration.browser import Browser, chromium

__all__ = ["UICheckFailed", "check_report", "check_ui", "chromium", "log_problems"]

WIDTH, FIRST_SCREEN = 1400, 900
UI_HEIGHT = 1400            # the UI scrolls inside its own pane: a window tall enough for a plot
MIN_PLOT = (800, 400)       # the smallest a figure may be drawn, CSS px (width, height)
# the largest image on the page: its drawn size, where it comes from, whether it loaded
_IMAGES = """(() => [...document.images].map(i => { const r = i.getBoundingClientRect();
  return {w: r.width, h: r.height, top: r.top + window.scrollY, data: i.src.startsWith('data:'),
          loaded: i.complete && i.naturalWidth > 0}; }))()"""
_TEXT = "document.body ? document.body.innerText : ''"


class UICheckFailed(MetarecError):
    """A page did not show what it should."""


def _post(api: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _js(text: str) -> str:
    return json.dumps(text)


def _big_image_loaded() -> str:
    return "[...document.images].some(i => i.complete && i.naturalWidth > 300)"


def _plot_problems(name: str, images: list[dict[str, Any]], text: str) -> list[str]:
    """What is wrong with a plot page: no figure, a figure drawn too small, a URI as text."""
    out = []
    shown = [i for i in images if i["loaded"]]
    best = max(shown, key=lambda i: i["w"] * i["h"], default=None)
    if best is None:
        out.append(f"{name}: no figure on the page")
    elif best["w"] < MIN_PLOT[0] or best["h"] < MIN_PLOT[1]:
        out.append(f"{name}: the figure is drawn {best['w']:.0f} x {best['h']:.0f} px, "
                   f"less than {MIN_PLOT[0]} x {MIN_PLOT[1]}")
    if "data:image" in text:
        out.append(f"{name}: a data URI is printed as text")
    return out


# what a record that continues another, or DVC's noise, looks like in a run's log
_CONTINUED = re.compile(r"^\w[\w-]*: (\s|\[\d\d/\d\d/\d\d \d\d:\d\d:\d\d\])")
_NOISE = ("is empty.", "To track the changes with git", "git add dvc.lock",
          "core.autostage", "INFO:metarec", "INFO     ")


def log_problems(messages: list[str]) -> list[str]:
    """The records of a run's log that continue another (a line rich cut at 80 columns,
    a second timestamp or level inside the message) or carry DVC's noise."""
    bad = []
    for m in messages:
        if _CONTINUED.match(m) or any(n in m for n in _NOISE):
            bad.append(m if len(m) <= 160 else m[:157] + "...")
    return bad


def _run_logs(api: str, run_id: str) -> list[str]:
    """Every log message of a flow run and its tasks, in order (pages of 200)."""
    out: list[str] = []
    while True:
        page = _post(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}},
                                           "sort": "TIMESTAMP_ASC", "offset": len(out),
                                           "limit": 200})
        out += [r["message"] for r in page]
        if len(page) < 200:
            return out


def check_ui(api_url: str, out: Path, flow_name: str = "metarec-training") -> dict[str, Any]:
    """Render the latest ``flow_name`` run page, its headline, report and plot artifacts;
    raise :class:`UICheckFailed` with every problem found (screenshots in ``out``)."""
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
    curves = {k: a for k, a in sorted(by_key.items()) if k.startswith("curve-")}
    if headline is None or not curves:
        raise UICheckFailed(f"run {run['name']} has no headline or plot artifact")
    rows = json.loads(headline["data"])
    model = str(rows[0]["meta-learner"]) if rows else "(none)"
    pages = {"run": (f"{ui}/runs/flow-run/{run['id']}",
                     f"document.body.innerText.includes({_js(run['name'])})"),
             "headline": (f"{ui}/artifacts/artifact/{headline['id']}",
                          f"!!document.querySelector('table') && "
                          f"document.body.innerText.includes({_js(model)})")}
    if "evaluation-report" in by_key:
        pages["report-artifact"] = (f"{ui}/artifacts/artifact/{by_key['evaluation-report']['id']}",
                                    _big_image_loaded())
    pages.update({k: (f"{ui}/artifacts/artifact/{a['id']}", _big_image_loaded())
                  for k, a in curves.items()})
    problems: list[str] = []
    shots = []
    with Browser(WIDTH, UI_HEIGHT) as browser:
        for name, (url, ready) in pages.items():
            try:
                browser.open(url, ready=ready, timeout_s=90)
            except MetarecError as exc:
                problems.append(f"{name}: {exc}")
            shots.append(str(browser.screenshot(out / f"{name}.png")))
            if name.startswith("curve-"):
                problems += _plot_problems(name, browser.evaluate(_IMAGES),
                                           browser.evaluate(_TEXT))
    problems += [f"run log: {m}" for m in log_problems(_run_logs(api, run["id"]))]
    if problems:
        raise UICheckFailed("; ".join(problems) + f" (screenshots in {out})")
    return {"pages": {k: v[0] for k, v in pages.items()}, "screenshots": shots}


def check_report(page: Path, out: Path) -> dict[str, Any]:
    """Render the HTML report: its first screen (1400 x 900) must hold every verdict with
    its user count, and every figure must be drawn at least 800 x 400 px."""
    problems = []
    with Browser(WIDTH, FIRST_SCREEN) as browser:
        browser.open(page.resolve().as_uri(), ready=_big_image_loaded(), timeout_s=60,
                     settle_s=0.2)
        box = browser.evaluate("(() => { const v = document.getElementById('verdicts');"
                               " if (!v) return null; const r = v.getBoundingClientRect();"
                               " return {bottom: r.bottom + window.scrollY,"
                               " text: v.innerText}; })()")
        images = browser.evaluate(_IMAGES)
        shot = browser.screenshot(out / "report.png")
    if box is None:
        problems.append("the report has no verdicts")
    else:
        if box["bottom"] > FIRST_SCREEN:
            problems.append(f"the verdicts end at {box['bottom']:.0f} px, below the first "
                            f"screen ({FIRST_SCREEN} px)")
        lines = [x for x in box["text"].splitlines() if x.strip()]
        if not lines or not all(re.search(r"\(\d+(-\d+)? users\)", x) for x in lines):
            problems.append("a verdict does not say how many users it rests on")
    for i, img in enumerate(images):
        problems += _plot_problems(f"report figure {i + 1}", [img], "")
    if problems:
        raise UICheckFailed("; ".join(problems) + f" (screenshot {shot})")
    return {"screenshot": str(shot), "figures": len(images)}
