"""`make run` and `metarec serve` against the project's local Prefect server.

``main`` (``python -m metarec.orchestration.local --as-of 1998-03-15``): start or reuse the
server, run the training flow and one nightly flow, then print the UI address, the evaluation
table and the top-5 recommendations of three cold-start users. The server is left running so
the runs can be inspected (``metarec ui --stop`` stops it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from metarec.config import PrefectParams
from metarec.orchestration import PROJECT_ROOT, load_flow
from metarec.orchestration.server import Server, start
from metarec.params import load_params

DEPLOYMENT = "metarec-nightly"


def use_local_server(params: PrefectParams, project_dir: Path) -> Server:
    """Point this process (and its children) at a Prefect server: the one ``PREFECT_API_URL``
    already names (production), else the project's local one, started or reused.

    Called before the first Prefect client exists, so plain environment variables suffice.
    """
    preset = os.environ.get("PREFECT_API_URL")
    if preset:
        return Server(preset, Path(os.environ.get("PREFECT_HOME", "~/.prefect")), None,
                      started=False)
    server, _ = start(params, project_dir)
    os.environ["PREFECT_API_URL"] = server.api_url
    os.environ["PREFECT_HOME"] = str(server.home)
    return server


def serve_nightly(project_dir: Path = PROJECT_ROOT) -> None:
    """Register the nightly deployment on ``prefect.nightly_cron`` and run its schedule (blocks)."""
    project_dir = project_dir.resolve()
    params = load_params(project_dir / "params.yaml")
    server = use_local_server(params.prefect, project_dir)
    cron = params.prefect.nightly_cron
    print(f"serving {DEPLOYMENT} on cron {cron!r}; UI {server.ui_url}", flush=True)
    os.chdir(project_dir)  # deployments refer to flows/nightly.py relative to here
    load_flow("nightly", project_dir).serve(name=DEPLOYMENT, cron=cron,
                                            parameters={"project_dir": str(project_dir)})


def evaluation_table(metrics: Path) -> str:
    """How well it does: user-cold MAE and catalogue nDCG@20 per model and K, with the
    bootstrap comparisons (the same block as the README's results); the full table of every
    scenario is in reports/eval/report.md."""
    from metarec.eval.readme import results_markdown
    from metarec.io import read_json

    return ("## How well it does (full report: reports/eval/report.md)\n\n"
            + results_markdown(read_json(metrics)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="training + one nightly flow on the local "
                                                 "Prefect server")
    parser.add_argument("--as-of", required=True, help="nightly date (YYYY-MM-DD, UTC)")
    parser.add_argument("--project", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    project = args.project.resolve()
    server = use_local_server(load_params(project / "params.yaml").prefect, project)

    from rich.console import Console

    from metarec.orchestration.tasks import examples

    console = Console()
    console.print(f"Prefect server: {server.ui_url} "
                  f"({'started, pid ' + str(server.pid) if server.started else 'reused'})")
    try:
        load_flow("training", project)(project_dir=str(project))
        result = load_flow("nightly", project)(as_of=args.as_of, project_dir=str(project))
    finally:
        console.print(f"\nPrefect UI: {server.ui_url}  (runs, task logs, artifacts; "
                      "`make ui` later, `metarec ui --stop` to stop the server)")
    # raw Markdown: a rendered table would be cut to the terminal's width
    for text in (evaluation_table(project / "metrics/eval.json"),
                 examples(result["batch"], project / "data/validated")):
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    console.print(f"batch: {result['batch']} ({result['users_scored']} users, "
                  f"{result['seconds']} s)")


if __name__ == "__main__":
    main()
