"""Training and evaluation at the size users bring (issue #39): every stage's time and memory.

    .venv/bin/python benchmarks/scale.py [--params benchmarks/params/scale_10k.yaml]
        [--seeds 0] [--until evaluate] [--keep DIR] [--out benchmarks/results/scale_10k.json]

Runs the pipeline of a shipped params file (only the keys that differ from ``params.yaml``) in
a temporary project folder, each stage as the command ``dvc.yaml`` runs for it (``metarec
ingest``, ``validate``, ``episodes``, ``train``, ``evaluate``: read from ``dvc.yaml``, so the
same code path), one fresh process per stage, so that each stage's peak resident memory
(``ru_maxrss`` of that process and its workers, from ``wait4``) is its own. From
``metrics/train.json`` it keeps every model's fit: seconds, what stopped it (patience, time
budget, max steps) and its steps; and the loss the size rule chose. The JSON is written after
each stage (a long run keeps what it measured) and states the goals it is held to; a stage
that fails is recorded with its exit code and the tail of its error, and the run stops there.
``benchmarks/table.py`` renders every ``scale_*.json`` into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from metarec.params import overlaid

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "validate", "episodes", "train", "evaluate")
# the goals of issue #39 on the 2-core machine, by params file: minutes for the whole run
# (one seed, three seeds) and peak GiB
GOALS: dict[str, dict[str, float]] = {
    "scale_10k": {"minutes_1_seed": 15, "minutes_3_seeds": 30},
    "scale_100k": {"minutes_1_seed": 60, "minutes_3_seeds": 60, "peak_gib": 16},
}


def stage_command(stage: str) -> list[str]:
    """The command ``dvc.yaml`` runs for ``stage``, reading ``params.yaml`` of the folder."""
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    words = shlex.split(cmd)
    if words[0] != "metarec":
        raise SystemExit(f"dvc.yaml: stage {stage} runs {words[0]!r}, not metarec")
    return [str(Path(sys.executable).with_name("metarec")), *words[1:],
            "--params", "params.yaml"]


def run_stage(stage: str, folder: Path) -> dict[str, Any]:
    """Run one stage in ``folder``; its wall seconds, CPU seconds, peak RSS and exit code."""
    start = time.perf_counter()
    with open(folder / f"{stage}.log", "wb") as log:
        proc = subprocess.Popen(stage_command(stage), cwd=folder, stdout=log,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    record = {"stage": stage, "seconds": round(time.perf_counter() - start, 1),
              "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
              # ru_maxrss of wait4: the largest of the process and its waited-for children
              "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "returncode": proc.returncode}
    if proc.returncode:
        record["error_tail"] = (folder / f"{stage}.log").read_text(errors="replace")[-2000:]
    return record


def fits(train_json: Path) -> dict[str, Any]:
    """Every model's fit of the first seed: seconds, what stopped it, steps; and the run's
    loss choice and total seconds."""
    record = json.loads(train_json.read_text())
    seed = next(iter(record["seeds"].values()))
    per_model = {name: {k: fit.get(k) for k in ("fit_seconds", "stopped_by", "steps",
                                                   "initial_val_loss", "best_val_loss")
                        if k in fit} for name, fit in seed.items()}
    return {"objective": record.get("objective"), "train_seconds": record.get("seconds"),
            "draw": record.get("draw"), "fits": per_model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=str(ROOT / "benchmarks/params/scale_10k.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="train.seeds (default: the params file's)")
    ap.add_argument("--until", choices=STAGES, default="evaluate")
    ap.add_argument("--keep", help="run in this folder and keep it (default: a temporary one)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/<params name>.json)")
    args = ap.parse_args()

    name = Path(args.params).stem
    overlay = yaml.safe_load(Path(args.params).read_text())
    raw = overlaid(yaml.safe_load((ROOT / "params.yaml").read_text()), overlay)
    if args.seeds is not None:
        raw["train"] = {**raw["train"], "seeds": args.seeds}
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{name}.json")
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix=f"metarec-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    result: dict[str, Any] = {
        "params": name, "overlay": overlay, "seeds": raw["train"]["seeds"], "commit": commit,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "goal": GOALS.get(name, {}), "stages": []}
    try:
        for stage in STAGES[:STAGES.index(args.until) + 1]:
            print(f"scale {name}: {stage} ...", flush=True)
            record = run_stage(stage, folder)
            result["stages"].append(record)
            print(f"scale {name}: {stage} {record['seconds']} s, peak "
                  f"{record['peak_rss_mib']} MiB, exit {record['returncode']}", flush=True)
            if stage == "train" and (folder / "metrics/train.json").is_file():
                result["train"] = fits(folder / "metrics/train.json")
            done = result["stages"]
            result["total_minutes"] = round(sum(s["seconds"] for s in done) / 60, 1)
            result["peak_rss_gib"] = round(max(s["peak_rss_mib"] for s in done) / 1024, 2)
            result["completed"] = (record["returncode"] == 0 and stage == args.until)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            if record["returncode"]:
                break
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({k: result.get(k) for k in ("total_minutes", "peak_rss_gib",
                                                 "completed")}))


if __name__ == "__main__":
    main()
