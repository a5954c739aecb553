"""How evaluation time grows with test users and catalogue size (issue: evaluation at the
nightly batch's speed).

    .venv/bin/python benchmarks/evaluation.py [--items 750 1500 3000] [--users 1000 2000 4000]

For each (users, items) of the grid (items varied at the middle user count, users at the
middle item count) a synthetic project with a multi-valued item feature (genres) is built in a
temporary folder: ingest, validate, episodes and a short train (maml, 50 outer steps, and
most_popular; one seed), then ``evaluate.run`` alone is timed, inner-steps curve included. The
work of an evaluation is test tasks x catalogue items (every task ranks the whole catalogue,
in each inner step and at the end), so linear growth means constant seconds per million
(task, item) pairs; the JSON records them and, along each axis, the ratio of the largest
point's to the smallest's.
Writes ``benchmarks/results/evaluation.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from metarec.data.tasks import load_episodes
from metarec.params import load_params
from metarec.stages import episodes, evaluate, ingest, train, validate

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "evaluation.json"


def one(users: int, items: int, base: Any) -> dict[str, Any]:
    """Build one project and time its evaluation."""
    syn = replace(base.ingest.synthetic, users=users, items=items,
                  interactions=50 * users, choice=2.0)
    p = replace(base, ingest=replace(base.ingest, source="synthetic", synthetic=syn),
                train=replace(base.train, algorithms=("maml",), baselines=("most_popular",),
                              seeds=(0,), max_steps=50, val_every=50, draws=("random",)))
    with tempfile.TemporaryDirectory(prefix="metarec-evalbench-") as tmp:
        d = Path(tmp)
        ingest.run(p.ingest, d / "canonical")
        validate.run(p.validate, d / "canonical", d / "validated", d / "q", d / "r")
        episodes.run(p.episodes, d / "validated", d / "episodes", d / "data.json")
        train.run(p.model, p.train, d / "episodes", d / "models", d / "train.json")
        data = load_episodes(d / "episodes")
        test = data.select("test")
        tasks, n_items = int(test["task_id"].nunique()), len(data.items)
        start = time.perf_counter()
        evaluate.run(p.evaluate, d / "episodes", d / "models", d / "eval.json", d / "report")
        seconds = time.perf_counter() - start
    pairs = tasks * n_items
    return {"users": users, "items": n_items, "test_tasks": tasks,
            "seconds": round(seconds, 2),
            "seconds_per_million_pairs": round(seconds / pairs * 1e6, 4)}


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, nargs="+", default=[750, 1500, 3000])
    ap.add_argument("--users", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    base = load_params(ROOT / "params.yaml")
    mid_u, mid_i = sorted(args.users)[len(args.users) // 2], sorted(args.items)[
        len(args.items) // 2]
    grid = sorted({(mid_u, i) for i in args.items} | {(u, mid_i) for u in args.users})
    rows = []
    for users, items in grid:
        rows.append(one(users, items, base))
        r = rows[-1]
        print(f"users {users:5d} items {items:5d}: {r['test_tasks']} test tasks, "
              f"{r['seconds']:.1f} s, {r['seconds_per_million_pairs']:.3f} s per 1M "
              "(task, item) pairs", flush=True)
    def ratio(axis: str, fixed: str, value: int) -> float:
        """seconds per pair at the largest ``axis`` value over the smallest (``fixed`` held)."""
        line = sorted((r for r in rows if r[fixed] == value), key=lambda r: r[axis])
        return round(line[-1]["seconds_per_million_pairs"]
                     / line[0]["seconds_per_million_pairs"], 3)

    report = {"grid": rows,
              "users_axis_ratio": ratio("users", "items", mid_i),
              "items_axis_ratio": ratio("items", "users", mid_u),
              "goal": "seconds per (task, item) pair constant or falling along each axis: "
                      "ratio <= 1.2",
              "process_peak_rss_mb_all_stages": round(
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "grid"}))
    return report


if __name__ == "__main__":
    main()
