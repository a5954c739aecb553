"""Paired bootstrap: cases whose answer is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from metarec.eval.bootstrap import paired_bootstrap


def test_constant_difference_collapses_the_interval() -> None:
    base = torch.linspace(0.5, 1.5, 50)
    res = paired_bootstrap(base - 0.1, base, n_samples=500, seed=3)
    assert res.diff == pytest.approx(-0.1)
    assert res.low == pytest.approx(-0.1) and res.high == pytest.approx(-0.1)
    assert res.std == pytest.approx(0.0, abs=1e-6)   # float32 inputs
    assert res.p_value == 0.0 and res.n_users == 50


def test_symmetric_differences_match_the_normal_approximation() -> None:
    # half the users gain +1, half lose 1: mean 0, sd 1, so the CI is about 0 +- 1.96 / sqrt(U)
    u = 400
    diff = torch.tensor([1.0, -1.0]).repeat(u // 2)
    base = torch.rand(u, generator=torch.Generator().manual_seed(0))   # cancels in the pair
    res = paired_bootstrap(base + diff, base, n_samples=20000, seed=0)
    half = 1.959964 * math.sqrt((u - 1) / u) / math.sqrt(u)            # plug-in sd / sqrt(U)
    assert res.diff == pytest.approx(0.0, abs=1e-6)   # float32 inputs
    assert res.low < 0.0 < res.high
    assert res.low == pytest.approx(-half, abs=0.01)
    assert res.high == pytest.approx(half, abs=0.01)
    assert res.std == pytest.approx(half / 1.959964, rel=0.03)
    assert res.p_value > 0.5


def test_seeded_and_invariant_to_chunking() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(80, generator=gen), torch.rand(80, generator=gen)
    r1 = paired_bootstrap(a, b, n_samples=300, seed=7)
    assert paired_bootstrap(a, b, n_samples=300, seed=7) == r1
    # one generator stream across chunks: the chunk size bounds memory, never the answer
    # (a generator reseeded per chunk, or a last chunk dropped, changes it)
    for chunk in (1, 7, 299, 1000):
        assert paired_bootstrap(a, b, n_samples=300, seed=7, chunk=chunk) == r1, chunk
    assert paired_bootstrap(a, b, n_samples=300, seed=8) != r1
    assert r1.low <= r1.diff <= r1.high


def test_rejects_unpaired_or_nan_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap(torch.tensor([1.0, float("nan")]), torch.zeros(2))
