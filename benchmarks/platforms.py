"""Cold on one platform, known on the others: does the other platforms' history help?

    .venv/bin/python benchmarks/platforms.py [--params benchmarks/params/platforms.yaml]
                                             [--out benchmarks/results/platforms.json]

Builds a project in a temporary folder from the params file (a synthetic log on three
platforms with a per-platform taste shift; only the keys it names differ from the defaults)
and runs the commands of ``dvc.yaml``'s stages up to ``evaluate`` (``metarec ingest``,
``validate``, ``episodes``, ``train``, ``evaluate``: what ``dvc repro evaluate`` runs). The
evaluation scores every model on the platform_cold test tasks twice, on the support of the
new platform alone and with the user's history on the other platforms added
(``metrics/eval.json: cross_platform``); this script copies those rows, the per-model
results of both groups, each model's best validation loss (``metrics/train.json``, mean over
seeds) and each network's learned trust in the other platforms' support to
``benchmarks/results/platforms.json`` (``--out``: elsewhere). README's platform table is
generated from it by ``benchmarks/table.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from metarec import dag

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "benchmarks" / "params" / "platforms.yaml"
RESULT = ROOT / "benchmarks" / "results" / "platforms.json"
METAREC = str(Path(sys.executable).parent / "metarec")
STAGES = dag.until("evaluate")


def learned_trust(models: Path) -> dict[str, float]:
    """Each network model's learned weight of a support item from another platform
    (``2 sigmoid(cross_trust)``; 1 = as much as one from the task's own platform)."""
    from metarec.checkpoint import read_checkpoint

    out = {}
    for path in sorted(models.glob("seed*/*.pt")):
        weights = read_checkpoint(path)["state"].get("state_dict", {})
        if "cross_trust" in weights:
            key = f"{path.parent.name}/{path.stem}"
            out[key] = round(float(2 * torch.sigmoid(weights["cross_trust"])), 4)
    return out


def val_losses(train: dict) -> dict[str, float]:
    """Each model's best validation loss (``metrics/train.json``), the mean over seeds: what
    a choice between settings is made on (never the test tasks)."""
    per: dict[str, list[float]] = {}
    for models in train["seeds"].values():
        for name, record in models.items():
            if record.get("best_val_loss") is not None:
                per.setdefault(name, []).append(float(record["best_val_loss"]))
    return {name: round(sum(v) / len(v), 6) for name, v in sorted(per.items())}


def run_stages(params: Path, cwd: Path) -> dict[str, float]:
    """``params`` as ``cwd/params.yaml``, then the stage commands up to ``evaluate`` in
    ``cwd`` (what ``dvc repro evaluate`` runs); returns each stage's seconds. A failing stage
    ends the script with its error."""
    shutil.copy(params, cwd / "params.yaml")
    seconds = {}
    for stage in STAGES:
        t0 = time.perf_counter()
        done = subprocess.run([METAREC, stage, "--params", "params.yaml"], cwd=cwd,
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"metarec {stage} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        seconds[stage] = round(time.perf_counter() - t0, 1)
        print(f"{stage}: {seconds[stage]} s", flush=True)
    return seconds


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=BASE)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="metarec-platforms-") as tmp:
        cwd = Path(tmp)
        seconds = run_stages(args.params, cwd)
        ev = json.loads((cwd / "metrics" / "eval.json").read_text())
        trust = learned_trust(cwd / "models")
        val = val_losses(json.loads((cwd / "metrics" / "train.json").read_text()))
        data = json.loads((cwd / "metrics" / "data.json").read_text())
    groups = {r["without"] for r in ev["cross_platform"]} | {
        r["with"] for r in ev["cross_platform"]}
    report = {"params": str(args.params.relative_to(ROOT)) if args.params.is_relative_to(ROOT)
              else str(args.params),
              "dataset": ev["dataset"], "catalogue_metric": ev["catalogue_metric"],
              "tasks": data["tasks"]["test"].get("platform_cold", {}),
              "too_few": data["too_few"].get("test_platform", {}),
              "confidence": ev["bootstrap"]["confidence"],
              "learned_trust": trust,
              "best_val_loss": val,
              "cross_platform": ev["cross_platform"],
              "results": [r for r in ev["results"] if r["scenario"] in groups],
              "seconds": {**seconds, "total": round(time.perf_counter() - start, 1)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("learned trust of another platform's support items:", trust)
    print("best validation loss (mean over seeds):", val)
    print_with_without(report["cross_platform"], "without")
    return report


def print_with_without(rows: list[dict], group: str) -> None:
    """One line per with/without row of ``metrics/eval.json`` (``cross_platform`` or
    ``text``): model, its ``group`` field, K, the two means, the difference and its CI."""
    for r in rows:
        print(f"{r['model']:13s} {r[group]:20s} K={r['k']!s:4s} without "
              f"{r['value_without']:.4f} -> with {r['value_with']:.4f}  {r['diff']:+.4f} "
              f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] ({r['users']} users)")


if __name__ == "__main__":
    main()
