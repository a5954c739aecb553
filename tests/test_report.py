"""Report: mean ± std over seeds in Markdown, and a PNG that is written and reproducible."""

from __future__ import annotations

import pytest

from metarec.eval.report import adaptation_curves, markdown_table, summarize


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


def test_markdown_marks_the_best_model() -> None:
    md = markdown_table(_rows(), ["mae", "ndcg@3"])
    assert "| user_cold | 5 | mf | **0.810 ± 0.014** | **0.700 ± 0.000** | 2 |" in md
    assert "| user_cold | 5 | mean | 0.920 ± 0.028 | 0.600 ± 0.000 | 2 |" in md


def test_duplicate_rows_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        summarize(_rows() + _rows()[:1], ["mae"])


def test_adaptation_curve_png_is_reproducible(tmp_path) -> None:
    a = adaptation_curves(_rows(), "mae", tmp_path / "a.png")
    b = adaptation_curves(_rows(), "mae", tmp_path / "b.png")
    assert a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert a.read_bytes() == b.read_bytes()
