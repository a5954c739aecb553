"""`make run` and `metarec serve` against the project's local Prefect server.

``main`` (``python -m metarec.orchestration.local``): start or reuse the server, run the
training flow, the nightly flow for ``score.as_of`` and the backtest stage (``dvc repro -s
backtest``: every stage of ``dvc.yaml`` has run, so ``dvc status`` is clean), then print one
cold-start user's recommendations (``make run`` ends with ``metarec summary``). The server is
left running so the runs can be inspected (``metarec ui --stop`` stops it).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from metarec.config import PrefectParams
from metarec.orchestration import PROJECT_ROOT, load_flow
from metarec.orchestration.project import ProjectPaths
from metarec.orchestration.server import Server, start
from metarec.params import load_params

DEPLOYMENT = "metarec-nightly"
RETRAIN = "metarec-retrain"


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


def serve_project(project_dir: Path = PROJECT_ROOT) -> None:
    """Register and serve the nightly (``prefect.nightly_cron``) and the retraining
    (``prefect.retrain_cron``) deployments on the project's server; blocks until Ctrl-C.

    Each scheduled nightly run scores the clock's next night (``prefect.clock``); a retraining
    run is ``dvc repro`` stage by stage, a no-op when data, code and params are unchanged.
    """
    from prefect import serve

    project_dir = project_dir.resolve()
    params = load_params(project_dir / "params.yaml")
    server = use_local_server(params.prefect, project_dir)
    os.chdir(project_dir)  # deployments refer to flows/*.py relative to here
    nightly = load_flow("nightly", project_dir).to_deployment(
        name=DEPLOYMENT, cron=params.prefect.nightly_cron,
        parameters={"project_dir": str(project_dir)})
    retrain = load_flow("training", project_dir).to_deployment(
        name=RETRAIN, cron=params.prefect.retrain_cron,
        parameters={"project_dir": str(project_dir)})
    print(f"serving {DEPLOYMENT} ({params.prefect.nightly_cron!r}) and {RETRAIN} "
          f"({params.prefect.retrain_cron!r}); UI {server.ui_url}/deployments; Ctrl-C stops",
          flush=True)
    serve(nightly, retrain)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="training + one nightly flow on the local "
                                                 "Prefect server")
    parser.add_argument("--as-of", default=None,
                        help="nightly date (YYYY-MM-DD, UTC); default params.yaml score.as_of")
    parser.add_argument("--project", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    project = args.project.resolve()
    params = load_params(project / "params.yaml")
    server = use_local_server(params.prefect, project)

    from rich.console import Console

    from metarec.orchestration.stages import run_stage
    from metarec.orchestration.tasks import examples

    console = Console()
    console.print(f"Prefect server: {server.ui_url} "
                  f"({'started, pid ' + str(server.pid) if server.started else 'reused'})")
    load_flow("training", project)(project_dir=str(project))
    result = load_flow("nightly", project)(as_of=args.as_of or params.score.as_of,
                                           project_dir=str(project))
    # the last stage of dvc.yaml too, so that `dvc status` is clean after `make run`
    run_stage("backtest", str(project))
    console.print(examples(result["batch"], ProjectPaths.of(project).validated, users=1),
                  markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
