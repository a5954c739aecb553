"""The evaluation's figures: one question each, drawn to be read at about 850 px wide.

- ``<metric>_vs_k.png``: the metric against K (support size), one panel per scenario;
- ``<metric>_vs_steps.png``: the metric against test-time inner steps (user-cold, one K).

Each panel shows the six models of :mod:`metarec.eval.lineup` at most, with fixed colours,
markers and line styles per role, so a reader finds the best meta-learner and the best
baseline in every panel at once; the legend sits below the axes. The shaded band is the 95%
CI of the best meta-learner's difference from the best baseline, placed around its line: a
band that reaches the baseline's line means no clear difference (the other lines' CIs are in
the report's tables). K is spaced on a log scale (1, 3, 5 apart as 10 and 20 are).

Figures are drawn on their own Agg canvas (no pyplot state) and saved without the
matplotlib version, so the same results give the same bytes; 100 dpi at 10 inches is
1000 px, which the Prefect UI shows at about 850 px (fonts of 12 pt stay legible there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from metarec.eval.headline import SCENARIO_LABELS
from metarec.eval.lineup import Member, Point, lineup, series
from metarec.eval.report import LOWER_IS_BETTER, k_label
from metarec.eval.scoring import family
from metarec.io import atomic_path

# role: (colour, marker, line style); Okabe-Ito colours, told apart in colour-blind vision
STYLE = {"meta": ("#D55E00", "o", "-"), "zero": ("#E69F00", "v", "--"),
         "baseline": ("#0072B2", "s", "-"), "item-item": ("#009E73", "^", "-."),
         "popular": ("#555555", "D", ":"), "served": ("#CC79A7", "P", "-")}
RC = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 12,
      "xtick.labelsize": 11, "ytick.labelsize": 11, "figure.titlesize": 14}
WIDTH_IN, DPI = 10.0, 100
BANDS = ("meta",)   # the question's line; every other CI is in the report's tables


def shown(metric: str) -> str:
    """A metric as people write it: ``nDCG@20``, ``MAE``."""
    return metric.upper() if metric in LOWER_IS_BETTER else metric.replace("ndcg", "nDCG")


def metric_label(metric: str, result: dict[str, Any]) -> str:
    """Axis text: what the metric is and which way is better."""
    name = f"catalogue {shown(metric)}" if metric == result["catalogue_metric"] else shown(metric)
    return f"{name} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)"


def users_text(points: list[Point]) -> str:
    """``189 users`` or ``182-189 users`` (over K)."""
    n = sorted({p.users for p in points if p.users is not None})
    if not n:
        return "users unknown"
    return f"{n[0]} users" if n[0] == n[-1] else f"{n[0]}-{n[-1]} users"


def _numeric(points: list[Point]) -> list[Point]:
    return [p for p in points if not isinstance(p.k, str)]


def _line(ax: Any, member: Member, xs: list[float], ys: list[float]) -> Any:
    colour, marker, style = STYLE[member.role]
    (line,) = ax.plot(xs, ys, color=colour, marker=marker, linestyle=style, linewidth=2.2,
                      markersize=7, label=member.label)
    return line


def _k_axis(ax: Any, ks: list[int]) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(alpha=0.3)


def k_figure(result: dict[str, Any], metric: str) -> Figure | None:
    """``metric`` against K, one panel per scenario (two columns); None when no model has it."""
    members = lineup(result, metric)
    data = {s: {m: _numeric(p) for m, p in per.items() if _numeric(p)}
            for s, per in series(result, metric, members).items()}
    order = [s for s in SCENARIO_LABELS if data.get(s)] + sorted(
        s for s in data if s not in SCENARIO_LABELS and data[s])
    if not order:
        return None
    cols = 2 if len(order) > 1 else 1
    rows = math.ceil(len(order) / cols)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(WIDTH_IN, 1.9 + 3.5 * rows), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        handles: dict[Member, Any] = {}
        for ax, scenario in zip(axes, order, strict=False):
            per = data[scenario]
            for member, points in per.items():
                xs = [p.k for p in points]
                bands = [p.band for p in points]
                if member.role in BANDS and all(b is not None for b in bands):
                    colour = STYLE[member.role][0]
                    ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands],
                                    color=colour, alpha=0.15, linewidth=0)
                handles.setdefault(member, _line(ax, member, xs, [p.value for p in points]))
            ks = sorted({p.k for points in per.values() for p in points})
            _k_axis(ax, ks)
            every = [p for points in per.values() for p in points]
            ax.set_title(f"{SCENARIO_LABELS.get(scenario, scenario)} ({users_text(every)})")
            ax.set_xlabel("K: the user's ratings the model is given")
            ax.set_ylabel(metric_label(metric, result) if cols == 1 or
                          list(order).index(scenario) % cols == 0 else "")
        for ax in axes[len(order):]:
            ax.set_visible(False)
        meta = next((m for m in members if m.role == "meta"), None)
        ref = next((m for m in members if m.role == "baseline"), None)
        title = f"{shown(metric)} against K"
        if meta and ref:
            title += (f": {meta.model} (best meta-learner) vs {ref.model} (best non-meta "
                      f"model)\nshaded: 95% CI of {meta.model}'s gap to {ref.model} (paired "
                      "bootstrap over users)")
        fig.suptitle(title, fontsize=RC["figure.titlesize"])
        fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=2,
                   frameon=False)
    return fig


def steps_figure(result: dict[str, Any], metric: str, ref_k: Any) -> Figure | None:
    """``metric`` against test-time inner steps on user-cold tasks at K = ``ref_k`` (the
    first seed's curve); a model without an inner loop is a flat line at its value on the
    same tasks and seed; a star marks the steps chosen on validation."""
    curve = [r for r in result.get("steps_curve", []) if r.get(metric) is not None]
    if not curve:
        return None
    seed = curve[0]["seed"]
    fixed = {r["model"]: float(r[metric]) for r in result["results"]
             if r["seed"] == seed and r["scenario"] == "user_cold" and r["k"] == ref_k
             and r.get(metric) is not None}
    users = next((int(r["users"]) for r in result["results"] if r["seed"] == seed and
                  r["scenario"] == "user_cold" and r["k"] == ref_k), None)
    chosen = result.get("choices", {}).get(str(seed), {}).get("inner_steps", {})
    key = "steps" if family(metric) == "accuracy" else "rank_steps"
    members = [m for m in lineup(result, metric) if m.role != "zero"]
    steps = sorted({r["steps"] for r in curve})
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(WIDTH_IN, 6.4), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        handles = []
        for member in members:
            rows = sorted((r for r in curve if r["model"] == member.model),
                          key=lambda r: r["steps"])
            if rows:
                xs, ys = [r["steps"] for r in rows], [float(r[metric]) for r in rows]
                handles.append(_line(ax, member, xs, ys))
                pick = chosen.get(member.model, {}).get(key)
                if pick in xs:
                    ax.plot([pick], [ys[xs.index(pick)]], marker="*", markersize=20,
                            color=STYLE[member.role][0], markeredgecolor="black",
                            linestyle="none")
            elif member.model in fixed:
                colour, _, style = STYLE[member.role]
                handles.append(ax.axhline(fixed[member.model], color=colour, linestyle=style,
                                          linewidth=2.2,
                                          label=f"{member.label}, no inner loop"))
        if not handles:
            return None
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.grid(alpha=0.3)
        ax.set_xlabel("test-time inner steps on the user's K ratings (0 = no adaptation)")
        ax.set_ylabel(metric_label(metric, result))
        fig.suptitle(f"{shown(metric)} against inner steps: user-cold, K={k_label(ref_k)}, seed "
                     f"{seed}" + (f", {users} users" if users is not None else "")
                     + "\n\u2605 = the steps chosen on validation", fontsize=RC[
                         "figure.titlesize"])
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """The PNG, without the matplotlib version (the same figure gives the same bytes)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return Path(path)
