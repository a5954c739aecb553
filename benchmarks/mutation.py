"""Mutation testing of the core modules (``make mutation``; not in CI).

Runs mutmut on the modules and fast tests listed under ``[tool.mutmut]`` in pyproject.toml,
then writes the kill rate per module to ``benchmarks/results/mutation.json``. A surviving
mutant is a change of the code that no test notices: kill it with a test, or list it as
equivalent (with the reason) in ``benchmarks/mutation_equivalent.json``.

    python benchmarks/mutation.py [--max-children N] [--sample N] [--modules A,B] [--out PATH]

``--sample N`` runs a seeded random sample of N mutants per module instead of all of them
(random mutant sampling: the kill rate of the sample estimates the module's, and the JSON
records the sample size next to the population, so the estimate is never mistaken for a
census). The full run takes hours on two cores; a sample of 40 per module about half an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.json"
SAMPLE = ROOT / "mutants" / "sample.json"      # the mutants a --sample run chose
KILLED = {"killed", "timeout", "segfault"}   # a mutant that makes the tests fail or hang


def module_of(key: str) -> str:
    """``metarec.metrics.x_mae__mutmut_3`` -> ``metarec.metrics``."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part.startswith(("x_", "xǁ")):
            return ".".join(parts[:i])
    return ".".join(parts[:-1])


def summarise(lines: list[str], equivalent: dict[str, str]) -> dict:
    """Per-module counts from ``mutmut results --all true`` lines ``    key: status``."""
    per: dict[str, Counter] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        m = re.match(r"\s+(\S+): (.+)$", line)
        if not m:
            continue
        key, status = m.group(1), m.group(2).strip()
        if status == "survived" and key in equivalent:
            status = "equivalent"
        mod = module_of(key)
        per[mod][status] += 1
        if status == "survived":
            survivors[mod].append(key)
    out = {}
    for mod, c in sorted(per.items()):
        killed = sum(c[s] for s in KILLED)
        scored = killed + c["survived"]          # no-tests and equivalent mutants excluded
        out[mod] = {"mutants": sum(c.values()), "killed": killed, "survived": c["survived"],
                    "timeout": c["timeout"], "equivalent": c["equivalent"],
                    "no_tests": c["no tests"],
                    "not_checked": c["not checked"],
                    "kill_rate": round(killed / scored, 4) if scored else None,
                    "survivors": survivors[mod]}
    return out


def _results(mutmut: list[str]) -> list[str]:
    return subprocess.run([*mutmut, "results", "--all", "true"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.splitlines()


def wanted(module: str, prefixes: list[str] | None) -> bool:
    """``module`` is one of ``prefixes`` or inside one (None: every module)."""
    return prefixes is None or any(module == p or module.startswith(p + ".") for p in prefixes)


def sample(lines: list[str], per_module: int, seed: int,
           prefixes: list[str] | None = None) -> list[str]:
    """A seeded sample of ``per_module`` mutant names from each module (all if fewer) of
    those ``prefixes`` name (None: every module)."""
    names: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m and m.group(2).strip() != "no tests" and wanted(module_of(m.group(1)), prefixes):
            names[module_of(m.group(1))].append(m.group(1))
    rng = random.Random(seed)
    return sorted(n for mod in sorted(names)
                  for n in rng.sample(sorted(names[mod]), min(per_module, len(names[mod]))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mutation.json")
    ap.add_argument("--sample", type=int, default=0,
                    help="mutants per module, drawn at random (seeded); 0 = all")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--modules", default=None,
                    help="comma-separated modules (or packages) to sample from, e.g. "
                         "metarec.io,metarec.scoring (default: every module mutmut mutates)")
    ap.add_argument("--summary-only", action="store_true",
                    help="summarise the mutants/ folder of an earlier (maybe interrupted) run")
    args = ap.parse_args()
    prefixes = args.modules.split(",") if args.modules else None
    start = time.perf_counter()
    mutmut = [sys.executable, "-m", "mutmut"]
    # mutmut forks a worker per mutant from a parent that has imported torch; a forked child
    # whose parent started OpenMP threads can hang on a futex, and a hang counts as a
    # "timeout" (killed). One thread per process keeps timeouts meaning what they say.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    chosen: list[str] | None = None
    if args.summary_only:
        run = subprocess.CompletedProcess([], 0)
    else:
        if args.sample:
            # generate the mutants and the test map without running any mutant
            subprocess.run([*mutmut, "run", "--max-children", str(args.max_children),
                            "metarec.no_such_module.x_none__mutmut_1"], cwd=ROOT, env=env)
            chosen = sample(_results(mutmut), args.sample, args.seed, prefixes)
        run = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children),
                              *(chosen or [])], cwd=ROOT, env=env)
    lines = [ln for ln in _results(mutmut)
             if wanted(module_of(ln.split(":")[0].strip()), prefixes)]
    if args.summary_only and SAMPLE.exists():
        chosen = json.loads(SAMPLE.read_text())
    if chosen is not None:
        SAMPLE.write_text(json.dumps(chosen, indent=0) + "\n", encoding="utf-8")
        keep = set(chosen)
        lines = [ln for ln in lines if ln.split(":")[0].strip() in keep]
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    modules = summarise(lines, equivalent)
    if chosen is not None:
        population = summarise(_results(mutmut), {})
        for mod, m in modules.items():
            m["population"] = population[mod]["mutants"]
    killed = sum(m["killed"] for m in modules.values())
    scored = killed + sum(m["survived"] for m in modules.values())
    result = {"tool": "mutmut", "sample_per_module": args.sample or None,
              "modules_sampled": prefixes,
              "sample_seed": args.seed if args.sample else None,
              "seconds": round(time.perf_counter() - start, 1),
              "run_exit_code": run.returncode, "modules": modules,
              "total": {"killed": killed, "scored": scored,
                        "kill_rate": round(killed / scored, 4) if scored else None}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    for mod, m in modules.items():
        rate = "–" if m["kill_rate"] is None else f"{m['kill_rate']:.0%}"
        print(f"{mod:45s} {m['killed']:4d}/{m['killed'] + m['survived']:4d} killed  {rate}"
              + (f"  ({m['not_checked']} not checked)" if m["not_checked"] else ""))
    print(f"total {killed}/{scored} killed -> {args.out}")
    return 0 if run.returncode == 0 else run.returncode


if __name__ == "__main__":
    sys.exit(main())
