"""What `make run` and `metarec summary` print last: the answer in about 20 lines.

Data in, the verdict per scenario (best meta-learner against the best baseline, with CIs), the
model the nightly batch used and why, the batch itself, where the full report and the UI are,
and the one command that schedules the nightly run. Full tables stay in
``reports/eval/report.md`` (and ``index.html``) and ``dvc metrics show``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from metarec.eval.headline import verdict_lines
from metarec.io import read_json


def _latest_batch(batches: Path) -> tuple[Path, dict[str, Any]] | None:
    manifests = sorted(batches.glob("*/manifest.json"))
    if not manifests:
        return None
    return manifests[-1].parent, read_json(manifests[-1])


def summary_lines(project: Path, ui_url: str | None = None) -> list[str]:
    """The summary as plain lines (no markup), from the files the pipeline wrote."""
    lines = []
    data_path = project / "metrics/data.json"
    if not data_path.exists():
        return [f"{data_path} not found: run `make run` (or `dvc repro`) first"]
    data = read_json(data_path)
    lines.append(f"data: {data.get('dataset')}: {data.get('interactions', 0):,} interactions "
                 f"in, {data.get('quarantined', 0):,} quarantined; {data.get('users', 0):,} "
                 f"users, {data.get('items', 0):,} items")
    eval_path = project / "metrics/eval.json"
    if eval_path.exists():
        result = read_json(eval_path)
        conf = result.get("bootstrap", {}).get("confidence", 0.95)
        verdicts = verdict_lines(result.get("headline", []), conf)
        lines += ["", "verdict (test tasks; every choice made on validation):",
                  *[f"  {v}" for v in verdicts]]
    selection = project / "metrics/selection.json"
    if selection.exists():
        chosen = read_json(selection)
        lines += ["", f"nightly model: {chosen.get('model')} ({chosen.get('kind')}; "
                      f"score.model: auto; {chosen.get('why')})"]
    latest = _latest_batch(project / "data/recommendations")
    if latest is not None:
        folder, manifest = latest
        lines.append(f"batch {manifest['as_of']}: {manifest['users']:,} users "
                     f"({manifest['cold_users']:,} cold), {manifest['rows']:,} rows, model "
                     f"{manifest.get('model_name')} -> {folder.relative_to(project)}/")
    lines += ["", "full report: reports/eval/index.html (report.md; figures in plots/; every "
                  "model in appendix.md); all metrics: dvc metrics show",
              f"Prefect UI: {ui_url or 'make ui'} (runs, task logs, artifacts)",
              "schedule the nightly and weekly retraining runs: make serve "
              "(metarec serve; Ctrl-C stops)",
              "one user's history and recommendations: metarec show-user USER --as-of DATE"]
    return lines


def print_summary(project: Path, console: Console | None = None,
                  ui_url: str | None = None) -> None:
    console = console or Console()
    for line in summary_lines(project, ui_url):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
