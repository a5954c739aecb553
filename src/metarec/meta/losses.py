"""Losses of the meta-learners: squared error on ratings, ranking losses over the catalogue.

Ranking losses take the scores of each task's positives (``pos`` (..., P) with weights
``pos_w``, 0 where a slot is padding or not a positive) and of candidate items (``cand``
(..., C) with ``valid`` (..., C)). Shapes carry no task dimension requirement, so the same
functions serve the batched outer loss and the per-task inner loss under ``vmap``:

- ``softmax`` (full): the candidates are the whole catalogue (positives included); each
  positive's loss is ``-(s_p - logsumexp(s_c over valid c))``;
- ``sampled`` softmax with the logQ correction (Yi et al., RecSys 2019): candidates are sampled
  negatives drawn with probability ``q``; every score is corrected by ``- log q`` and each
  positive competes with the negatives: ``-(s'_p - log(exp(s'_p) + sum_c exp(s'_c)))``;
- ``bpr`` (Rendle et al., 2009): ``mean_c softplus(s_c - s_p)`` over valid negatives.

A task's loss is the weighted mean over its positives; a task without positives gives 0 and is
left out of the mean over tasks (:func:`task_mean`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RANKING_LOSSES = ("softmax", "sampled", "bpr")
_NEG = -1e30  # a finite "minus infinity": logsumexp of an all-invalid row stays finite


def masked_mse(pred: Tensor, ratings: Tensor, mask: Tensor) -> Tensor:
    """Per-task mean squared error over valid positions: (..., L) -> (...); empty -> 0."""
    m = mask.to(pred.dtype)
    return ((pred - ratings) ** 2 * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def task_mean(per_task: Tensor, has: Tensor) -> Tensor:
    """Mean of per-task losses (T,) over the tasks that have something to learn from:
    ``has`` (T,) bool, or (T, L) bool (a task counts when any position is set)."""
    if has.dim() > per_task.dim():
        has = has.any(-1)
    w = has.to(per_task.dtype)                                          # (T,)
    return (per_task * w).sum() / w.sum().clamp(min=1.0)


def ranking_loss(kind: str, pos: Tensor, pos_w: Tensor, cand: Tensor, valid: Tensor,
                 pos_logq: Tensor | None = None, cand_logq: Tensor | None = None) -> Tensor:
    """Weighted mean over positives of the ranking loss ``kind`` (module docstring): (...)."""
    w = pos_w.to(pos.dtype)                                              # (..., P)
    if kind == "softmax":
        logz = cand.masked_fill(~valid, _NEG).logsumexp(-1, keepdim=True)  # (..., 1)
        per = logz - pos                                                 # (..., P)
    elif kind == "sampled":
        if pos_logq is None or cand_logq is None:
            raise ValueError("sampled softmax needs the sampling log-probabilities")
        p = pos - pos_logq                                               # (..., P)
        c = (cand - cand_logq).masked_fill(~valid, _NEG)                 # (..., C)
        per = torch.logaddexp(p, c.logsumexp(-1, keepdim=True)) - p      # (..., P)
    elif kind == "bpr":
        v = valid.to(pos.dtype).unsqueeze(-2)                            # (..., 1, C)
        pair = F.softplus(cand.unsqueeze(-2) - pos.unsqueeze(-1)) * v    # (..., P, C)
        per = pair.sum(-1) / v.sum(-1).clamp(min=1.0)                    # (..., P)
    else:
        raise ValueError(f"ranking loss must be one of {RANKING_LOSSES}, got {kind!r}")
    return (per * w).sum(-1) / w.sum(-1).clamp(min=1e-12)


def membership(rows: Tensor, mask: Tensor, n: int) -> Tensor:
    """(T, n) bool: which of ``n`` catalogue rows each task's (T, L) ``rows`` hold."""
    hits = torch.zeros(rows.shape[0], n, dtype=torch.float32, device=rows.device)
    hits.scatter_reduce_(1, rows, mask.to(torch.float32), reduce="amax")
    return hits > 0
