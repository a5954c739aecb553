"""The evaluation's documents: ``report.md``, a self-contained ``index.html`` and
``appendix.md``.

They answer before they list: the verdict per scenario (with the users it rests on), the model
the nightly batch serves, then per scenario a table of the models that matter
(:mod:`metarec.eval.lineup`: six at most) with CIs and user counts, and a note where the users
are too few for a conclusion; then the figures, the choices made on validation. Every model x
scenario x K x metric is in ``appendix.md`` (and collapsed at the end of the HTML).

Both documents are rendered from one list of blocks, so they cannot disagree. The HTML
inlines its plots, so it opens anywhere without the folder.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metarec.eval.compare import k_order
from metarec.eval.headline import (
    SCENARIO_LABELS,
    TOO_FEW,
    judge,
    pct,
    users_of,
    verdict,
    verdict_note,
)
from metarec.eval.lineup import Member, Point, lineup, series
from metarec.eval.plots import k_figure, save, steps_figure
from metarec.eval.report import k_label, markdown_table
from metarec.io import atomic_dir, write_text

PLOTS = "plots"   # the curves' folder inside the report folder (dvc.yaml: its plots)
APPENDIX = "appendix.md"


def png_data_uri(path: Path) -> str:
    """A PNG as a ``data:`` URI, so a page or a UI artifact shows it without the file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def plot_name(metric: str, against: str) -> str:
    """File name of a curve: ``ndcg_at_20_vs_k.png``."""
    return f"{metric.replace('@', '_at_')}_vs_{against}.png"


def _plots(result: dict[str, Any], report_dir: Path, primary: str, ref_k: Any
           ) -> list[tuple[str, str]]:
    """Draw the figures into ``<report_dir>/plots/`` (the folder replaced whole: which
    figures exist follows the params, e.g. no MAE figure for implicit labels); (path relative
    to the report folder, caption) of each one drawn."""
    out = []
    with atomic_dir(report_dir / PLOTS) as folder:
        for metric in (primary, "mae"):
            fig = k_figure(result, metric)
            if fig is not None:
                save(fig, folder / plot_name(metric, "k"))
                out.append((f"{PLOTS}/{plot_name(metric, 'k')}",
                            f"{metric} against K, per scenario: the best meta-learner against "
                            "the best non-meta model"))
            fig = steps_figure(result, metric, ref_k)
            if fig is not None:
                save(fig, folder / plot_name(metric, "steps"))
                out.append((f"{PLOTS}/{plot_name(metric, 'steps')}",
                            f"{metric} against test-time inner steps (user-cold, "
                            f"K={k_label(ref_k)}, the first seed; 0 = no adaptation)"))
    return out


# --------------------------------------------------------------------------------------------
# blocks: what both documents say, in order


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]


@dataclass
class Block:
    """``kind``: h1, h2, h3, p, ul, table, md (Markdown kept as it is: a table), img
    (``items``: path, caption) or details (``blocks`` collapsed in the HTML; in Markdown a
    link to the appendix stands for them)."""

    kind: str
    text: str = ""
    items: list[str] = field(default_factory=list)
    table: Table | None = None
    blocks: list[Block] = field(default_factory=list)


def _cell(p: Point, ref: dict[Any, float]) -> str:
    """``0.243 (-1% [-3%, +1%])``: the mean, then the difference from the reference relative
    to the reference's mean, with its CI; the mean alone for the reference itself."""
    base = ref.get(p.k)
    if p.diff is None or not base:
        return f"{p.value:.3f}"
    return (f"{p.value:.3f} ({pct(p.diff / base)} [{pct((p.low or 0) / base)}, "
            f"{pct((p.high or 0) / base)}])")


def _scenario_table(per: dict[Member, list[Point]]) -> Table:
    """The lineup on one scenario: a row per model, a column per K, the users last."""
    ks = sorted({p.k for points in per.values() for p in points}, key=k_order)
    means = {m.model: {p.k: p.value for p in pts} for m, pts in per.items() if m.role != "zero"}
    rows = []
    for member, points in per.items():
        ref = means.get(member.reference or "", {})
        by_k = {p.k: p for p in points}
        rows.append([member.label, *(_cell(by_k[k], ref) if k in by_k else "–" for k in ks)])
    users = {p.k: p.users for m, points in per.items() if m.role != "zero" for p in points
             if p.users is not None}
    rows.append(["users", *(str(users.get(k, "–")) for k in ks)])
    return Table(["model", *(f"K={k_label(k)}" for k in ks)], rows)


def _few_note(result: dict[str, Any], scenario: str) -> str | None:
    """Where the headline's CIs are too wide for a conclusion, say so beside the table."""
    rec = next((r for r in result.get("headline", []) if r["scenario"] == scenario), None)
    if rec is None:
        return None
    few = [x for x in rec["per_k"] if (x.get("verdict") or judge(
        x["rel"], x["rel_low"], x["rel_high"])) == TOO_FEW]
    if not few:
        return None
    return (f"Too few users for a conclusion at K={', '.join(str(x['k']) for x in few)} "
            f"({users_of(few)}): the {rec['model']} - {rec['baseline']} CIs span "
            f"{pct(min(x['rel_low'] for x in few))} to "
            f"{pct(max(x['rel_high'] for x in few))}. Read these columns as 'not measured', "
            "not as 'no difference'.")


