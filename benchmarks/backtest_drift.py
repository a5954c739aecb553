"""Does re-adapting warm users pay when tastes drift? (issue: dynamic recommendation)

For each drift in ``--drifts`` (default 0 and the params file's), builds a project in a
temporary folder from ``benchmarks/params/drift.yaml`` (synthetic source, only ``drift``
changed), runs ingest, validate, episodes, train and a backtest over every night from the day
after training ends to the last night whose horizon fits in the log, and records the warm
users' re-adapted minus adapted-once Recall@K and nDCG@K with their paired-bootstrap CIs.

    python benchmarks/backtest_drift.py [--drifts 0 4] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "benchmarks" / "params" / "drift.yaml"
METAREC = str(Path(sys.executable).parent / "metarec")


def _stage(cwd: Path, *args: str) -> None:
    subprocess.run([METAREC, *args, "--params", "params.yaml"], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)


def one(drift: float, base: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="metarec-drift-") as tmp:
        cwd = Path(tmp)
        raw = yaml.safe_load(yaml.safe_dump(base))
        raw["ingest"]["synthetic"]["drift"] = drift
        (cwd / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
        start = time.perf_counter()
        _stage(cwd, "ingest")
        _stage(cwd, "validate")
        _stage(cwd, "episodes")
        _stage(cwd, "train")
        # the window: from the day training ended to the last night whose horizon fits
        import pandas as pd

        from metarec.backtest.plan import trained_until

        end_train = trained_until(cwd / "data/episodes")
        last = int(pd.read_parquet(cwd / "data/validated/interactions.parquet",
                                   columns=["timestamp"])["timestamp"].max())
        first = dt.datetime.fromtimestamp(end_train - 1, dt.UTC).date()
        horizon = raw["backtest"]["horizon_days"]
        to = dt.datetime.fromtimestamp(last, dt.UTC).date() - dt.timedelta(days=horizon + 1)
        raw["backtest"].update(from_date=first.isoformat(), to_date=to.isoformat())
        (cwd / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
        _stage(cwd, "backtest")
        summary = json.loads((cwd / "metrics/backtest.json").read_text())
    warm = [c for c in summary["comparisons"] if c["kind"] == "warm" and c["versus"] == "static"]
    return {"drift": drift, "seconds": round(time.perf_counter() - start, 1),
            "summary": {k: v for k, v in summary.items() if k != "per_night"},
            "window": summary["window"],
            "readapted_minus_static": {c["metric"]: {k: c[k] for k in
                                                     ("diff", "low", "high", "p_value", "users")}
                                       for c in warm}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=BASE)
    ap.add_argument("--drifts", type=float, nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/backtest_drift.json")
    args = ap.parse_args()
    base = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    drifts = args.drifts or [0.0, float(base["ingest"]["synthetic"]["drift"])]
    runs = [one(d, base) for d in drifts]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": str(args.params.relative_to(ROOT)),
                                    "runs": runs}, indent=2) + "\n", encoding="utf-8")
    for r in runs:
        for metric, c in r["readapted_minus_static"].items():
            print(f"drift {r['drift']:g}: warm re-adapted - adapted once, {metric}@"
                  f"{r['window']['k']}: {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] "
                  f"({c['users']} users)")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
