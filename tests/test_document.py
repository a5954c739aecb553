"""What a reader gets from the evaluation: the models that matter picked by role, figures with
at most six lines a panel, a report that answers (verdicts with their users) before it lists.

The evaluation result is written by hand here (a small ``metrics/eval.json``), so each test
knows which model should fill which role and what each number is."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D

from metarec.eval.document import write_report
from metarec.eval.headline import AHEAD, BEHIND, LEVEL, TOO_FEW, headline, judge, verdict_lines
from metarec.eval.lineup import lineup, series
from metarec.eval.plots import k_figure, save, steps_figure

MODELS = {  # name: (kind, validation ndcg@20, test level); meta-learners first
    "maml": ("meta", 0.30, 0.30), "reptile": ("meta", 0.28, 0.27),
    "fomaml": ("meta", 0.27, 0.26), "metasgd": ("meta", 0.26, 0.25),
    "finetune": ("baseline", 0.29, 0.29), "pretrain": ("baseline", 0.25, 0.24),
    "ease": ("baseline", 0.24, 0.23), "itemknn": ("baseline", 0.25, 0.22),
    "most_popular": ("baseline", 0.18, 0.17), "biased_mf": ("baseline", 0.06, 0.05),
    "global_mean": ("baseline", 0.01, 0.01), "item_mean": ("baseline", 0.05, 0.04)}
RATES = ("maml", "reptile", "fomaml", "metasgd", "finetune", "pretrain", "biased_mf",
         "global_mean", "item_mean")
USERS = {"user_cold": 180, "item_cold": 15}
KS = (1, 3, 5)


def _result(served: str = "reptile") -> dict[str, Any]:
    """A small eval.json: 12 models and their seed-ensembles, two seeds, two scenarios."""
    rows, comparisons, zero = [], [], []
    for (name, (kind, _, level)), scenario, k in itertools.product(MODELS.items(), USERS, KS):
        for seed in (0, 1):
            rows.append({"model": name, "scenario": scenario, "k": k, "seed": seed,
                         "users": USERS[scenario] + 5, "ndcg@20": level + 0.01 * seed,
                         "mae": 0.80 + level / 10 if name in RATES else None})
        if kind == "meta":
            rows.append({"model": f"{name}-ens", "scenario": scenario, "k": k, "seed": -1,
                         "users": USERS[scenario] + 5, "ndcg@20": level + 0.02,
                         "mae": 0.80 + level / 10})
            zero += [{"model": name, "scenario": scenario, "k": k, "metric": m,
                      "value_without": v - 0.01, "value_with": v, "diff": 0.01,
                      "ci_low": 0.0, "ci_high": 0.02, "users": USERS[scenario]}
                     for m, v in (("ndcg@20", level + 0.005), ("mae", 0.80 + level / 10))]
        width = 0.005 if scenario == "user_cold" else 0.08   # item-cold: 15 users, wide CIs
        for metric, ref in (("ndcg@20", "finetune"), ("mae", "biased_mf")):
            if name != ref and (metric == "ndcg@20" or name in RATES):
                diff = level - MODELS[ref][2] if metric == "ndcg@20" else (level - 0.05) / 10
                comparisons.append({"model": name, "baseline": ref, "scenario": scenario,
                                    "k": k, "metric": metric, "diff": diff,
                                    "ci_low": diff - width, "ci_high": diff + width,
                                    "users": USERS[scenario]})
    val = {n: v for n, (_, v, _) in MODELS.items()}
    curve = [{"model": n, "steps": s, "seed": 0, "ndcg@20": MODELS[n][2] + s / 1000,
              "mae": 0.83 - s / 1000} for n in ("maml", "reptile", "fomaml", "metasgd",
                                                "finetune") for s in range(11)]
    result = {"dataset": "hand-made", "protocol": "temporal", "catalogue_metric": "ndcg@20",
              "metrics": ["mae", "ndcg@20"], "results": rows, "comparisons": comparisons,
              "zero_step": zero, "steps_curve": curve,
              "best_baseline": {"accuracy": "biased_mf", "ranking": "finetune"},
              "serving": {"model": served, "kind": "meta-learner", "metric": "ndcg@20",
                          "why": "chosen by hand", "val_ndcg@20": val},
              "choices": {"0": {"inner_steps": {n: {"steps": 3, "rank_steps": 5}
                                                for n in ("maml", "reptile", "finetune")}}},
              "bootstrap": {"samples": 200, "confidence": 0.95}}
    result["headline"] = headline(result)
    return result


def test_the_lineup_fills_each_role_from_the_scores_not_the_names() -> None:
    members = {m.role: m.model for m in lineup(_result(), "ndcg@20")}
    # maml: highest validation among meta-learners; finetune: the best baseline; itemknn
    # validated better than ease; reptile is what the batch serves
    assert members == {"meta": "maml", "zero": "maml", "baseline": "finetune",
                       "item-item": "itemknn", "popular": "most_popular", "served": "reptile"}


def test_a_model_in_two_roles_is_one_line_and_absent_roles_are_left_out() -> None:
    result = _result(served="maml")
    result["results"] = [r for r in result["results"] if r["model"] != "most_popular"]
    members = lineup(result, "ndcg@20")
    assert [m.role for m in members] == ["meta", "zero", "baseline", "item-item"]
    assert members[0].label == "maml (best meta-learner, served nightly)"
    mae = lineup(result, "mae")          # the item-item models rate nothing: no MAE line
    assert [(m.role, m.model) for m in mae] == [("meta", "maml"), ("zero", "maml"),
                                                ("baseline", "biased_mf")]


def test_a_point_carries_its_users_and_the_ci_of_its_difference() -> None:
    per = series(_result(), "ndcg@20", lineup(_result(), "ndcg@20"))["item_cold"]
    meta, zero = (next(p for m, p in per.items() if m.role == r) for r in ("meta", "zero"))
    assert meta[0].value == pytest.approx(0.305)           # mean of the two seeds' rows
    assert meta[0].users == 15 and meta[0].band == pytest.approx((0.305 - 0.08, 0.305 + 0.08))
    # the zero-step self: its own value, its difference from the adapted model turned round
    assert zero[0].value == pytest.approx(0.295) and zero[0].diff == pytest.approx(-0.01)
    assert (zero[0].low, zero[0].high) == (pytest.approx(-0.02), pytest.approx(0.0))


def _series_per_panel(fig: Any) -> list[list[str]]:
    return [[line.get_label() for line in ax.get_lines()
             if isinstance(line, Line2D) and not line.get_label().startswith("_")]
            for ax in fig.axes if ax.get_visible()]


@pytest.mark.parametrize("metric", ["ndcg@20", "mae"])
def test_each_figure_has_at_most_six_distinct_series_per_panel(metric: str) -> None:
    """Planted: k_figure drawing every model instead of the lineup failed this (15 lines)."""
    result = _result()
    for fig in (k_figure(result, metric), steps_figure(result, metric, 5)):
        assert fig is not None
        panels = _series_per_panel(fig)
        assert panels and all(1 <= len(labels) <= 6 for labels in panels), panels
        for ax in fig.axes:
            lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
            styles = {(to_hex(ln.get_color()), ln.get_marker()) for ln in lines}
            assert len(styles) == len(lines)          # no colour and marker repeated
        assert fig.legends and not any(ax.get_legend() for ax in fig.axes)  # outside axes


def test_figures_are_legible_at_the_width_prefect_shows_and_byte_identical(
        tmp_path: Path) -> None:
    fig = k_figure(_result(), "ndcg@20")
    assert fig is not None
    width, height = fig.get_size_inches() * fig.dpi
    # drawn at ~850 px in the UI: at least 400 px high there, fonts of 12 pt stay ~10 pt
    assert width == 1000 and height * 850 / width >= 400
    a, b = save(fig, tmp_path / "a.png"), save(k_figure(_result(), "ndcg@20"), tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    ax = fig.axes[0]
    assert "K" in ax.get_xlabel() and "higher is better" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3", "5"]


def test_judge_tells_level_from_too_few_users() -> None:
    assert judge(0.05, 0.02, 0.08) == AHEAD and judge(-0.05, -0.08, -0.02) == BEHIND
    assert judge(0.0, -0.04, 0.05) == LEVEL            # a tie within +-10%
    assert judge(0.0, -0.35, 0.27) == TOO_FEW           # item-cold on ML-100K: 15 users


def test_each_verdict_says_its_users_and_whether_they_suffice() -> None:
    lines = verdict_lines(_result()["headline"], 0.95)
    assert lines[0].startswith("user-cold (180 users): maml vs finetune on ndcg@20: ahead at")
    assert lines[1].startswith("item-cold (15 users): maml vs finetune on ndcg@20: too few "
                               "users for a conclusion at K=1, 3, 5")


def test_the_report_answers_on_its_first_screen_and_lists_last(tmp_path: Path) -> None:
    """Planted: the full table moved back above the answer failed this."""
    write_report(_result(), tmp_path, ["mae", "ndcg@20"], "ndcg@20", 0.95, 5)
    report = (tmp_path / "report.md").read_text()
    first = "\n".join(report.splitlines()[:12])       # a terminal's first screen
    assert "## The answer" in first
    assert "user-cold (180 users)" in first and "item-cold (15 users)" in first
    assert "serves **reptile**" in first
    # per scenario the six models with the users, and a note where they are too few
    assert "| users | 180 | 180 | 180 |" in report and "| users | 15 | 15 | 15 |" in report
    zero = next(line for line in report.splitlines() if line.startswith("| maml at 0 inner"))
    assert zero.startswith("| maml at 0 inner steps | 0.295 (-3% [-7%, 0%]) |")  # vs maml
    assert "Too few users for a conclusion at K=1, 3, 5 (15 users)" in report
    assert "| global_mean" not in report and "global_mean" in (tmp_path / "appendix.md"
                                                                ).read_text()
    appendix = (tmp_path / "appendix.md").read_text()
    assert "| user_cold | 1 | maml-ens |" in appendix and "| ensemble |" in appendix
    assert "**" not in appendix.split("|---|")[1]      # no cell marked best
    assert report.index("## The answer") < report.index("![") < report.index("## Appendix")
    page = (tmp_path / "index.html").read_text()
    assert page.index('id="verdicts"') < page.index("<img") < page.index("<details>")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "mae_vs_k.png", "mae_vs_steps.png", "ndcg_at_20_vs_k.png", "ndcg_at_20_vs_steps.png"]
