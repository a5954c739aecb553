"""The evaluation's documents: ``report.md`` and a self-contained ``index.html``.

Both lead with the answer (the headline: per scenario, the best meta-learner against the best
baseline, with CIs), then the adaptation curves, then the full tables and the choices made on
validation. The HTML inlines its plots, so it opens anywhere without the folder.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from metarec.eval.headline import headline_table, verdict_lines
from metarec.eval.report import adaptation_curves, k_label, markdown_table, summarize
from metarec.io import atomic_dir, write_text


def _steps_plot(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    """The K-curve plotter with test-time inner steps in the role of K, one panel."""
    as_k = [{"model": r["model"], "scenario": "user_cold", "k": r["steps"], "seed": r["seed"],
             metric: r[metric]} for r in rows]
    adaptation_curves(as_k, metric, path)


def png_data_uri(path: Path) -> str:
    """A PNG as a ``data:`` URI, so a page or a UI artifact shows it without the file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def plot_name(metric: str, against: str) -> str:
    """File name of a curve: ``ndcg_at_20_vs_k.png``."""
    return f"{metric.replace('@', '_at_')}_vs_{against}.png"


PLOTS = "plots"   # the curves' folder inside the report folder (dvc.yaml: its plots)


def _plots(result: dict[str, Any], report_dir: Path, primary: str) -> list[tuple[str, str]]:
    """Draw the curves into ``<report_dir>/plots/`` (the folder replaced whole: which curves
    exist follows the params, e.g. no MAE curve for implicit labels); (path relative to the
    report folder, caption) of each one drawn."""
    rows, out = result["results"], []
    with atomic_dir(report_dir / PLOTS) as folder:
        for metric in (primary, "mae"):
            if all(r.get(metric) is None for r in rows):
                continue     # implicit labels: no MAE curve
            adaptation_curves(rows, metric, folder / plot_name(metric, "k"))
            out.append((f"{PLOTS}/{plot_name(metric, 'k')}", f"{metric} against K, per scenario"))
            if result["steps_curve"]:
                _steps_plot(result["steps_curve"], metric, folder / plot_name(metric, "steps"))
                out.append((f"{PLOTS}/{plot_name(metric, 'steps')}",
                            f"{metric} against test-time inner steps (0 = no adaptation)"))
    return out


def _choice_lines(result: dict[str, Any], primary: str) -> list[str]:
    best = result["best_baseline"]
    lines = [f"- best baselines (majority over seeds): **{best['accuracy'] or '–'}** for "
             f"MAE/RMSE (lowest validation MAE), **{best['ranking']}** for ranking metrics "
             f"(highest validation catalogue {primary})"]
    serving = result.get("serving", {})
    if serving:
        lines.append(f"- nightly batch with `score.model: auto`: **{serving['model']}** "
                     f"({serving['kind']}; {serving['why']})")
    for seed, ch in result["choices"].items():
        if seed == "ensembles":
            if ch.get("meta-ens"):
                lines.append(f"- ensembles: meta-ens averages {', '.join(ch['meta-ens'])} "
                             f"(highest validation {primary} among the seed-ensembles)")
            continue
        steps = ", ".join(f"{n}: {v['steps']}/{v.get('rank_steps', v['steps'])}"
                          for n, v in ch["inner_steps"].items())
        lines.append(f"- seed {seed}: test-time inner steps (rating/ranking) {steps}")
    return lines


def write_report(result: dict[str, Any], report_dir: Path, metrics: list[str], primary: str,
                 confidence: float, ref_k: int) -> None:
    """``report.md`` and ``index.html`` with the PNG curves (against K, and against inner
    steps at ``ref_k``)."""
    plots = _plots(result, report_dir, primary)
    level = f"{confidence:.0%} CI"
    lines = [f"# Evaluation: {result['dataset']} ({result['protocol']} protocol)", "",
             "## The answer", "", *verdict_lines(result.get("headline", []), confidence), ""]
    table = headline_table(result.get("headline", []))
    if table:
        cols = list(table[0])
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table]
        lines.append("")
    lines += ["## Adaptation curves", ""]
    lines += [f"![{cap}]({name})" for name, cap in plots]
    lines += ["", f"(inner-steps curves: user-cold, K={ref_k}, first seed)", "",
              "## Test metrics (mean ± std over seeds)", "",
              markdown_table(result["results"], metrics), "",
              f"## User-cold: each model minus the best baseline (paired bootstrap over "
              f"users, {level})", "",
              f"| model | baseline | K | metric | diff | {level} |", "|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        if c["scenario"] == "user_cold" and c["metric"] in ("mae", primary):
            lines.append(f"| {c['model']} | {c['baseline']} | {k_label(c['k'])} | "
                         f"{c['metric']} | {c['diff']:+.4f} | [{c['ci_low']:+.4f}, "
                         f"{c['ci_high']:+.4f}] |")
    lines += ["", "## Choices made on validation tasks", "", *_choice_lines(result, primary),
              ""]
    write_text("\n".join(lines), report_dir / "report.md")
    write_text(_html(result, report_dir, metrics, plots, confidence, ref_k),
               report_dir / "index.html")


def _html(result: dict[str, Any], report_dir: Path, metrics: list[str],
          plots: list[tuple[str, str]], confidence: float, ref_k: int) -> str:
    """A self-contained page: headline, inlined curves, the tables."""
    esc = html.escape
    head = headline_table(result.get("headline", []))
    verdicts = "".join(f"<li>{esc(v)}</li>" for v in verdict_lines(
        result.get("headline", []), confidence))
    figures = "".join(
        f'<figure><img alt="{esc(cap)}" src="{png_data_uri(report_dir / name)}">'
        f"<figcaption>{esc(cap)}</figcaption></figure>" for name, cap in plots)
    summary = summarize(result["results"], metrics)
    summary["k"] = summary["k"].map(k_label)
    tables = pd.DataFrame(head).to_html(index=False, border=0) if head else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>metarec evaluation: {esc(str(result['dataset']))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse;font-size:13px}}
td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}
figure{{display:inline-block;margin:0 1em 1em 0}}img{{max-width:100%}}</style></head>
<body><h1>Evaluation: {esc(str(result['dataset']))}
({esc(str(result['protocol']))} protocol)</h1>
<h2>The answer</h2><ul id="verdicts">{verdicts}</ul>
<div id="headline">{tables}</div>
<h2>Adaptation curves</h2><div id="curves">{figures}</div>
<p>Inner-steps curves: user-cold, K={ref_k}, first seed.</p>
<h2>Test metrics (mean, std over seeds)</h2>
{summary.round(4).to_html(index=False, border=0, na_rep="–")}
<h2>Choices made on validation tasks</h2><ul>{"".join(
        f"<li>{esc(x[2:])}</li>" for x in _choice_lines(result, result["catalogue_metric"]))}
</ul></body></html>
"""
