"""The closed-form solves behind biased MF, the ridge meta-learner and a cold user's fit.

One implementation each: a batched ridge regression per task (optionally shrunk toward a
prior, with one precision per dimension), and the grouped ridge of an ALS half-step.
"""

from __future__ import annotations

import torch


def ridge_solve(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                lam: torch.Tensor | float, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Per task, argmin_w sum_s m_s (y_s - x_s . w)^2 + sum_d lam_d (w_d - prior_d)^2.

    x (T, S, D), y (T, S), mask (T, S) -> w (T, D) with one batched ``torch.linalg.solve``
    (differentiable). ``lam`` is a float or a (D,) tensor; ``prior`` (T, D) defaults to 0, so
    an empty support gives w = prior. Computed in the dtype of ``x``.
    """
    m = mask.to(x.dtype)                                               # (T, S)
    xm = x * m.unsqueeze(-1)                                           # (T, S, D)
    d = x.shape[-1]
    lam_t = torch.as_tensor(lam, dtype=x.dtype, device=x.device).expand(d)  # (D,)
    a = xm.transpose(1, 2) @ x + torch.diag(lam_t)                     # (T, D, D)
    b = (xm * (y * m).unsqueeze(-1)).sum(1)                            # (T, D)
    if prior is not None:
        b = b + lam_t * prior
    return torch.linalg.solve(a, b)                                    # (T, D)


def grouped_ridge(rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor, n_rows: int,
                  lam: float, chunk: int = 16384) -> torch.Tensor:
    """One ALS half-step: a ridge fit per row id over its ratings, (n_rows, D).

    rows (R,), x (R, D), y (R,). Gram matrices are summed with ``index_add_`` in chunks of
    ratings (bounded memory, deterministic on CPU); a row without ratings gets w = 0.
    """
    d = x.shape[1]
    a = torch.zeros(n_rows, d, d, dtype=torch.float64)                 # (n, D, D)
    b = torch.zeros(n_rows, d, dtype=torch.float64)                    # (n, D)
    for s in range(0, rows.numel(), chunk):
        xs, ys, rs = x[s:s + chunk], y[s:s + chunk], rows[s:s + chunk]
        a.index_add_(0, rs, xs[:, :, None] * xs[:, None, :])           # (chunk, D, D)
        b.index_add_(0, rs, xs * ys[:, None])                          # (chunk, D)
    a += lam * torch.eye(d, dtype=torch.float64)
    return torch.linalg.solve(a, b)                                    # (n, D)


def fit_als(users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, n_users: int,
            n_items: int, mu: float, dim: int, reg: float, iters: int, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch ALS for r - mu = p_u . q_i + b_u + b_i; returns (item factors, item bias).

    Seeded and deterministic. The user half-step is the same ridge a cold user gets at test
    time, so the item factors are trained for exactly the adaptation they will be used with.
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n_items, dim, generator=gen, dtype=torch.float64) * 0.1   # (N, d)
    b_i = torch.zeros(n_items, dtype=torch.float64)                           # (N,)
    one = torch.ones(ratings.numel(), 1, dtype=torch.float64)                 # (R, 1)
    resid = ratings - mu                                                      # (R,)
    for _ in range(iters):
        w_u = grouped_ridge(users, torch.cat([q[items], one], 1), resid - b_i[items],
                            n_users, reg)                                     # (U, d + 1)
        p, b_u = w_u[:, :dim], w_u[:, dim]
        w_i = grouped_ridge(items, torch.cat([p[users], one], 1), resid - b_u[users],
                            n_items, reg)                                     # (N, d + 1)
        q, b_i = w_i[:, :dim], w_i[:, dim]
    return q, b_i
