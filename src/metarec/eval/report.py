"""Result rows -> a Markdown table (mean ± std over seeds) and PNG adaptation curves.

A row is one (model, scenario, K, seed) evaluation: ``{"model", "scenario", "k", "seed",
"mae", "rmse", "ndcg@3", "recall@20", ...}``. Seeds are the unit of spread here (training
variability); the paired bootstrap over users answers the other question, whether a gap is
more than user sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from metarec.io import atomic_path

KEYS = ("model", "scenario", "k", "seed")
LOWER_IS_BETTER = ("mae", "rmse")
K_ALL = 10**9   # K = "all" (every test user, whatever their support size) sorts last


def k_label(k: Any) -> str:
    return "all" if k in (K_ALL, "all") else str(k)


def _frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    missing = [k for k in KEYS if k not in df.columns]
    if df.empty or missing:
        raise ValueError(f"result rows need the keys {KEYS}; missing {missing or 'all rows'}")
    df["k"] = df["k"].map(lambda k: K_ALL if k == "all" else int(k))
    for col in df.columns:   # a metric a model has not (None in JSON) is NaN here
        if col not in KEYS and df[col].dtype == object:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    dup = df.duplicated(list(KEYS))
    if dup.any():
        raise ValueError(f"duplicate result row for {df.loc[dup, list(KEYS)].iloc[0].to_dict()}")
    return df


def summarize(rows: Iterable[dict[str, Any]], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for one seed) and seed count per (model, scenario, k)."""
    df = _frame(rows)
    absent = [m for m in metrics if m not in df.columns]
    if absent:
        raise ValueError(f"metrics not in the result rows: {absent}")
    g = df.groupby(["scenario", "k", "model"], sort=True)[list(metrics)]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_std"))
    out["n_seeds"] = df.groupby(["scenario", "k", "model"], sort=True)["seed"].nunique()
    return out.reset_index()


def mean_std(mean: float, std: float, digits: int = 3) -> str:
    """A table cell: mean ± std over seeds (the mean alone for one seed; – when missing)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: Iterable[dict[str, Any]], metrics: Sequence[str], digits: int = 3
                   ) -> str:
    """One line per (scenario, K, model); the best mean of each (scenario, K) is in bold."""
    s = summarize(rows, metrics)
    head = ["scenario", "K", "model", *metrics, "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best: dict[tuple[str, int, str], float] = {}
    for (scen, k), grp in s.groupby(["scenario", "k"], sort=True):
        for m in metrics:
            col = grp[f"{m}_mean"]
            best[(scen, k, m)] = col.min() if m in LOWER_IS_BETTER else col.max()
    for r in s.to_dict("records"):
        cells = []
        for m in metrics:
            text = mean_std(r[f"{m}_mean"], r[f"{m}_std"], digits)
            cells.append(f"**{text}**" if r[f"{m}_mean"] == best[(r["scenario"], r["k"], m)]
                         else text)
        lines.append("| " + " | ".join([str(r["scenario"]), k_label(r["k"]), str(r["model"]),
                                          *cells, str(r["n_seeds"])]) + " |")
    return "\n".join(lines) + "\n"


def adaptation_curves(rows: Iterable[dict[str, Any]], metric: str, path: str | Path) -> Path:
    """PNG of ``metric`` against K, one panel per scenario, one line per model (± std band).

    Drawn on an Agg canvas owned by this figure (no global pyplot state, no display needed);
    the PNG carries no version metadata, so identical results give identical bytes.
    """
    s = summarize(rows, [metric])
    s = s[s["k"] != K_ALL]
    scenarios = sorted(s["scenario"].unique())
    fig = Figure(figsize=(4.0 * len(scenarios), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(scenarios), squeeze=False)[0]
    for ax, scen in zip(axes, scenarios, strict=True):
        part = s[s["scenario"] == scen]
        for model, grp in part.groupby("model", sort=True):
            grp = grp.sort_values("k")
            mean, std = grp[f"{metric}_mean"], grp[f"{metric}_std"].fillna(0.0)
            ax.plot(grp["k"], mean, marker="o", label=str(model))
            ax.fill_between(grp["k"], mean - std, mean + std, alpha=0.2)
        ax.set_title(str(scen))
        ax.set_xlabel("K (support ratings)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, metadata={"Software": None})
    return Path(path)
