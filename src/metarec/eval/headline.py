"""The answer first: per scenario, did meta-learning help, by how much, with what certainty.

For each scenario the *headline* compares the meta-learner best on validation (highest
validation catalogue metric, mean over seeds; a seed-ensemble counts as its algorithm) with the
baseline best on validation for ranking, on the test catalogue metric at every K: the paired
bootstrap difference, relative to the baseline's mean, with its confidence interval.
"""

from __future__ import annotations

from typing import Any

from metarec.eval.choices import is_baseline
from metarec.eval.compare import k_order

SCENARIO_LABELS = {"user_cold": "user-cold", "user_item_cold": "user-and-item-cold",
                   "warm": "warm", "item_cold": "item-cold"}


def best_meta(serving: dict[str, Any], metric: str) -> str | None:
    """The meta-learner with the highest validation ``metric`` (from the serving record)."""
    scores = {n: v for n, v in serving.get(f"val_{metric}", {}).items() if not is_baseline(n)}
    return max(scores, key=lambda n: (scores[n], n)) if scores else None


def headline(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per scenario: model, baseline, metric and per-K (diff, relative, CI)."""
    metric = result["catalogue_metric"]
    model, baseline = best_meta(result.get("serving", {}), metric), \
        result["best_baseline"]["ranking"]
    if model is None or baseline is None:
        return []
    means: dict[tuple[str, str, Any], list[float]] = {}
    for r in result["results"]:
        if r["seed"] >= 0 and r.get(metric) is not None:
            means.setdefault((r["model"], r["scenario"], r["k"]), []).append(r[metric])
    out = []
    for scenario in SCENARIO_LABELS:
        per_k = []
        for c in result["comparisons"]:
            if (c["model"], c["baseline"], c["scenario"], c["metric"]) != (
                    model, baseline, scenario, metric):
                continue
            base = means.get((baseline, scenario, c["k"]))
            ref = sum(base) / len(base) if base else float("nan")
            scale = 1.0 / ref if ref > 0 else float("nan")
            per_k.append({"k": c["k"], "diff": c["diff"], "low": c["ci_low"],
                          "high": c["ci_high"], "rel": c["diff"] * scale,
                          "rel_low": c["ci_low"] * scale, "rel_high": c["ci_high"] * scale,
                          "baseline_mean": ref,
                          "significant": c["ci_low"] > 0 or c["ci_high"] < 0})
        if per_k:
            out.append({"scenario": scenario, "model": model, "baseline": baseline,
                        "metric": metric, "per_k": sorted(per_k, key=lambda x: k_order(x["k"]))})
    return out


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:+.0f}%"


def verdict_lines(records: list[dict[str, Any]], confidence: float) -> list[str]:
    """One line per scenario, e.g. ``user-cold ndcg@20: maml vs ease  K=1 +12% [+4%, +20%]``."""
    lines = []
    for rec in records:
        cells = "  ".join(f"K={x['k']} {_pct(x['rel'])} [{_pct(x['rel_low'])}, "
                          f"{_pct(x['rel_high'])}]{'*' if x['significant'] else ''}"
                          for x in rec["per_k"])
        lines.append(f"{SCENARIO_LABELS[rec['scenario']]} {rec['metric']}: {rec['model']} vs "
                     f"{rec['baseline']}  {cells}")
    if lines:
        lines.append(f"(relative difference of the test means, paired bootstrap "
                     f"{confidence:.0%} CI over users; * = the interval excludes 0)")
    return lines


def headline_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain rows for a Prefect table artifact and the report."""
    return [{"scenario": SCENARIO_LABELS[r["scenario"]], "k": str(x["k"]),
             "meta-learner": r["model"], "baseline": r["baseline"], "metric": r["metric"],
             "baseline mean": round(x["baseline_mean"], 4), "difference": round(x["diff"], 4),
             "relative": _pct(x["rel"]), "CI": f"[{_pct(x['rel_low'])}, {_pct(x['rel_high'])}]",
             "significant": bool(x["significant"])}
            for r in records for x in r["per_k"]]
