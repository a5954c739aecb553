"""Public checks beyond ML-100K temporal: the same pipeline on other shapes of data, params only.

    .venv/bin/python benchmarks/public_checks.py [--only melu implicit catalogue] [--seeds 0]

Each check is a shipped params file in ``benchmarks/params/`` (only the keys that differ from
``params.yaml``) run through ingest, validate, episodes, train and evaluate in a temporary
folder, exactly as ``dvc repro evaluate`` would run it:

- ``melu``: ML-100K with the MeLU protocol (large support sets: the shape where EASE leads);
- ``implicit``: a synthetic log of play counts (every interaction a positive);
- ``catalogue``: a synthetic catalogue of 10^4 items and few users (~600).

From each ``metrics/eval.json`` it keeps the user-cold catalogue nDCG@20 per K of every model,
the meta-learner best on validation and the baseline best on validation, the paired bootstrap
of that meta-learner against every reference (``evaluate.references``: the same network
without meta-learning, EASE, the popularity baselines) and against its own zero-step self,
and whether it at least matches EASE (the CI's lower bound above -1% of EASE's mean at every
K). Writes ``benchmarks/results/public_checks.json``; ``benchmarks/table.py`` renders it into
the README.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from metarec.eval.headline import best_meta
from metarec.params import overlaid, parse
from metarec.stages import episodes, evaluate, ingest, train, validate

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "public_checks.json"
CHECKS = {"melu": "melu.yaml", "implicit": "implicit.yaml", "catalogue": "catalogue.yaml"}
SCENARIO = "user_cold"
MATCH = -0.01            # "at least matches": the CI's lower bound above -1% of the peer's mean


def run_check(name: str, seeds: list[int]) -> dict[str, Any]:
    """One check's pipeline in a temporary folder; its summary."""
    overlay = yaml.safe_load((ROOT / "benchmarks" / "params" / CHECKS[name]).read_text())
    raw = overlaid(yaml.safe_load((ROOT / "params.yaml").read_text()), overlay)
    raw["train"] = {**raw["train"], "seeds": seeds}
    p = parse(raw)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"metarec-check-{name}-") as tmp:
        d = Path(tmp)
        ingest.run(p.ingest, d / "canonical")
        validate.run(p.validate, d / "canonical", d / "validated", d / "q", d / "r")
        episodes.run(p.episodes, d / "validated", d / "episodes", d / "data.json")
        train.run(p.model, p.train, d / "episodes", d / "models", d / "train.json")
        result = evaluate.run(p.evaluate, d / "episodes", d / "models", d / "eval.json",
                              d / "report", d / "selection.json")
        data = json.loads((d / "data.json").read_text())
    return summarise(name, result, data, seeds, time.perf_counter() - start)


def summarise(name: str, result: dict[str, Any], data: dict[str, Any], seeds: list[int],
              seconds: float) -> dict[str, Any]:
    """What the README shows of one check's eval.json."""
    metric = result["catalogue_metric"]
    means: dict[str, dict[str, list[float]]] = {}
    for r in result["results"]:
        if r["scenario"] == SCENARIO and r["seed"] >= 0 and r.get(metric) is not None:
            means.setdefault(r["model"], {}).setdefault(str(r["k"]), []).append(r[metric])
    table = {m: {k: round(sum(v) / len(v), 4) for k, v in per_k.items()}
             for m, per_k in means.items()}
    meta = best_meta(result.get("serving", {}), metric)
    refs = [r for r in result.get("references", []) if r["model"] == meta
            and r["scenario"] == SCENARIO]
    zero = [r for r in result.get("zero_step", []) if r["model"] == meta
            and r["scenario"] == SCENARIO and r["metric"] == metric]
    ease = [r for r in refs if r["reference"] == "ease"]
    matches = (all(r["ci_low"] > MATCH * r["value_without"] for r in ease)
               if ease else None)
    return {"check": name, "dataset": result.get("dataset"), "protocol": result.get("protocol"),
            "seeds": seeds, "metric": metric, "scenario": SCENARIO,
            "users": data.get("users"), "items": data.get("items"),
            "best_meta": meta, "best_baseline": result["best_baseline"]["ranking"],
            "served": result.get("serving", {}).get("model"),
            "means": table, "references": refs, "zero_step": zero,
            "goal": {"meta_matches_ease": matches, "rule": "CI lower bound of best meta "
                     f"minus EASE above {MATCH:.0%} of EASE's mean at every K"},
            "seconds": round(seconds, 1)}


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(CHECKS), default=list(CHECKS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    checks = dict(previous.get("checks", {}))
    for name in args.only:
        print(f"check {name} ...", flush=True)
        checks[name] = run_check(name, args.seeds)
        c = checks[name]
        print(f"check {name}: best meta {c['best_meta']}, matches EASE: "
              f"{c['goal']['meta_matches_ease']}, {c['seconds']:.0f} s", flush=True)
        out = {"checks": checks, "machine": platform.machine(), "python":
               platform.python_version()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    main()
