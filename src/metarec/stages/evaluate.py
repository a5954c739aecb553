"""Stage `evaluate`: every trained model on the test tasks, per scenario, K and seed (wiring
only: the library is :mod:`metarec.eval.evaluation`).

Writes ``metrics/eval.json``, ``metrics/selection.json`` (what the nightly batch serves: the
model, each model's seed and test-time inner steps chosen on validation),
``reports/eval/report.md``, ``index.html`` and the curves in ``reports/eval/plots/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metarec.config import EvaluateParams
from metarec.eval.document import write_report
from metarec.eval.evaluation import evaluate
from metarec.eval.groups import nearest_k
from metarec.eval.scoring import catalogue_metric, metric_names
from metarec.io import write_json


def run(params: EvaluateParams, episodes_dir: str | Path, models_dir: str | Path,
        metrics_path: str | Path, report_dir: str | Path,
        selection_path: str | Path | None = None) -> dict[str, Any]:
    """Evaluate every model; write metrics, the serving choice, report and plots."""
    result = evaluate(params, episodes_dir, models_dir)
    write_json(result, metrics_path)
    if selection_path is not None:
        write_json(result["serving"], selection_path)
    ks = sorted({r["k"] for r in result["results"] if r["k"] != "all"})
    ref_k = nearest_k(ks, params.curve_k)
    write_report(result, Path(report_dir), metric_names(params), catalogue_metric(params),
                 params.bootstrap_confidence, ref_k)
    return result
