"""Mutation testing of the core modules (``make mutation``; not in CI).

Runs mutmut on the modules and fast tests listed under ``[tool.mutmut]`` in pyproject.toml,
then writes the kill rate per module to ``benchmarks/results/mutation.json``. A surviving
mutant is a change of the code that no test notices: kill it with a test, or list it as
equivalent (with the reason) in ``benchmarks/mutation_equivalent.json``.

    python benchmarks/mutation.py [--max-children N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.json"
KILLED = {"killed", "timeout", "segfault"}   # a mutant that makes the tests fail or hang


def module_of(key: str) -> str:
    """``metarec.eval.metrics.x_mae__mutmut_3`` -> ``metarec.eval.metrics``."""
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
                    "equivalent": c["equivalent"], "no_tests": c["no tests"],
                    "not_checked": c["not checked"],
                    "kill_rate": round(killed / scored, 4) if scored else None,
                    "survivors": survivors[mod]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mutation.json")
    ap.add_argument("--summary-only", action="store_true",
                    help="summarise the mutants/ folder of an earlier (maybe interrupted) run")
    args = ap.parse_args()
    start = time.perf_counter()
    run = subprocess.CompletedProcess([], 0) if args.summary_only else subprocess.run(
        [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)],
        cwd=ROOT)
    res = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    modules = summarise(res.stdout.splitlines(), equivalent)
    killed = sum(m["killed"] for m in modules.values())
    scored = killed + sum(m["survived"] for m in modules.values())
    result = {"tool": "mutmut", "seconds": round(time.perf_counter() - start, 1),
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