def _metric_blocks(result: dict[str, Any], metric: str, heading: str) -> list[Block]:
    """Per scenario, the lineup's table for ``metric``, with the note on too few users."""
    members = lineup(result, metric)
    per_scenario = series(result, metric, members)
    order = [s for s in SCENARIO_LABELS if s in per_scenario] + sorted(
        s for s in per_scenario if s not in SCENARIO_LABELS)
    out = []
    for scenario in order:
        per = per_scenario[scenario]
        table = _scenario_table(per)
        everyone = [p for pts in per.values() for p in pts]
        out += [Block("h3", f"{SCENARIO_LABELS.get(scenario, scenario)}: {heading} "
                            f"({users_of([{'users': p.users} for p in everyone])})"),
                Block("table", table=table)]
        if metric == result["catalogue_metric"]:
            note = _few_note(result, scenario)
            if note:
                out.append(Block("p", f"**Note:** {note}"))
    return out


def _choice_lines(result: dict[str, Any], primary: str) -> list[str]:
    best = result["best_baseline"]
    lines = [f"best baselines (majority over seeds): **{best['accuracy'] or '–'}** for "
             f"MAE/RMSE (lowest validation MAE), **{best['ranking']}** for ranking metrics "
             f"(highest validation catalogue {primary})"]
    for seed, ch in result["choices"].items():
        if seed == "ensembles":
            if ch.get("meta-ens"):
                lines.append(f"ensembles: meta-ens averages {', '.join(ch['meta-ens'])} "
                             f"(highest validation {primary} among the seed-ensembles)")
            continue
        steps = ", ".join(f"{n}: {v['steps']}/{v.get('rank_steps', v['steps'])}"
                          for n, v in ch["inner_steps"].items())
        lines.append(f"seed {seed}: test-time inner steps (rating/ranking) {steps}")
    return lines


def _served(result: dict[str, Any]) -> str | None:
    serving = result.get("serving", {})
    if not serving:
        return None
    return (f"The nightly batch (`score.model: auto`) serves **{serving['model']}** "
            f"({serving['kind']}; {serving['why']}).")


