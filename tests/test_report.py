"""Report appendix: mean ± std over seeds in Markdown (figures: tests/test_document.py)."""

from __future__ import annotations

import pytest

from metarec.eval.report import markdown_table, summarize


def _rows() -> list[dict]:
    rows = []
    for seed, (a, b) in enumerate([(0.80, 0.90), (0.82, 0.94)]):
        for k, shift in ((5, 0.0), (10, -0.02)):
            rows.append({"model": "mf", "scenario": "user_cold", "k": k, "seed": seed,
                         "mae": a + shift, "ndcg@3": 0.7})
            rows.append({"model": "mean", "scenario": "user_cold", "k": k, "seed": seed,
                         "mae": b + shift, "ndcg@3": 0.6})
    return rows


def test_summary_mean_and_sample_std() -> None:
    s = summarize(_rows(), ["mae"])
    row = s[(s.model == "mf") & (s.k == 5)].iloc[0]
    assert row["mae_mean"] == pytest.approx(0.81)
    assert row["mae_std"] == pytest.approx(0.0141421, rel=1e-4)   # sd of (0.80, 0.82), ddof=1
    assert row["n_seeds"] == 2


def test_markdown_marks_no_best_and_names_seed_ensembles() -> None:
    """A seed-ensemble is one evaluation, not one seed; no cell is bold (a best mean among
    many rows is not a finding)."""
    ens = [{"model": "mf-ens", "scenario": "user_cold", "k": 5, "seed": -1, "mae": 0.79,
            "ndcg@3": 0.71}]
    md = markdown_table(_rows() + ens, ["mae", "ndcg@3"])
    assert "| user_cold | 5 | mf | 0.810 ± 0.014 | 0.700 ± 0.000 | 2 |" in md
    assert "| user_cold | 5 | mean | 0.920 ± 0.028 | 0.600 ± 0.000 | 2 |" in md
    assert "| user_cold | 5 | mf-ens | 0.790 | 0.710 | ensemble |" in md
    assert "**" not in md


def test_duplicate_rows_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        summarize(_rows() + _rows()[:1], ["mae"])
