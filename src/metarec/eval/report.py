"""Result rows -> a Markdown table (mean ± std over seeds), the appendix of the report.

A row is one (model, scenario, K, seed) evaluation: ``{"model", "scenario", "k", "seed",
"mae", "rmse", "ndcg@3", "recall@20", ...}``. Seeds are the unit of spread here (training
variability); the paired bootstrap over users answers the other question, whether a gap is
more than user sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

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
    """One line per (scenario, K, model), mean ± std over seeds. A seed-ensemble's row is
    one evaluation (``ensemble`` in the seeds column, no spread). No cell is marked best: a
    best mean among dozens of rows is not a finding (the paired comparisons are)."""
    rows = list(rows)
    ensembles = {r["model"] for r in rows if r["seed"] < 0}
    s = summarize(rows, metrics)
    head = ["scenario", "K", "model", *metrics, "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in s.to_dict("records"):
        cells = [mean_std(r[f"{m}_mean"], r[f"{m}_std"], digits) for m in metrics]
        seeds = "ensemble" if r["model"] in ensembles else str(r["n_seeds"])
        lines.append("| " + " | ".join([str(r["scenario"]), k_label(r["k"]), str(r["model"]),
                                          *cells, seeds]) + " |")
    return "\n".join(lines) + "\n"
