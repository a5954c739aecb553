"""Seconds and peak memory of each tuned baseline's fit (issue #39: baselines tuned cheaply).

    .venv/bin/python benchmarks/baseline_grids.py [--params benchmarks/params/baselines_10k.yaml]
        [--baselines ease itemknn biased_mf] [--threads 1] [--keep DIR | --episodes DIR]
        [--out benchmarks/results/baseline_grids_<name>.json]

Builds the episodes of the params file (ingest, validate, episodes) in a temporary folder (or
``--keep DIR``; ``--episodes DIR`` reads an episodes folder already built from the same params
instead), then fits each baseline in a fresh process with ``--threads`` torch threads (1 = the
train stage's default), so that each one's peak resident memory (``ru_maxrss``) is its own:
loading the episodes, the whole validation grid, the chosen model. The JSON records the wall and
CPU seconds of the fit alone (with one thread the CPU seconds are the cost on a loaded machine),
the peak and the memory held before the fit, the chosen values and the whole tuning record (the
choices of two versions can be compared), and the commit measured. ``PYTHONPATH=<an older
src/>`` measures an older version with the same script.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ("ease", "itemknn", "biased_mf")


def build(params_path: Path, out: Path) -> float:
    """ingest, validate and episodes of ``params_path`` into ``out``; seconds taken."""
    from metarec.params import load_params
    from metarec.stages import episodes, ingest, validate

    p = load_params(params_path)
    start = time.perf_counter()
    ingest.run(p.ingest, out / "canonical")
    validate.run(p.validate, out / "canonical", out / "validated", out / "quarantine",
                 out / "report")
    episodes.run(p.episodes, out / "validated", out / "episodes", out / "data.json")
    return time.perf_counter() - start


def rss_mb() -> float:
    """This process's resident memory now (MiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_seconds() -> float:
    """CPU seconds this process has used (user + system): with one thread, the fit's cost
    whatever else the machine runs, which wall seconds on a shared machine are not."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fit_one(name: str, params_path: str, episodes_dir: str, threads: int) -> dict[str, Any]:
    """Fit ``name`` once (its params section, the first seed) in this fresh process."""
    import torch

    from metarec import algorithms
    from metarec.config import ModelParams
    from metarec.data.tasks import load_episodes
    from metarec.models.base import FitContext
    from metarec.params import load_params

    torch.set_num_threads(threads)
    p = load_params(params_path)
    data = load_episodes(episodes_dir)
    train = replace(p.train, seed=p.train.seeds[0])
    ctx = FitContext(data=data, model=ModelParams(), train=train, log_dir=Path(episodes_dir))
    before, cpu = rss_mb(), cpu_seconds()
    start = time.perf_counter()
    model = algorithms.get(name).fit(ctx)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tuning = model.tuning
    chosen = {k: v for k, v in tuning.items() if isinstance(v, (int, float, str, bool))}
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "peak_rss_mb": round(peak),
            "rss_before_fit_mb": round(before), "chosen": chosen, "tuning": tuning}


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--baselines", nargs="+", default=list(BASELINES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="build the episodes here and keep them")
    ap.add_argument("--episodes", type=Path, help="an episodes folder built from --params")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--commit", help="the commit of the src/ measured, when PYTHONPATH names "
                                     "another one (default: this checkout's HEAD)")
    args = ap.parse_args()
    out = args.out or ROOT / "benchmarks" / "results" / f"baseline_grids_{args.params.stem}.json"
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                           check=True, capture_output=True,
                                           text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="metarec-grids-") as tmp:
        build_s = None
        if args.episodes is None:
            where = args.keep or Path(tmp)
            build_s = round(build(args.params, where), 1)
            print(f"episodes built in {build_s} s", flush=True)
            args.episodes = where / "episodes"
        from metarec.data.tasks import load_episodes, validation_tasks

        data = load_episodes(args.episodes)
        shape = {"users": len(data.users), "items": len(data.items),
                 "history_rows": 0 if data.history is None else len(data.history),
                 "validation_tasks": len(validation_tasks(data))}
        del data
        print(shape, flush=True)
        import metarec

        fits: dict[str, Any] = {}
        report = {"params": str(args.params.relative_to(ROOT))
                  if args.params.is_relative_to(ROOT) else str(args.params),
                  "commit": commit, "src": str(Path(metarec.__file__).parents[1]),
                  "threads": args.threads, "episodes_seconds": build_s, "data": shape,
                  "fits": fits}
        spawn = multiprocessing.get_context("spawn")
        out.parent.mkdir(parents=True, exist_ok=True)
        for name in args.baselines:
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                fits[name] = pool.submit(fit_one, name, str(args.params), str(args.episodes),
                                         args.threads).result()
            r = fits[name]
            print(f"{name:10s} {r['seconds']:9.2f} s ({r['cpu_seconds']:.2f} CPU s)  peak RSS "
                  f"{r['peak_rss_mb']:6d} MiB "
                  f"(before the fit {r['rss_before_fit_mb']} MiB)  chosen {r['chosen']}",
                  flush=True)
            out.write_text(json.dumps(report, indent=2) + "\n")   # each fit as it ends
    return report


if __name__ == "__main__":
    main()
