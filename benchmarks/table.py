"""README's benchmark table, generated from the JSON in ``benchmarks/results/``.

    python benchmarks/table.py           # rewrite the table between the README markers
    python benchmarks/table.py --check   # exit 1 when README's table is not what the JSON says

A row per result file that exists; a figure the JSON lacks is left out rather than guessed.
The test suite runs ``--check``, so a benchmark rerun without regenerating the table fails CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def data_pipeline(r: dict) -> list[str]:
    """10M (issue 2: time and memory) or a larger log (issue 16: memory, linear time)."""
    s, goal, rss = r["seconds"], r["goal"], r["peak_rss_mb"]
    peak = rss["max"] if isinstance(rss, dict) else rss
    stages = ", ".join(f"{k} {s[k]:.0f}" for k in ("ingest", "validate", "episodes"))
    memory = f"peak RSS {peak / 1024:.1f} GB"
    if isinstance(rss, dict):
        memory += " (" + ", ".join(f"{k} {rss[k] / 1024:.1f}"
                                   for k in ("ingest", "validate", "episodes")) + ")"
    what = "ingest + validate + episodes of a synthetic log"
    if isinstance(rss, dict):
        what += f" ({r['users']:,} users, {r['items']:,} items), each stage in its own process"
    if "per_interaction_ratio" in goal:
        ratio = r["per_interaction_ratio"]
        ok = peak <= goal["peak_rss_mb"] and ratio <= goal["per_interaction_ratio"]
        ref = r["reference"]
        return [f"`data_pipeline.py --interactions {r['interactions']}`", what,
                f"≤ {goal['peak_rss_mb'] / 1024:.0f} GB; time per interaction ≤ "
                f"{goal['per_interaction_ratio']} × the {ref['interactions'] / 1e6:.0f}M run's",
                f"{s['total']:.0f} s ({stages}), {memory}; "
                f"{r['microseconds_per_interaction']:.2f} µs per interaction = {ratio:.2f} × "
                f"{ref['interactions'] / 1e6:.0f}M's {ref['microseconds_per_interaction']:.2f}: "
                + _met(ok)]
    ok = s["total"] <= goal["seconds"] and peak <= goal["peak_rss_mb"]
    return [f"`data_pipeline.py` ({r['interactions']:,} interactions)", what,
            f"≤ {goal['seconds']} s, ≤ {goal['peak_rss_mb'] / 1024:.0f} GB",
            f"{s['total']:.0f} s ({stages}), {memory}: " + _met(ok)]


def scoring(r: dict) -> list[str]:
    parts = [f"{r['users_per_s']:,.0f} users/s (adaptation included)"
             + (f", {r['pytorch_top_k']['users_per_s']:,.0f} with the PyTorch top K"
                if "pytorch_top_k" in r else "")]
    goals = []
    large = r["items"] >= 100_000   # issue 16's throughput goals are for large catalogues
    if "throughput_ratio_over_faiss" in r:
        ratio = r["throughput_ratio_over_faiss"]
        parts.append(f"faiss `IndexFlatIP` {r['faiss']['users_per_s']:,.0f} users/s "
                     f"(search only): {ratio:.2f}×" + (f", {_met(ratio >= 1)}" if large else ""))
        if large:
            goals.append("≥ faiss")
            # what no top K could beat: the adaptation and the fp32 GEMM alone
            users = r["users_per_s"] * r["seconds"]
            floor = users / (r["adapt_seconds"] + r["catalogue_scores_seconds"])
            parts.append(f"adaptation + GEMM alone {floor:,.0f} users/s = "
                         f"{floor / r['faiss']['users_per_s']:.2f}× faiss")
    if "ranking_gemm_fraction_of_matmul" in r:
        frac = r["ranking_gemm_fraction_of_matmul"]
        parts.append(f"ranking GEMM {r['ranking_gemm_gflops']:.1f} GFLOP/s = {frac:.0%} of "
                     f"{r['matmul_gflops']:.0f} (matmul)" + (f", {_met(frac >= 0.5)}"
                                                              if large else ""))
        if large:
            goals.append("GEMM ≥ 50% of matmul")
    parts.append(f"all work {r['gflops']:.1f} GFLOP/s = {r['gflops_fraction_of_matmul']:.1%}")
    rss = r["peak_rss_mb"]
    if len(rss) >= 2:
        sizes = sorted(rss, key=int)
        ratio = rss[sizes[-1]] / rss[sizes[0]]
        parts.append(f"stage RSS {rss[sizes[0]]:,.0f} MB ({int(sizes[0]):,} users) → "
                     f"{rss[sizes[-1]]:,.0f} MB ({int(sizes[-1]):,}): {ratio:.3f}×, "
                     + _met(ratio <= 1.3))
        goals.append(f"RSS({int(sizes[-1]):,}) ≤ 1.3 × RSS({int(sizes[0]):,})")
    return [f"`scoring.py --items {r['items']}`",
            f"cold users adapted (K={r['k_interactions']}, {r['inner_steps']} steps"
            + (f", inner ranking loss {r['inner_loss']}" if "inner_loss" in r else "")
            + f") and ranked (top {r.get('top', 20)}) over {r['items']:,} items, "
            f"{r['threads']} thread(s)",
            "; ".join(goals) or "–", "; ".join(parts)]


def _profile(prof: dict | None) -> str:
    """' (meta-batch 32 → 256: tasks/s; the adaptation + query loss and backward shares; the
    top operator)' of a config, or '' when the run has no profile."""
    if not prof:
        return ""
    sizes = sorted(prof, key=int)

    def arrow(fn: Callable[[dict], str]) -> str:
        return " → ".join(fn(prof[m]) for m in sizes)

    return (" (meta-batch " + " → ".join(sizes) + ": "
            + arrow(lambda x: f"{x['tasks_per_s']:,.0f}") + " tasks/s; adaptation + query "
            "loss " + arrow(lambda x: f"{x['share']['adapt_and_query_loss']:.0%}")
            + ", backward " + arrow(lambda x: f"{x['share']['backward']:.0%}") + "; top op "
            + arrow(lambda x: f"`{x['top_ops'][0]['op']}` "
                              f"{x['top_ops'][0]['self_cpu_share']:.0%}") + ")")


