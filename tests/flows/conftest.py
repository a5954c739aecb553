"""Flow tests: one Prefect test server for the session and a small throwaway project.

The project is a copy of this repository's dvc.yaml, params.yaml (shrunk: a synthetic log of
300 users, MAML only, 10 outer steps, one seed) and sources, under ``dvc init --no-scm``, so
the flows run the real ``dvc repro -s <stage>`` commands in well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from prefect.testing.utilities import prefect_test_harness

from .flow_helpers import make_project


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[None]:
    """The only harness of the flows tests (never nested): a temporary server and database."""
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("flows") / "project")


@pytest.fixture(scope="session")
def trained(project: Path) -> UUID:
    """The training flow run once on the small project; its flow run id."""
    from metarec.orchestration import load_flow

    state = load_flow("training", project)(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    return state.state_details.flow_run_id
