"""Where a project keeps its files, read from its ``dvc.yaml`` (never typed twice).

The flows take every path from the stage commands of ``dvc.yaml`` (``--in``, ``--models``,
``--out``, ...), so moving a folder is one edit of the pipeline file.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from metarec.errors import ParamsError


def stage_options(root: Path, stage: str) -> dict[str, str]:
    """``--option value`` pairs of ``stage``'s command in ``root/dvc.yaml``."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    if stage not in spec:
        raise ParamsError(f"{root / 'dvc.yaml'}: no stage {stage!r}")
    words = shlex.split(str(spec[stage]["cmd"]))
    return {w.lstrip("-"): words[i + 1] for i, w in enumerate(words[:-1])
            if w.startswith("--") and not words[i + 1].startswith("--")}


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