def meta_training(r: dict) -> list[str]:
    goal = {"dot": (40, 15), "mlp": (20, 6)}   # issue 16's goals per interaction
    parts, goals = [], []
    for name, c in r["configs"].items():
        t = c["tasks_per_s"]
        kind = "mlp" if "mlp" in name else "dot"
        g_higher, g_loop = goal[kind]
        ok = g_higher is None or (c["speedup_vs_higher"] >= g_higher
                                  and c["speedup_vs_loop"] >= g_loop)
        parts.append(f"{name}: {t['batched']:,.0f} tasks/s vs {t['higher']:,.0f} (`higher`) "
                     f"and {t['loop']:,.0f} (loop): {c['speedup_vs_higher']:.1f}× and "
                     f"{c['speedup_vs_loop']:.1f}×, {_met(ok)}{_profile(c.get('profile'))}")
        goal_text = f"{kind}: ≥ {g_higher}× `higher`, ≥ {g_loop}× loop"
        if goal_text not in goals:
            goals.append(goal_text)
    s = r["setup"]
    return ["`meta_training.py`",
            f"second-order MAML, K={s['k']}, Q={s['q']}, meta-batch {s['meta_batch']}, "
            f"{s['inner_steps']} inner steps, {r['machine']['torch_threads']} thread(s)",
            "; ".join(goals), "; ".join(parts)]


def evaluation(r: dict) -> list[str]:
    grid = r["grid"]
    ok = r["users_axis_ratio"] <= 1.2 and r["items_axis_ratio"] <= 1.2
    biggest = max(grid, key=lambda g: g["test_tasks"] * g["items"])
    return ["`evaluation.py`", "evaluate stage time per (test task, item) pair, synthetic "
            "with a multi-valued item feature",
            "per-pair time ratio, largest / smallest, ≤ 1.2 along users and along items",
            f"users ×{r['users_axis_ratio']:.2f}, items ×{r['items_axis_ratio']:.2f}; "
            f"{biggest['test_tasks']:,} tasks × {biggest['items']:,} items in "
            f"{biggest['seconds']:.0f} s: " + _met(ok)]


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.0%}"


