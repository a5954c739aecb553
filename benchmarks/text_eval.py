"""Item text in the pipeline itself: every meta-learner with and without the title vectors.

    .venv/bin/python benchmarks/text_eval.py [--params benchmarks/params/ml100k_text.yaml]
                                             [--out benchmarks/results/text_eval.json]

Overlays the params file on the project's ``params.yaml`` (ML-100K, titles encoded by the
built-in hashed n-gram encoder, ``train.text_ablation: true``), builds the project in a
temporary folder and runs the stage commands up to ``evaluate`` (what ``dvc repro evaluate``
runs: :func:`platforms.run_stages`). The train stage fits each meta-learner twice, with the
text vectors and on the episodes without them (``<name>~notext``); the evaluation scores both
on the same test tasks and writes their paired difference per scenario and K
(``metrics/eval.json: text``). This script copies those rows, the number of test users per
group and the stage times to ``benchmarks/results/text_eval.json``; README's table is generated
from it by ``benchmarks/table.py``. Unlike ``benchmarks/text_ablation.py`` (one seed, item-id
dropout too, inner steps chosen by the script), this is the pipeline's own evaluation: every
seed, the inner steps chosen on validation by the evaluate stage.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from platforms import print_with_without, run_stages

from metarec.params import overlaid

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "benchmarks" / "params" / "ml100k_text.yaml"
RESULT = ROOT / "benchmarks" / "results" / "text_eval.json"


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=BASE)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    start = time.perf_counter()
    raw = overlaid(yaml.safe_load((ROOT / "params.yaml").read_text()),
                  yaml.safe_load(args.params.read_text()))
    with tempfile.TemporaryDirectory(prefix="metarec-text-") as tmp:
        cwd = Path(tmp)
        merged = cwd / "merged.yaml"
        merged.write_text(yaml.safe_dump(raw, sort_keys=False))
        seconds = run_stages(merged, cwd)
        ev = json.loads((cwd / "metrics" / "eval.json").read_text())
    report = {"params": str(args.params.relative_to(ROOT)) if args.params.is_relative_to(ROOT)
              else str(args.params),
              "dataset": ev["dataset"], "catalogue_metric": ev["catalogue_metric"],
              "confidence": ev["bootstrap"]["confidence"],
              "item_cold_catalogue": raw["evaluate"]["item_cold_catalogue"],
              "seeds": raw["train"]["seeds"],
              "text_encoder": raw["episodes"]["text_encoder"],
              "text": ev.get("text", []),
              "seconds": {**seconds, "total": round(time.perf_counter() - start, 1)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_with_without(report["text"], "scenario")
    return report


if __name__ == "__main__":
    main()
