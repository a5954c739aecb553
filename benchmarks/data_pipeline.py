"""Benchmark: ingest + validate + episodes on a synthetic 10M-interaction log.

Writes benchmarks/results/data_pipeline.json with seconds per stage and the peak RSS of this
process. Goal (issue 2): <= 2 minutes and <= 6 GB on 2 cores.

    python benchmarks/data_pipeline.py [--interactions 10000000] [--users 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from metarec.config import EpisodesParams, IngestParams, SyntheticSource, ValidateParams
from metarec.stages import episodes, ingest, validate


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "data_pipeline.json")
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="metarec-bench-") as tmp:
        root = Path(tmp)
        spec = SyntheticSource(users=args.users, items=args.items,
                               interactions=args.interactions, days=730, seed=0)
        t = time.perf_counter()
        ingest.run(IngestParams(source="synthetic", synthetic=spec), root / "canonical")
        seconds["ingest"] = time.perf_counter() - t
        t = time.perf_counter()
        validate.run(ValidateParams(policy="quarantine"), root / "canonical", root / "validated",
                     root / "quarantine", root / "report")
        seconds["validate"] = time.perf_counter() - t
        t = time.perf_counter()
        metrics = episodes.run(EpisodesParams(), root / "validated", root / "episodes",
                               root / "data.json", root / "report" / "summary.json")
        seconds["episodes"] = time.perf_counter() - t
    total = sum(seconds.values())
    result = {
        "interactions": metrics["interactions"], "users": args.users, "items": args.items,
        "quarantined": metrics["quarantined"],
        "seconds": {k: round(v, 2) for k, v in seconds.items()} | {"total": round(total, 2)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "goal": {"seconds": 120, "peak_rss_mb": 6144},
        "meets_goal": total <= 120 and peak_rss_mb() <= 6144,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