def mutation(r: dict) -> list[str]:
    rated = {k: v for k, v in r["modules"].items() if v["kill_rate"] is not None}
    t = r["total"]
    per = r.get("sample_per_module")
    lowest = ""
    if rated:
        name, m = min(rated.items(), key=lambda kv: kv[1]["kill_rate"])
        lowest = f"; lowest {name} {_pct(m['kill_rate'])}"
    return ["`mutation.py` (`make mutation`)",
            f"mutants killed, {f'{per} per module (seeded sample)' if per else 'all'}, "
            f"{len(r['modules'])} core modules",
            "≥ 85% per module",
            f"{t['killed']}/{t['scored']} = {_pct(t['kill_rate'])}{lowest}: "
            + _mutation_verdict(r)]


def _mutation_verdict(r: dict) -> str:
    """Met only for a finished run; a run with unchecked mutants is said to be incomplete."""
    mods = r["modules"].values()
    unchecked = sum(m.get("not_checked", 0) for m in mods)
    if unchecked:
        return f"**incomplete** ({unchecked} mutants not checked)"
    return _met(all((m["kill_rate"] or 1.0) >= 0.85 for m in mods))


ROWS: list[tuple[str, Callable[[dict], list[str]]]] = [
    ("data_pipeline*.json", data_pipeline), ("scoring*.json", scoring),
    ("meta_training*.json", meta_training), ("evaluation.json", evaluation),
    ("mutation.json", mutation)]


def table(results: Path = RESULTS) -> str:
    """The markdown table of every result file present, in a fixed order."""
    lines = ["| benchmark | measures | goal | last result |", "|---|---|---|---|"]
    for pattern, row in ROWS:
        for path in sorted(results.glob(pattern)):
            cells = row(json.loads(path.read_text(encoding="utf-8")))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _k(k: object) -> tuple[int, str]:
    return (1, str(k)) if isinstance(k, str) else (0, f"{k:06d}")


def _ci(r: dict) -> str:
    cell = f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
    return f"**{cell}**" if r["ci_low"] > 0 or r["ci_high"] < 0 else cell


def platforms_table(results: Path = RESULTS) -> str:
    """platform_cold catalogue nDCG per model and K: on the new platform's support alone, with
    the other platforms' history, and the paired difference (bold: the CI excludes 0)."""
    path = results / "platforms.json"
    if not path.exists():
        return "_(no `benchmarks/results/platforms.json` yet: run `benchmarks/platforms.py`)_"
    r = json.loads(path.read_text(encoding="utf-8"))
    rows = [x for x in r["cross_platform"] if "@" not in x["without"]]
    ks = sorted({x["k"] for x in rows}, key=_k)
    metric, conf = r["catalogue_metric"], round(100 * r["confidence"])
    lines = [f"`{r['params']}` ({r['dataset']}), {metric} on platform_cold test tasks: "
             f"support alone → with the other platforms' history, and the paired difference "
             f"with its {conf}% CI (bold: excludes 0).", "",
             "| model | " + " | ".join(f"K={k}" for k in ks) + " |",
             "|---|" + "---|" * len(ks)]
    by = {(x["model"], x["k"]): x for x in rows}
    for model in sorted({x["model"] for x in rows}):
        cells = [(f"{by[model, k]['value_without']:.3f} → {by[model, k]['value_with']:.3f}, "
                  + _ci(by[model, k])) if (model, k) in by else "" for k in ks]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    tasks = ", ".join(f"K={k}: {n}" for k, n in sorted(r["tasks"].items(),
                                                        key=lambda kv: int(kv[0])))
    lines += ["", f"Tasks per K: {tasks}."]
    if r.get("learned_trust"):
        lines[-1] += (" Learned weight of a support item from another platform (1 = as one "
                      "of the task's own): " + ", ".join(
                          f"{k.split('/')[-1]} {v:.2f}" for k, v in r["learned_trust"].items())
                      + ".")
    return "\n".join(lines)


