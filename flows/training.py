"""Training flow: ingest → validate → episodes → train → evaluate, then publish the reports.

Each step is one ``dvc repro -s <stage>`` (see :mod:`metarec.orchestration.stages`), so DVC
skips what is up to date and records what ran; ingest comes first so a fresh checkout works,
and is skipped by DVC when its params and code are unchanged. Retries (transient failures
only) come from params.yaml's ``prefect`` section.

Run: ``python flows/training.py [PROJECT_DIR]`` (on the local server, or the one
``PREFECT_API_URL`` names), or ``make run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from metarec import dag
from metarec.orchestration.local import use_local_server
from metarec.orchestration.project import ProjectPaths, project_locked
from metarec.orchestration.stages import run_stage, sync_pipeline, with_retries
from metarec.orchestration.tasks import publish_evaluation, publish_validation
from metarec.params import load_params


@flow(name="metarec-training")
def training(project_dir: str = ".") -> dict[str, str]:
    """Run the DVC pipeline stage by stage (under the project lock: a nightly run never
    reads a model this run replaces); publish validation and evaluation artifacts."""
    paths = ProjectPaths.of(project_dir)
    params = load_params(paths.root / "params.yaml")
    stage = with_retries(run_stage, params.prefect)
    with project_locked(paths.root, "the training flow", params):
        sync_pipeline(str(paths.root))
        for name in dag.until("evaluate"):
            stage(name, str(paths.root))
    publish_validation(str(paths.validation_summary))
    publish_evaluation(str(paths.report), str(paths.eval_metrics))
    return {"project": str(paths.root), "report": str(paths.report)}


if __name__ == "__main__":
    project = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    use_local_server(load_params(project / "params.yaml").prefect, project)
    training(str(project))
