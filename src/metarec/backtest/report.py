"""The backtest window's summary: per-night means, per-user means compared by paired
bootstrap, the plot and the table."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from metarec.backtest.judge import METRICS
from metarec.backtest.plan import Plan
from metarec.eval.bootstrap import paired_bootstrap

METHODS = ("model", "static", "baseline", "popularity")
KINDS = ("cold", "warm")


def summarise(pl: Plan, rows: pd.DataFrame) -> dict[str, Any]:
    """Per-night means, and over the window each user's mean over the nights that judged it,
    compared pairwise (paired bootstrap over users) on the users every method judged."""
    p = pl.params
    names = {"model": pl.model, "static": f"{pl.model} (adapted once)",
             "baseline": pl.baseline, "popularity": f"recent popularity ({p.popularity_days} d)"}
    per_night = []
    for (night, kind), g in rows.groupby(["night", "kind"], sort=True):
        per_night.append({"night": night, "kind": kind, "users": int(g["user_id"].nunique()),
                          **{m: {x: round(float(h[x].mean()), 6) for x in METRICS}
                             for m, h in g.groupby("method", sort=False)}})
    overall: dict[str, Any] = {}
    comparisons = []
    for kind in KINDS:
        g = rows[rows["kind"] == kind]
        if g.empty:
            continue
        per_user = g.groupby(["method", "user_id"], observed=True)[list(METRICS)].mean()
        methods = [m for m in METHODS if m in per_user.index.get_level_values(0)]
        wide = {m: per_user.loc[m] for m in methods}
        common = sorted(set.intersection(*(set(w.index) for w in wide.values())))
        overall[kind] = {"users": len(common), **{
            m: {x: round(float(wide[m].loc[common, x].mean()), 6) for x in METRICS}
            for m in methods}}
        pairs = [("model", "static")] if kind == "warm" and "static" in methods else []
        pairs += [("model", m) for m in ("baseline", "popularity") if m in methods]
        for a, b in pairs:
            for x in ("ndcg", "recall"):
                r = paired_bootstrap(torch.tensor(wide[a].loc[common, x].to_numpy()),
                                     torch.tensor(wide[b].loc[common, x].to_numpy()),
                                     p.bootstrap_samples, p.seed, p.bootstrap_confidence)
                comparisons.append({"kind": kind, "model": a, "versus": b, "metric": x,
                                    "diff": round(r.diff, 6), "low": round(r.low, 6),
                                    "high": round(r.high, 6), "p_value": round(r.p_value, 4),
                                    "users": r.n_users})
    return {"window": {"from": pl.nights[0], "to": pl.nights[-1], "every_days": p.every_days,
                       "nights": len(pl.nights), "horizon_days": p.horizon_days, "k": p.k,
                       "retrain_every_days": p.retrain_every_days},
            "methods": names, "relevance_threshold": pl.threshold,
            "confidence": p.bootstrap_confidence,
            "judged_rows": int(len(rows)), "overall": overall, "comparisons": comparisons,
            "per_night": per_night}


def plot(summary: dict[str, Any], path: str | Path) -> Path:
    """nDCG@K per night and method, one panel per user kind (a ``dvc plots`` image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if k in summary["overall"]] or ["cold"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        nights_ = [r for r in summary["per_night"] if r["kind"] == kind]
        for m in METHODS:
            pts = [(dt.date.fromisoformat(r["night"]), r[m]["ndcg"]) for r in nights_ if m in r]
            if pts:
                ax.plot([d for d, _ in pts], [v for _, v in pts], marker="o",
                        label=summary["methods"][m])
        ax.set_title(f"{kind} users: nDCG@{summary['window']['k']} on the next "
                     f"{summary['window']['horizon_days']} days")
        ax.set_xlabel("night")
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def markdown(summary: dict[str, Any]) -> str:
    """The window's table (a Prefect artifact and the README's block)."""
    w, names = summary["window"], summary["methods"]
    lines = [f"Backtest {w['from']} .. {w['to']} ({w['nights']} nights, every "
             f"{w['every_days']} d), judged on the next {w['horizon_days']} days, K={w['k']}.",
             "", "| users | method | HitRate | Recall | nDCG |", "|---|---|---|---|---|"]
    for kind, block in summary["overall"].items():
        for m in METHODS:
            if m in block:
                v = block[m]
                lines.append(f"| {kind} ({block['users']}) | {names[m]} | {v['hit_rate']:.3f} | "
                             f"{v['recall']:.3f} | {v['ndcg']:.3f} |")
    level = f"{summary['confidence']:.0%}"
    lines += ["", f"| users | comparison | metric | diff | {level} CI |", "|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['kind']} | {names[c['model']]} - {names[c['versus']]} | "
                     f"{c['metric']} | {c['diff']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] |")
    return "\n".join(lines) + "\n"
