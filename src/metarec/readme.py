"""The README's results sections, generated from metrics files (never typed by hand).

``metarec readme-results`` rewrites the block between the two markers below in README.md
(from metrics/eval.json); ``--section backtest`` the backtest block (from metrics/backtest.json
of ML-100K and the drift benchmark's JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from metarec.errors import DataError
from metarec.eval.report import K_ALL, k_label, mean_std

START, END = "<!-- results:start -->", "<!-- results:end -->"
BACKTEST = ("<!-- backtest:start -->", "<!-- backtest:end -->")


def results_markdown(result: dict[str, Any], scenario: str = "user_cold") -> str:
    """Per model: MAE and the catalogue metric at each K (mean ± std over seeds), then the
    paired-bootstrap differences of every meta-learner against the best baseline."""
    df = pd.DataFrame(result["results"])
    df = df[df["scenario"] == scenario]
    if df.empty:
        raise DataError(f"no {scenario} results in the evaluation")
    primary = result.get("catalogue_metric", "ndcg@20")
    level = f"{result.get('bootstrap', {}).get('confidence', 0.95):.0%} CI"
    df = df.assign(k=df["k"].map(lambda k: K_ALL if k == "all" else int(k)))
    ks = sorted(df["k"].unique())
    seeds = df.loc[df["seed"] >= 0, "seed"].nunique()   # -1: ensembles over the seeds
    lines = [f"Dataset **{result['dataset']}**, protocol **{result['protocol']}**, scenario "
             f"**{scenario}**, {seeds} seeds (mean ± std; `-ens` models average the seeds' "
             "predictions, `meta-ens` the best seed-ensembles on validation); lower MAE is "
             f"better, higher {primary} (whole-catalogue ranking) is better.", ""]
    for metric in ("mae", primary):
        if df[metric].isna().all():
            continue
        g = df.groupby(["model", "k"])[metric]
        mean, std = g.mean().unstack(), g.std(ddof=1).unstack()
        order = mean.mean(axis=1).dropna().sort_values(ascending=metric == "mae").index
        lines += [f"**{metric}**", "", "| model | " + " | ".join(f"K={k_label(k)}" for k in ks)
                  + " |", "|---|" + "---|" * len(ks)]
        for model in order:
            cells = [mean_std(mean.loc[model, k], std.loc[model, k]) for k in ks]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    comps = [c for c in result["comparisons"] if c["scenario"] == scenario
             and c["metric"] in ("mae", primary)]
    if comps:
        lines += ["Each model minus the best baseline of the metric's family (chosen on "
                  f"validation tasks: lowest MAE for MAE, highest catalogue {primary} for "
                  f"{primary}), paired bootstrap over test users of seed-averaged values, "
                  f"{level} (significant when the interval excludes 0):", "",
                  "| model | metric | baseline | " + " | ".join(f"K={k_label(k)}" for k in ks)
                  + " |", "|---|---|---|" + "---|" * len(ks)]
        table = pd.DataFrame(comps)
        table["k"] = table["k"].map(lambda k: K_ALL if k == "all" else int(k))
        for (model, metric, base), grp in table.groupby(["model", "metric", "baseline"],
                                                         sort=True):
            by_k = grp.set_index("k")
            cells = [(f"{by_k.loc[k, 'diff']:+.3f} [{by_k.loc[k, 'ci_low']:+.3f}, "
                      f"{by_k.loc[k, 'ci_high']:+.3f}]") if k in by_k.index else "–"
                     for k in ks]
            lines.append(f"| {model} | {metric} | {base} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def backtest_markdown(backtest: dict[str, Any], drift: dict[str, Any] | None) -> str:
    """The backtest of the project's data set, then each run of the drift benchmark."""
    from metarec.backtest.report import markdown

    lines = [f"**This project's data** (`metrics/backtest.json`, threshold "
             f"{backtest['relevance_threshold']:g}):", "", markdown(backtest)]
    for run in (drift or {}).get("runs", []):
        lines += [f"**Synthetic, drift {run['drift']:g}** (`{drift['params']}`, "
                  f"{run['seconds']:.0f} s):", "", markdown(run["summary"])]
    return "\n".join(lines)


def update_readme(readme: Path, block: str, markers: tuple[str, str] = (START, END)) -> None:
    """Replace the text between the markers; fail clearly if they are missing."""
    start, end = markers
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise DataError(f"markers {start} / {end} not found", file=str(readme))
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{block}\n{end}{tail}", encoding="utf-8")