def item_cold_table(results: Path = RESULTS) -> str:
    """Item-cold catalogue nDCG of each text / item-id dropout variant minus the reference."""
    path = results / "text_ablation.json"
    if not path.exists():
        return "_(no `benchmarks/results/text_ablation.json` yet)_"
    r = json.loads(path.read_text(encoding="utf-8"))
    if "variants" not in r:
        return "_(text_ablation.json predates the variants: rerun `benchmarks/text_ablation.py`)_"
    metric, conf = r["metrics"][0], round(100 * r["confidence"])
    val = r["validation"]
    ks = sorted({x["k"] for rows in r["variants"].values() for x in rows}, key=_k)
    lines = [f"{r['dataset']}, {', '.join(r['algorithms'])} (seed {r['seed']}), {metric} of "
             f"the new items (`item_cold_catalogue: {r['item_cold_catalogue']}`), variant − "
             f"`none` with its {conf}% paired CI (bold: excludes 0); item-id dropout "
             f"{r['item_id_dropout']:g}. Validation {metric} (user-cold): "
             + ", ".join(f"{v} {next(iter(s.values())):.3f}" for v, s in val.items()) + ".",
             "", "| variant | scenario | " + " | ".join(f"K={k}" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    for variant, rows in r["variants"].items():
        for scenario in ("item_cold", "user_item_cold"):
            by = {x["k"]: x for x in rows if x["metric"] == metric and x["scenario"] == scenario}
            if not by:
                continue
            cells = [(f"{by[k]['reference']:.3f} → {by[k]['variant']:.3f}, " + _ci(by[k]))
                     if k in by else "" for k in ks]
            lines.append(f"| {variant} | {scenario} | " + " | ".join(cells) + " |")
    users: dict[str, set[int]] = {}
    for rows in r["variants"].values():
        for x in rows:
            if x["metric"] == metric and x["scenario"] in ("item_cold", "user_item_cold"):
                users.setdefault(x["scenario"], set()).add(x["users"])
    lines += ["", "Test users with a relevant new item, per K: " + ", ".join(
        f"{s} {min(n)}" + (f"–{max(n)}" if max(n) > min(n) else "")
        for s, n in sorted(users.items())) + "."]
    return "\n".join(lines)


def text_table(results: Path = RESULTS) -> str:
    """Item-cold and user-and-item-cold catalogue nDCG of each meta-learner without and with
    the item text vectors (the evaluate stage's ``text`` rows), paired difference and CI."""
    path = results / "text_eval.json"
    if not path.exists():
        return "_(no `benchmarks/results/text_eval.json` yet: run `benchmarks/text_eval.py`)_"
    r = json.loads(path.read_text(encoding="utf-8"))
    scenarios = ("item_cold", "user_item_cold")
    rows = [x for x in r["text"] if x["scenario"] in scenarios]
    ks = sorted({x["k"] for x in rows}, key=_k)
    metric, conf = r["catalogue_metric"], round(100 * r["confidence"])
    lines = [f"`{r['params']}` ({r['dataset']}, seeds {', '.join(map(str, r['seeds']))}, "
             f"encoder `{r['text_encoder']}`), `metrics/eval.json: text`: {metric} "
             f"(`item_cold_catalogue: {r['item_cold_catalogue']}`) of each meta-learner "
             f"without → with the title vectors, and the paired difference with its {conf}% "
             "CI (bold: excludes 0).", "",
             "| model | scenario | " + " | ".join(f"K={k}" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    by = {(x["model"], x["scenario"], x["k"]): x for x in rows}
    for model in sorted({x["model"] for x in rows}):
        for scenario in scenarios:
            cells = [(f"{by[model, scenario, k]['value_without']:.3f} → "
                      f"{by[model, scenario, k]['value_with']:.3f}, "
                      + _ci(by[model, scenario, k])) if (model, scenario, k) in by else ""
                     for k in ks]
            lines.append(f"| {model} | {scenario} | " + " | ".join(cells) + " |")
    users = {s: sorted({x["users"] for x in rows if x["scenario"] == s}) for s in scenarios}
    lines += ["", "Test users with a finite " + metric + " per K: " + ", ".join(
        f"{s} {u[0]}" + (f"–{u[-1]}" if u[-1] > u[0] else "") for s, u in users.items() if u)
        + "."]
    return "\n".join(lines)


def public_checks_table(results: Path = RESULTS) -> str:
    """benchmarks/public_checks.py: per check, user-cold catalogue nDCG@20 per K of the best
    meta-learner and the baselines, and the meta-learner's paired differences."""
    path = results / "public_checks.json"
    if not path.exists():
        return "_No public check has run yet: `python benchmarks/public_checks.py`._"
    checks = json.loads(path.read_text(encoding="utf-8"))["checks"]
    lines: list[str] = []
    for name, c in sorted(checks.items()):
        ks = sorted({k for per in c["means"].values() for k in per},
                    key=lambda k: (0, int(k)) if k.isdigit() else (1, 0))
        many = len(ks) > 8 and "all" in ks      # melu: one K per support size, 10 to 100+
        if many:
            ks = ["all"]
        meta = c["best_meta"]
        shown = [meta, *(m for m in ("encoder", "pretrain", "finetune", "ease", "itemknn",
                                     "biased_mf", "most_popular", "popular_now")
                         if m in c["means"] and m != meta)]
        goal = c["goal"]["meta_matches_ease"]
        lines += [f"**{name}** ({c['dataset']}, protocol {c['protocol']}, {c['users']:,} "
                  f"users, {c['items']:,} items, seeds {c['seeds']}, {c['seconds']:.0f} s): "
                  f"{c['scenario']} {c['metric']}; best meta-learner on validation "
                  f"**{meta}**, best baseline on validation {c['best_baseline']}, served "
                  f"{c['served']}; matches EASE: "
                  + ("–" if goal is None else _met(goal)), "",
                  "| model | " + " | ".join(f"K={k}" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for m in shown:
            lines.append(f"| {m} | " + " | ".join(
                f"{c['means'][m][k]:.3f}" if k in c["means"][m] else "" for k in ks) + " |")
        rows = [*(("− " + r["reference"], r) for r in c["references"]),
                *(("− itself at 0 steps", r) for r in c["zero_step"])]
        for label, _ in dict(rows).items():
            by = {str(r["k"]): r for lab, r in rows if lab == label}
            lines.append(f"| {meta} {label} | " + " | ".join(
                _ci(by[k]) if k in by else "" for k in ks) + " |")
        if many:
            lines.append("")
            lines.append(f"(K = all: every support size pooled; the {c['protocol']} protocol "
                         "gives each user all but 10 of their ratings, so each size is its own "
                         "K, in the JSON.)")
        lines.append("")
    lines.append("Differences: paired bootstrap over users, 95% CI (bold: excludes 0).")
    return "\n".join(lines)


def scale_table(results: Path = RESULTS) -> str:
    """benchmarks/scale.py: each scale config's stages (minutes, peak memory), the slowest
    fits, the loss the size rule chose, and the goal of issue #39."""
    runs = sorted(results.glob("scale_*.json"))
    if not runs:
        return "_No scale run yet: `python benchmarks/scale.py`._"
    lines: list[str] = []
    for path in runs:
        r = json.loads(path.read_text(encoding="utf-8"))
        o = r["overlay"].get("ingest", {}).get("synthetic", {})
        goal = r.get("goal", {})
        minutes = goal.get("minutes_1_seed" if len(r["seeds"]) == 1 else "minutes_3_seeds")
        in_time = minutes is None or r["total_minutes"] <= minutes
        in_memory = r["peak_rss_gib"] <= goal.get("peak_gib", float("inf"))
        verdict = _met(in_time and in_memory) if r.get("completed") else "not completed"
        lines += [f"**{r['params']}** ({o.get('interactions', 0):,} interactions, "
                  f"{o.get('items', 0):,} items, {o.get('users', 0):,} users; seeds "
                  f"{r['seeds']}; commit {r['commit'][:7]}): {r['total_minutes']} min, peak "
                  f"{r['peak_rss_gib']} GiB; goal "
                  + (f"{minutes} min" if minutes else "–")
                  + (f", {goal['peak_gib']} GiB" if "peak_gib" in goal else "")
                  + f": {verdict}", "",
                  "| stage | minutes | CPU minutes | peak RSS (GiB) | exit |",
                  "|---|---|---|---|---|"]
        for st in r["stages"]:
            lines.append(f"| {st['stage']} | {st['seconds'] / 60:.1f} | "
                         f"{st['cpu_seconds'] / 60:.1f} | {st['peak_rss_mib'] / 1024:.2f} | "
                         f"{st['returncode']} |")
        failed = [st for st in r["stages"] if st["returncode"]]
        for st in failed:
            said = [ln for ln in st.get("error_tail", "").splitlines() if ln.strip()]
            errors = [ln for ln in said if ln.lower().startswith("error")] or said[-1:]
            lines += ["", f"{st['stage']} stopped (exit {st['returncode']}): "
                      + (errors[-1].strip() if errors else "no output")]
        t = r.get("train")
        if t:
            timed = {n: f for n, f in t["fits"].items()
                     if isinstance(f.get("fit_seconds"), (int, float))}
            slow = sorted(timed, key=lambda n: -timed[n]["fit_seconds"])[:8]
            obj = t.get("objective") or {}
            lines += ["", f"Training: loss {obj.get('loss')} ({obj.get('item_ids')} item ids, "
                      f"sampled above {obj.get('sampled_above')}); slowest fits: " + ", ".join(
                          f"{n} {timed[n]['fit_seconds']:.0f} s"
                          + (f" ({timed[n]['stopped_by']}, {timed[n]['steps']} steps)"
                             if timed[n].get("stopped_by") else "") for n in slow) + "."]
        lines.append("")
    return "\n".join(lines)


def multilingual_table(results: Path = RESULTS) -> str:
    """Item-cold and user-and-item-cold catalogue nDCG with no text, hashed n-grams and the
    semantic encoder on each data set of ``multilingual.json`` (paired differences, CI), the
    cross-lingual placement of new items and the goals as the JSON reads them."""
    path = results / "multilingual.json"
    if not path.exists():
        return "_(no `benchmarks/results/multilingual.json` yet: run `benchmarks/multilingual.py`)_"
    r = json.loads(path.read_text(encoding="utf-8"))
    order = {"use-multilingual - none": 0, "hashed - none": 1, "use-multilingual - hashed": 2}
    lines: list[str] = []
    for name, d in sorted(r["datasets"].items()):
        rows = d["rows"]
        ks = sorted({x["k"] for x in rows}, key=_k)
        metric, conf = d["catalogue_metric"], round(100 * d["confidence"])
        lines += [f"**{name}** (`{d['params']}`, {d['dataset']}, seeds "
                  f"{', '.join(map(str, d['seeds']))}, item-id dropout "
                  f"{d['item_id_dropout']:g}, text_dim {d['text_dim']}): {metric} of the new "
                  f"items (`item_cold_catalogue: {d['item_cold_catalogue']}`) with encoder a "
                  f"→ with encoder b, and b − a with its {conf}% paired CI (bold: excludes "
                  "0).", "",
                  "| model | scenario | a → b | " + " | ".join(f"K={k}" for k in ks)
                  + " |", "|---|---|---|" + "---|" * len(ks)]
        by = {(x["model"], x["scenario"], x["comparison"], x["k"]): x for x in rows}
        keys = sorted({(x["model"], x["scenario"], x["comparison"]) for x in rows},
                      key=lambda key: (key[0], key[1], order.get(key[2], 9), key[2]))
        for model, scenario, comp in keys:
            first, _, second = comp.partition(" - ")
            cells = [(f"{by[model, scenario, comp, k]['value_without']:.3f} → "
                      f"{by[model, scenario, comp, k]['value_with']:.3f}, "
                      + _ci(by[model, scenario, comp, k]))
                     if (model, scenario, comp, k) in by else "" for k in ks]
            lines.append(f"| {model} | {scenario} | {second} → {first} | "
                         + " | ".join(cells) + " |")
        users = {s: sorted({x["users"] for x in rows if x["scenario"] == s})
                 for s in ("item_cold", "user_item_cold")}
        total = d["seconds"].get("total")
        lines += ["", "Test users per K: " + ", ".join(
            f"{s} {u[0]}" + (f"–{u[-1]}" if u[-1] > u[0] else "") for s, u in users.items()
            if u) + f". Models without text identical in both runs: "
            f"{'yes' if d['none_identical_across_runs'] else 'no'}."
            + (f" Run time {total / 60:.0f} min." if total else ""), ""]
        if d.get("cross_lingual"):
            cl = d["cross_lingual"]
            cks = sorted({x["k"] for x in cl}, key=_k)
            lines += ["Cross-lingual placement: for each new item, the item-cold test users "
                      "who liked an item of its topic described in another language against "
                      "those who liked none of its topic; AUC of the new item's place in their "
                      "rankings (0.5: no better than chance), mean over new items in a "
                      "language their topic's existing items used (seen) / never used "
                      "(unseen).", "",
                      "| encoder | model | " + " | ".join(f"K={k}" for k in cks) + " |",
                      "|---|---|" + "---|" * len(cks)]
            cby = {(x["encoder"], x["model"], x["k"]): x for x in cl}
            for enc, model in dict.fromkeys((x["encoder"], x["model"]) for x in cl):
                cells = [f"{cby[enc, model, k]['auc_seen']:.3f} / "
                         f"{cby[enc, model, k]['auc_unseen']:.3f}"
                         if (enc, model, k) in cby else "" for k in cks]
                lines.append(f"| {enc} | {model} | " + " | ".join(cells) + " |")
            x = cl[0]
            lines += ["", f"New items with both groups of users: {x['items_seen']} seen, "
                      f"{x['items_unseen']} unseen (K={x['k']})."]
            if d.get("text_alone"):
                lines[-1] += (" Topic read from the text alone (share of new items nearest "
                              "the centre of their own topic's training items), seen / "
                              "unseen: " + "; ".join(f"{enc} {v['seen']:.2f} / "
                                                     f"{v['unseen']:.2f}"
                                                     for enc, v in d["text_alone"].items())
                              + ".")
            lines.append("")
    if r.get("goals"):
        lines.append("Goals (multilingual catalogue): " + "; ".join(
            f"{goal}: {_met(ok)}" for goal, ok in r["goals"].items()) + ".")
    return "\n".join(lines).rstrip()


SECTIONS = [(BEGIN, END, table),
            ("<!-- public-checks:begin -->", "<!-- public-checks:end -->", public_checks_table),
            ("<!-- text:begin -->", "<!-- text:end -->", text_table),
            ("<!-- platforms:begin -->", "<!-- platforms:end -->", platforms_table),
            ("<!-- item-cold:begin -->", "<!-- item-cold:end -->", item_cold_table),
            ("<!-- multilingual:begin -->", "<!-- multilingual:end -->", multilingual_table),
            ("<!-- scale:begin -->", "<!-- scale:end -->", scale_table)]


def render(readme: str, body: str, begin: str = BEGIN, end: str = END) -> str:
    """README text with the part between the markers replaced by ``body``."""
    if begin not in readme or end not in readme:
        raise SystemExit(f"{README}: the markers {begin} and {end} are missing")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def render_all(readme: str, results: Path = RESULTS) -> str:
    """README with every generated section (:data:`SECTIONS`) rewritten from the JSON."""
    for begin, end, make in SECTIONS:
        readme = render(readme, make(results), begin, end)
    return readme


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail when README is out of date")
    args = ap.parse_args()
    old = README.read_text(encoding="utf-8")
    new = render_all(old)
    if args.check:
        if new != old:
            print(f"{README}: a generated table is out of date; run "
                  "python benchmarks/table.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
