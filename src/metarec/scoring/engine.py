"""Adapt a fitted model to many users at once and pick each user's top K of the catalogue.

Any registered predictor scores: ``adapt`` reads each user's interactions (batched: a
meta-learner's ``vmap(grad(...))`` inner loop, a baseline's closed-form statistics), ``rank``
gives the whole catalogue's ranking scores (a meta-learner embeds items once per run, then one
batched product per block of items), ``rate`` the predicted ratings of the chosen items.

Ties in the ranking score are broken by catalogue position, so the order is unique and does
not depend on ``topk``'s algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metarec.data.tasks import TaskBatch, pad_rows
from metarec.models.base import Predictor


@dataclass
class Ragged:
    """Per-user variable-length rows in CSR form: row u is ``values[starts[u]:starts[u+1]]``."""

    items: np.ndarray     # (nnz,) int64 catalogue index
    ratings: np.ndarray   # (nnz,) float32
    starts: np.ndarray    # (U + 1,) int64

    def padded(self, a: int, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """Users a..b-1 as (T, W) items, ratings and mask, W = their longest row (>= 1)."""
        lengths = np.diff(self.starts[a:b + 1])
        flat = slice(int(self.starts[a]), int(self.starts[b]))
        rows = np.repeat(np.arange(b - a), lengths)
        return pad_rows(rows, b - a, self.items[flat], self.ratings[flat])


def task_batch(user_idx: Tensor, items: Tensor, ratings: Tensor, mask: Tensor) -> TaskBatch:
    """A TaskBatch whose support is each user's interactions and whose query is empty."""
    t = user_idx.shape[0]
    empty = torch.zeros((t, 1), dtype=torch.long)
    return TaskBatch(task_id=torch.arange(t), user_idx=user_idx, support_items=items,
                     support_ratings=ratings, support_mask=mask, query_items=empty,
                     query_ratings=empty.float(), query_mask=empty.bool())


def recommend_chunk(predictor: Predictor, batch: TaskBatch, chunk_no: int,
                    exclude_rows: Tensor, exclude_cols: Tensor, k: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(items (T, k'), valid (T, k'), ranking scores (T, k'), predicted ratings (T, k'),
    because (T, k') the catalogue row of the support item that explains each pick or -1) of
    one chunk of users; excluded cells (what a user already has) are never recommended.
    Ratings are NaN for a model that only ranks."""
    state = predictor.adapt(batch, chunk_no)
    key = predictor.rank(state)                                           # (T, C)
    idx, valid = top_k(key, exclude_rows, exclude_cols, k)                # (T, k')
    score = key.gather(1, idx)                                            # (T, k')
    if predictor.predicts_ratings:
        rating = predictor.rate(state, idx).float()                       # (T, k')
    else:
        rating = torch.full(idx.shape, torch.nan)
    pos = predictor.explain(batch, idx)                                   # (T, k') or None
    because = torch.full(idx.shape, -1, dtype=torch.long)
    if pos is not None:
        rows = batch.support_items.gather(1, pos.clamp(min=0))
        because = torch.where(pos >= 0, rows, because)
    return idx, valid, score.float(), rating, because


def top_k(key: Tensor, exclude_rows: Tensor, exclude_cols: Tensor, k: int
          ) -> tuple[Tensor, Tensor]:
    """Catalogue positions (T, k') of the k highest keys per row, and which picks are valid.

    Each float32 key is mapped to an order-preserving int32 and packed with its reversed
    position into one int64, so every key is unique: equal scores rank by position.
    Excluded cells get keys below every score and are picked only when a row has fewer than
    k other cells; they come back marked invalid. ``k' = min(k, C)``.
    """
    if torch.isnan(key).any():
        raise FloatingPointError("the model produced NaN scores")
    c = key.shape[1]
    bits = key.float().contiguous().view(torch.int32)                      # (T, C)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)                              # float order
    packed = bits.long() * (1 << 32) + (c - 1 - torch.arange(c))           # (T, C) unique
    lowest = torch.iinfo(torch.int64).min  # below every float's key (bits >= -2**31 + 1)
    packed[exclude_rows, exclude_cols] = lowest + (c - 1 - exclude_cols)   # still unique
    top = torch.topk(packed, min(k, c), dim=1, sorted=True)                # (T, k')
    return top.indices, top.values >= lowest + (1 << 32)
