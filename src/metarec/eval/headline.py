"""The answer first: per scenario, did meta-learning help, by how much, with what certainty.

For each scenario the *headline* compares the meta-learner best on validation (highest
validation catalogue metric, mean over seeds; a seed-ensemble counts as its algorithm) with the
baseline best on validation for ranking, on the test catalogue metric at every K: the paired
bootstrap difference, relative to the baseline's mean, with its confidence interval and the
number of users it rests on.

A CI that excludes 0 says which model is ahead. One that includes 0 says two different
things: narrow, the models are level (no difference larger than the CI's bounds); wide, the
users are too few to tell. The line between the two is :data:`RESOLVE`.
"""

from __future__ import annotations

from typing import Any

from metarec.eval.choices import is_baseline
from metarec.eval.compare import k_order

# the scenarios in reading order: the question first, the hardest last
SCENARIO_LABELS = {"user_cold": "user-cold", "warm": "warm", "item_cold": "item-cold",
                   "user_item_cold": "user-and-item-cold"}
# A verdict must be able to tell apart a relative difference of 10% of the baseline: a CI
# that includes 0 and reaches further than that either way rests on too few users to say
# "no difference" (item-cold on ML-100K: 15 users, CIs of -35% to +27%).
RESOLVE = 0.10
AHEAD, BEHIND, LEVEL, TOO_FEW = "ahead", "behind", "level", "too few users"


def judge(rel: float, rel_low: float, rel_high: float) -> str:
    """What one relative difference (model - baseline, with its CI) lets a reader conclude:
    :data:`AHEAD` / :data:`BEHIND` (the CI excludes 0), :data:`LEVEL` (it includes 0 and
    stays within +-:data:`RESOLVE`) or :data:`TOO_FEW` (it reaches further)."""
    if rel_low > 0:
        return AHEAD
    if rel_high < 0:
        return BEHIND
    if rel_low != rel_low or rel_high != rel_high:     # NaN: no baseline mean to scale by
        return TOO_FEW
    return LEVEL if max(-rel_low, rel_high) <= RESOLVE else TOO_FEW


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
            rel_low, rel_high = c["ci_low"] * scale, c["ci_high"] * scale
            per_k.append({"k": c["k"], "diff": c["diff"], "low": c["ci_low"],
                          "high": c["ci_high"], "rel": c["diff"] * scale,
                          "rel_low": rel_low, "rel_high": rel_high,
                          "baseline_mean": ref, "users": c.get("users"),
                          "significant": c["ci_low"] > 0 or c["ci_high"] < 0,
                          "verdict": judge(c["diff"] * scale, rel_low, rel_high)})
        if per_k:
            out.append({"scenario": scenario, "model": model, "baseline": baseline,
                        "metric": metric, "per_k": sorted(per_k, key=lambda x: k_order(x["k"]))})
    return out


def pct(x: float | None) -> str:
    """A relative difference as a signed whole percentage (``+12%``, ``0%``, ``–`` if none)."""
    if x is None or x != x:
        return "–"
    return "0%" if abs(x) < 0.005 else f"{100 * x:+.0f}%"


def _ks(per_k: list[dict[str, Any]]) -> str:
    return ", ".join(str(x["k"]) for x in per_k)


def users_of(per_k: list[dict[str, Any]]) -> str:
    """``15 users`` or ``172-186 users``: the users behind a scenario's comparisons."""
    n = sorted({int(x["users"]) for x in per_k if x.get("users") is not None})
    if not n:
        return "users unknown"
    return f"{n[0]} users" if n[0] == n[-1] else f"{n[0]}-{n[-1]} users"


def verdict(rec: dict[str, Any]) -> str:
    """One scenario in one line, the conclusion before the numbers, e.g.
    ``user-cold (186 users): metasgd vs finetune on ndcg@20: behind at K=20 (-8% [-12%,
    -3%]); level at K=1, 3, 5, 10 (within -4%..+3%)``."""
    per_k = [{**x, "verdict": x.get("verdict") or judge(x["rel"], x["rel_low"],
                                                       x["rel_high"])} for x in rec["per_k"]]
    parts = []
    for kind in (AHEAD, BEHIND):
        hit = [x for x in per_k if x["verdict"] == kind]
        if hit:
            parts.append(f"{kind} at K=" + ", ".join(
                f"{x['k']} ({pct(x['rel'])} [{pct(x['rel_low'])}, {pct(x['rel_high'])}])"
                for x in hit))
    level = [x for x in per_k if x["verdict"] == LEVEL]
    if level:
        parts.append(f"level at K={_ks(level)} (CIs within "
                     f"{pct(min(x['rel_low'] for x in level))}.."
                     f"{pct(max(x['rel_high'] for x in level))})")
    few = [x for x in per_k if x["verdict"] == TOO_FEW]
    if few:
        parts.append(f"too few users for a conclusion at K={_ks(few)} (CIs span "
                     f"{pct(min(x['rel_low'] for x in few))} to "
                     f"{pct(max(x['rel_high'] for x in few))})")
    return (f"{SCENARIO_LABELS[rec['scenario']]} ({users_of(per_k)}): {rec['model']} vs "
            f"{rec['baseline']} on {rec['metric']}: " + "; ".join(parts))


def verdict_note(confidence: float) -> str:
    """What the verdicts' numbers are."""
    return (f"(test means, relative to the baseline's; paired bootstrap {confidence:.0%} CI "
            f"over users; 'too few users': the CI includes 0 and reaches beyond "
            f"±{RESOLVE:.0%})")


def verdict_lines(records: list[dict[str, Any]], confidence: float) -> list[str]:
    """One line per scenario (:func:`verdict`), then what the numbers are."""
    lines = [verdict(rec) for rec in records]
    return [*lines, verdict_note(confidence)] if lines else []


def headline_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plain rows for a Prefect table artifact: what a reader needs first on the left (the
    UI cuts a wide table at the right)."""
    return [{"scenario": SCENARIO_LABELS[r["scenario"]], "k": str(x["k"]),
             "users": x.get("users"), "relative": pct(x["rel"]),
             "CI": f"[{pct(x['rel_low'])}, {pct(x['rel_high'])}]",
             "verdict": x.get("verdict") or judge(x["rel"], x["rel_low"], x["rel_high"]),
             "meta-learner": r["model"], "baseline": r["baseline"],
             "difference": round(x["diff"], 4), "baseline mean": round(x["baseline_mean"], 4),
             "metric": r["metric"]}
            for r in records for x in r["per_k"]]
