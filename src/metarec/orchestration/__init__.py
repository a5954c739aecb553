"""Prefect glue: the local server, tasks that wrap pipeline stages, sharded nightly scoring.

The flows themselves live in ``flows/`` and read like a list of steps; everything they need
that is worth testing on its own (retry policy, shard plans, artifacts, the server) lives here,
in an importable package, so Dask workers can unpickle the tasks by reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect import Flow

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def load_flow(name: str, root: Path = PROJECT_ROOT) -> Flow:
    """The flow ``name`` from ``<root>/flows/<name>.py`` (``flows/`` is not an installed package,
    and Prefect deployments refer to it by this same file path)."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(f"{root / 'flows' / f'{name}.py'}:{name}")