def _comparison_rows(result: dict[str, Any]) -> Table:
    """Every model minus the best baseline of its family, every scenario, K and metric."""
    rows = [[c["scenario"], k_label(c["k"]), c["model"], c["baseline"], c["metric"],
             str(c["users"]), f"{c['diff']:+.4f}", f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"]
            for c in sorted(result["comparisons"], key=lambda c: (
                c["scenario"], k_order(c["k"]), c["metric"], c["model"]))]
    return Table(["scenario", "K", "model", "baseline", "metric", "users", "diff", "CI"], rows)


def _zero_rows(result: dict[str, Any]) -> Table:
    """Each adaptive model at its chosen steps minus itself at 0 steps."""
    rows = [[z["scenario"], k_label(z["k"]), z["model"], z["metric"], str(z["users"]),
             f"{z['value_without']:.4f}", f"{z['value_with']:.4f}", f"{z['diff']:+.4f}",
             f"[{z['ci_low']:+.4f}, {z['ci_high']:+.4f}]"]
            for z in sorted(result.get("zero_step", []), key=lambda z: (
                z["scenario"], k_order(z["k"]), z["metric"], z["model"]))]
    return Table(["scenario", "K", "model", "metric", "users", "0 steps", "chosen steps",
                  "diff", "CI"], rows)


def _appendix(result: dict[str, Any], metrics: list[str], level: str) -> list[Block]:
    return [Block("h2", "Every model, scenario and K (mean ± std over seeds)"),
            Block("p", "`-ens` rows are seed-ensembles (every seed's model averaged), one "
                       "evaluation each, so no spread; no cell is marked best: the verdict "
                       "and the tables above compare on paired users, this table does not."),
            Block("md", markdown_table(result["results"], metrics)),
            Block("h2", f"Each model minus the best baseline (paired bootstrap over users, "
                        f"{level})"),
            Block("table", table=_comparison_rows(result)),
            Block("h2", f"What each inner loop adds: chosen test-time steps minus 0 steps "
                        f"({level})"),
            Block("table", table=_zero_rows(result))]


def blocks(result: dict[str, Any], plots: list[tuple[str, str]], metrics: list[str],
           confidence: float) -> list[Block]:
    """The report, in reading order."""
    primary, level = result["catalogue_metric"], f"{confidence:.0%} CI"
    served = _served(result)
    out = [Block("h1", f"Evaluation: {result['dataset']} ({result['protocol']} protocol)"),
           Block("h2", "The answer"),
           Block("ul", items=[verdict(r) for r in result.get("headline", [])]),
           Block("p", verdict_note(confidence))]
    if served:
        out.append(Block("p", served))
    out += [Block("h2", f"The models that matter: catalogue {primary}"),
            Block("p", f"Test means over seeds; in brackets the difference from the best "
                       f"non-meta model (for the 0-step row: from the meta-learner), "
                       f"relative to its mean, with the paired-bootstrap {level} over users. "
                       f"K: the user's ratings the model is given. Every other model: "
                       f"[{APPENDIX}]({APPENDIX})."),
            *_metric_blocks(result, primary, f"catalogue {primary}")]
    if any(r.get("mae") is not None for r in result["results"]):
        out += [Block("h2", "Rating accuracy: MAE (lower is better)"),
                *_metric_blocks(result, "mae", "MAE")]
    out.append(Block("h2", "Figures"))
    out += [Block("img", items=[name, cap]) for name, cap in plots]
    out += [Block("h2", "Choices made on validation tasks"),
            Block("ul", items=_choice_lines(result, primary)),
            Block("details", "Appendix: every model, scenario, K and metric",
                  blocks=_appendix(result, metrics, level))]
    return out


# --------------------------------------------------------------------------------------------
# rendering


def _md_table(t: Table) -> list[str]:
    return ["| " + " | ".join(t.head) + " |", "|" + "---|" * len(t.head),
            *("| " + " | ".join(r) + " |" for r in t.rows)]


def to_markdown(items: list[Block]) -> str:
    """Markdown; a ``details`` block becomes a link to the appendix file."""
    lines: list[str] = []
    for b in items:
        if b.kind in ("h1", "h2", "h3"):
            lines += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "ul":
            lines += [*(f"- {x}" for x in b.items), ""]
        elif b.kind == "table" and b.table is not None:
            lines += [*_md_table(b.table), ""]
        elif b.kind == "md":
            lines += [b.text, ""]
        elif b.kind == "img":
            lines += [f"![{b.items[1]}]({b.items[0]})", "", f"*{b.items[1]}*", ""]
        elif b.kind == "details":
            lines += ["## Appendix", "", f"{b.text}: [{APPENDIX}]({APPENDIX}).", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Markdown's ``**bold**``, `` `code` `` and ``[text](link)`` in an escaped HTML line."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    return re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', out)


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.head)
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                   for r in t.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_as_html(text: str) -> str:
    """A Markdown table (the appendix's) as an HTML table."""
    rows = [line.strip().strip("|").split(" | ") for line in text.strip().splitlines()]
    return _html_table(Table([c.strip() for c in rows[0]],
                             [[c.strip() for c in r] for r in rows[2:]]))


def to_html(items: list[Block], report_dir: Path, title: str) -> str:
    """A self-contained page (figures inlined), the appendix collapsed."""
    parts = []
    for b in items:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "ul":
            ident = ' id="verdicts"' if not any(p.startswith("<ul") for p in parts) else ""
            parts.append(f"<ul{ident}>" + "".join(f"<li>{_inline(x)}</li>" for x in b.items)
                         + "</ul>")
        elif b.kind == "table" and b.table is not None:
            parts.append(_html_table(b.table))
        elif b.kind == "md":
            parts.append(_md_as_html(b.text))
        elif b.kind == "img":
            name, cap = b.items
            parts.append(f'<figure><img alt="{html.escape(cap)}" '
                         f'src="{png_data_uri(report_dir / name)}">'
                         f"<figcaption>{html.escape(cap)}</figcaption></figure>")
        elif b.kind == "details":
            parts.append(f"<details><summary>{html.escape(b.text)}</summary>"
                         + to_html(b.blocks, report_dir, "") + "</details>")
    body = "\n".join(parts)
    if not title:
        return body
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em auto;max-width:1250px;padding:0 1em;
line-height:1.4}}
table{{border-collapse:collapse;font-size:14px;margin-bottom:1em}}
td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}}
td+td{{font-variant-numeric:tabular-nums;white-space:nowrap}}
figure{{margin:1em 0 2em 0}}img{{width:100%;max-width:1000px}}
#verdicts li{{margin-bottom:.4em}}summary{{cursor:pointer;font-weight:bold}}</style></head>
<body>
{body}
</body></html>
"""


def write_report(result: dict[str, Any], report_dir: Path, metrics: list[str], primary: str,
                 confidence: float, ref_k: int) -> None:
    """``report.md``, ``index.html`` and ``appendix.md``, with the PNG figures (against K,
    and against inner steps at ``ref_k``) in ``plots/``."""
    plots = _plots(result, report_dir, primary, ref_k)
    items = blocks(result, plots, metrics, confidence)
    title = f"metarec evaluation: {result['dataset']}"
    write_text(to_markdown(items), report_dir / "report.md")
    appendix = next(b for b in items if b.kind == "details")
    write_text(to_markdown([Block("h1", f"Appendix: {title}"), *appendix.blocks]),
               report_dir / APPENDIX)
    write_text(to_html(items, report_dir, title), report_dir / "index.html")
