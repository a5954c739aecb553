"""Benchmark: ingest + validate + episodes on a synthetic log, each stage in its own process.

Writes the seconds (wall clock; CPU seconds beside them, less sensitive to other processes on
the machine) and the peak RSS (VmHWM of the stage's process: imports included) of each
stage. Users and items scale with the log unless given: 1 user per 50 interactions and 1 item
per 500 (10M: 200,000 users, 20,000 items), so every size has the same shape per user.

- 10M interactions (issue 2): <= 2 minutes and <= 6 GB on 2 cores; written to
  benchmarks/results/data_pipeline.json.
- Any other size (issue 16, "logs beyond memory"): written to
  benchmarks/results/data_pipeline_<N>.json with the goal of 50M: peak RSS <= 8 GB and time
  per interaction within 1.2x of the 10M run (read from data_pipeline.json, which must come
  from the same machine: rerun both).

    python benchmarks/data_pipeline.py [--interactions 10000000] [--users U] [--items I]
                                       [--batch-rows B] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from metarec import dag

RESULTS = Path(__file__).parent / "results"
STAGES = dag.until("episodes")
BASE = 10_000_000


def vm_hwm_mb() -> float:
    """Peak resident memory of this process so far (Linux /proc; MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_stage(stage: str, root: Path, spec: dict, batch_rows: int | None) -> dict:
    """One stage, in this process: its seconds and this process's peak RSS."""
    from metarec.config import EpisodesParams, IngestParams, SyntheticSource, ValidateParams
    from metarec.stages import episodes, ingest, validate

    rows = {} if batch_rows is None else {"batch_rows": batch_rows}
    t, cpu = time.perf_counter(), cpu_seconds()
    out: dict = {}
    if stage == "ingest":
        ingest.run(IngestParams(source="synthetic", synthetic=SyntheticSource(**spec), **rows),
                   root / "canonical")
    elif stage == "validate":
        summary = validate.run(ValidateParams(policy="quarantine", **rows), root / "canonical",
                               root / "validated", root / "quarantine", root / "report")
        out["quarantined"] = sum(t["rows_quarantined"] for t in summary["tables"].values())
    else:
        metrics = episodes.run(EpisodesParams(**rows), root / "validated", root / "episodes",
                               root / "data.json", root / "report" / "summary.json")
        out["interactions"] = metrics["interactions"]
    return {"seconds": time.perf_counter() - t, "cpu_seconds": cpu_seconds() - cpu,
            "peak_rss_mb": vm_hwm_mb(), **out}


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads): what other processes on the
    machine change least."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(stage: str, root: Path, spec: dict, batch_rows: int | None) -> dict:
    """Run one stage in a fresh interpreter (so its peak RSS is its own)."""
    cmd = [sys.executable, __file__, "--stage", stage, "--root", str(root),
           "--spec", json.dumps(spec)] + ([] if batch_rows is None else
                                          ["--batch-rows", str(batch_rows)])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interactions", type=int, default=BASE)
    parser.add_argument("--users", type=int, default=None, help="default: interactions / 50")
    parser.add_argument("--items", type=int, default=None, help="default: interactions / 500")
    parser.add_argument("--batch-rows", type=int, default=None,
                        help="rows per batch in every stage (default: params' default)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--reference", type=Path, default=RESULTS / "data_pipeline.json",
                        help="the 10M result a larger run is compared with")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:                                   # the child process of one stage
        print(json.dumps(run_stage(args.stage, args.root, json.loads(args.spec),
                                   args.batch_rows)))
        return
    n = args.interactions
    users, items = args.users or n // 50, args.items or n // 500
    spec = {"users": users, "items": items, "interactions": n, "days": 730, "seed": 0}
    stages: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="metarec-bench-") as tmp:
        for stage in STAGES:
            stages[stage] = child(stage, Path(tmp), spec, args.batch_rows)
            print(f"{stage}: {stages[stage]['seconds']:.1f} s, "
                  f"{stages[stage]['peak_rss_mb']:.0f} MB", flush=True)
    seconds = {s: round(r["seconds"], 2) for s, r in stages.items()}
    seconds["total"] = round(sum(r["seconds"] for r in stages.values()), 2)
    cpu = {s: round(r["cpu_seconds"], 2) for s, r in stages.items()}
    cpu["total"] = round(sum(r["cpu_seconds"] for r in stages.values()), 2)
    rss = {s: round(r["peak_rss_mb"], 1) for s, r in stages.items()}
    rss["max"] = max(rss.values())
    result = {
        "interactions": stages["episodes"]["interactions"], "users": users, "items": items,
        "scaled": {"users": args.users is None, "items": args.items is None},
        "batch_rows": args.batch_rows, "quarantined": stages["validate"]["quarantined"],
        "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": rss,
        "microseconds_per_interaction": round(
            seconds["total"] / stages["episodes"]["interactions"] * 1e6, 3),
    }
    if n == BASE:
        result["goal"] = {"seconds": 120, "peak_rss_mb": 6144}
        result["meets_goal"] = seconds["total"] <= 120 and rss["max"] <= 6144
    else:
        ref = json.loads(args.reference.read_text(encoding="utf-8"))
        per = ref["seconds"]["total"] / ref["interactions"] * 1e6
        ratio = result["microseconds_per_interaction"] / per
        result["reference"] = {"file": args.reference.name, "interactions": ref["interactions"],
                               "seconds": ref["seconds"]["total"],
                               "microseconds_per_interaction": round(per, 3)}
        result["per_interaction_ratio"] = round(ratio, 3)
        result["goal"] = {"peak_rss_mb": 8192, "per_interaction_ratio": 1.2}
        result["meets_goal"] = rss["max"] <= 8192 and ratio <= 1.2
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "platform": platform.platform()}
    out = args.out or RESULTS / ("data_pipeline.json" if n == BASE
                                 else f"data_pipeline_{n}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
