"""The synthetic source: taste-driven choice draws the same log however its logits are
chunked (memory is bounded by ``cells``, not by the catalogue)."""

from __future__ import annotations

import numpy as np

from metarec.config import SyntheticSource
from metarec.data.sources import synthetic


def _draw(cells: int, platforms: int) -> tuple[np.ndarray, ...]:
    spec = SyntheticSource(users=60, items=37, interactions=600, choice=2.0, seed=4,
                           platforms=platforms)
    rng = np.random.default_rng(0)
    U, V = (rng.normal(size=(n, spec.factors)) / np.sqrt(spec.factors) for n in (60, 37))
    planted = synthetic.Platforms(spec, 60) if platforms else None
    out = synthetic._chosen_by_taste(
        rng, spec, U, V, rng.normal(size=(60, spec.factors)),
        np.sort(rng.integers(0, 10**6, 60)), rng.lognormal(size=60), rng.lognormal(size=37),
        600, 2 * 10**6, planted, cells=cells)
    return tuple(x for x in out if x is not None)


def test_choice_draws_the_same_log_whatever_the_chunk_of_logits():
    for platforms in (0, 3):
        whole = _draw(1 << 22, platforms)          # one chunk
        rows = _draw(37, platforms)                # one draw per chunk
        odd = _draw(37 * 5 + 3, platforms)         # chunks of 5 draws
        assert len(whole[0]) == 600
        assert all(np.array_equal(a, b) for a, b in zip(whole, rows, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(whole, odd, strict=True))
    # taste steers the choice: not every item equally often
    counts = np.bincount(_draw(1 << 22, 0)[1], minlength=37)
    assert counts.max() > 3 * max(counts.min(), 1)
