"""Where a project keeps its files, read from its ``dvc.yaml`` (never typed twice).

The flows take every path from the stage commands of ``dvc.yaml`` (``--in``, ``--models``,
``--out``, ...), so moving a folder is one edit of the pipeline file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from metarec.config import Params
from metarec.io import lock_file, project_lock
from metarec.pipeline import stage_options


@dataclass(frozen=True)
class ProjectPaths:
    """The folders the nightly flow reads and writes, absolute."""

    root: Path
    validated: Path
    models: Path
    batches: Path
    selection: Path
    report: Path
    eval_metrics: Path
    validation_summary: Path

    @classmethod
    def of(cls, root: str | Path) -> ProjectPaths:
        root = Path(root).resolve()
        score, evaluate = stage_options(root, "score"), stage_options(root, "evaluate")
        validate = stage_options(root, "validate")
        return cls(root=root, validated=root / score["in"], models=root / score["models"],
                   batches=root / score["out"], selection=root / score["selection"],
                   report=root / evaluate["report"] / "report.md",
                   eval_metrics=root / evaluate["metrics"],
                   validation_summary=root / validate["report"] / "summary.json")


def project_locked(root: str | Path, what: str, params: Params
                   ) -> contextlib.AbstractContextManager[None]:
    """The project's one lock (``.metarec.lock`` beside dvc.yaml) for a flow that writes data,
    models or batches, held from its first read to its last write; its ``dvc repro`` stages
    run under it. Another holder: wait ``prefect.lock_wait_s``, then fail naming it."""
    return project_lock(lock_file(root), what, params.prefect.lock_wait_s)
