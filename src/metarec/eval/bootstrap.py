"""Paired bootstrap over users: is the model's gain over a baseline more than noise?

Both systems are scored on the same cold-start users, so the per-user differences are resampled
together (a paired test): user-level variation that hits both systems alike cancels out, which
gives much tighter intervals than comparing two independent means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BootstrapResult:
    """Mean difference (model - baseline) over users and its percentile confidence interval."""

    diff: float
    low: float
    high: float
    std: float           # standard deviation of the bootstrap distribution (standard error)
    p_value: float       # two-sided: 2 * min(P*(d <= 0), P*(d >= 0)), capped at 1
    n_users: int
    n_samples: int
    confidence: float


def paired_bootstrap(model: torch.Tensor, baseline: torch.Tensor, n_samples: int = 1000,
                     seed: int = 0, confidence: float = 0.95, chunk: int = 256
                     ) -> BootstrapResult:
    """Resample users with replacement (seeded, vectorised) and return the CI of the mean diff.

    ``model`` and ``baseline`` are per-user metric values (U,) for the same users in the same
    order. Non-finite values are rejected: drop users a metric skipped (NaN) before calling, so
    the removal is visible at the call site. ``chunk`` bounds memory (chunk x U indices).
    """
    if model.shape != baseline.shape or model.dim() != 1:
        raise ValueError(f"model {tuple(model.shape)} and baseline {tuple(baseline.shape)} "
                         "must be the same (U,) shape")
    if not (torch.isfinite(model).all() and torch.isfinite(baseline).all()):
        raise ValueError("per-user values must be finite; filter skipped (NaN) users first")
    if model.numel() == 0:
        raise ValueError("no users to bootstrap")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = (model.double() - baseline.double())                          # (U,)
    u = d.numel()
    gen = torch.Generator().manual_seed(seed)
    means = []
    for start in range(0, n_samples, chunk):
        b = min(chunk, n_samples - start)
        idx = torch.randint(u, (b, u), generator=gen)                 # (b, U)
        means.append(d[idx].mean(1))                                  # (b,)
    boot = torch.cat(means)                                           # (B,)
    alpha = 1.0 - confidence
    q = torch.quantile(boot, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=boot.dtype))
    p = 2.0 * min(float((boot <= 0).double().mean()), float((boot >= 0).double().mean()))
    return BootstrapResult(diff=float(d.mean()), low=float(q[0]), high=float(q[1]),
                           std=float(boot.std()), p_value=min(p, 1.0), n_users=u,
                           n_samples=n_samples, confidence=confidence)
