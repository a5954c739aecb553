"""Adapt a fitted model to many users at once and pick each user's top K of the catalogue.

Any registered predictor scores: ``adapt`` reads each user's interactions (batched: a
meta-learner's ``vmap(grad(...))`` inner loop, a baseline's closed-form statistics), ``rank``
gives the whole catalogue's ranking scores (a meta-learner embeds items once per run, then one
batched product per block of items), ``rate`` the predicted ratings of the chosen items.

Ties in the ranking score are broken by catalogue position, so the order is unique and does
not depend on ``topk``'s algorithm.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metarec.data.tasks import TaskBatch, pad_rows
from metarec.meta.predictor import CELLS
from metarec.models.base import Predictor
from metarec.scoring import heap


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
                    exclude_rows: Tensor, exclude_cols: Tensor, k: int, cells: int = CELLS
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(items (T, k'), valid (T, k'), ranking scores (T, k'), predicted ratings (T, k'),
    because (T, k') the catalogue row of the support item that explains each pick or -1) of
    one chunk of users; excluded cells (what a user already has) are never recommended.
    Ratings are NaN for a model that only ranks (and every column is NaN where not valid).

    The catalogue is ranked a block of about ``cells`` scores at a time
    (:meth:`~metarec.models.base.Predictor.rank_blocks`), keeping only the running top K: a
    chunk of users against a catalogue of millions of items never holds all its scores.
    The ranking runs where the model's blocks are (a GPU when the model is on one); the
    answers come back on the CPU."""
    state = predictor.adapt(batch, chunk_no)
    idx, valid, score = top_k_blocks(predictor.rank_blocks(state, cells), len(batch),
                                     predictor.n_items, exclude_rows, exclude_cols, k)
    batch = batch.to(idx.device)
    if predictor.predicts_ratings:
        rating = predictor.rate(state, idx).float()                       # (T, k')
    else:
        rating = torch.full(idx.shape, torch.nan, device=idx.device)
    pos = predictor.explain(batch, idx)                                   # (T, k') or None
    because = torch.full(idx.shape, -1, dtype=torch.long, device=idx.device)
    if pos is not None:
        rows = batch.support_items.gather(1, pos.clamp(min=0))
        because = torch.where(pos >= 0, rows, because)
    return idx.cpu(), valid.cpu(), score.cpu(), rating.cpu(), because.cpu()


LOWEST = torch.iinfo(torch.int64).min   # below every float's key (bits >= -2**31 + 1)


def pack(key: Tensor, cols: Tensor | int, n: int) -> Tensor:
    """Unique, order-preserving int64 keys of scores ``key`` at catalogue columns ``cols``
    (a tensor of ``key``'s shape, or the first column of a (T, B) block): each float32 mapped
    to an order-preserving int32 in the high half, the reversed column in the low half, so
    equal scores rank by column."""
    if isinstance(cols, int):
        cols = cols + torch.arange(key.shape[-1], device=key.device)
    bits = key.float().contiguous().view(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)                              # float order
    return (bits.long() << 32) + (n - 1 - cols)


def unpack(packed: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(columns, valid, scores) of packed keys; scores are NaN where not valid."""
    col = n - 1 - (packed & 0xFFFFFFFF)
    valid = packed >= LOWEST + (1 << 32)
    bits = (packed >> 32).int()
    score = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).view(torch.float32)
    return col, valid, torch.where(valid, score, torch.nan)


def top_k_blocks(blocks: Iterable[tuple[int, Tensor]], t: int, n: int, exclude_rows: Tensor,
                 exclude_cols: Tensor, k: int, compiled: bool = True
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Catalogue columns (T, k') of the k highest scores per row over ``blocks`` of columns
    ((first column, scores (T, B)), in order, covering all ``n``), which picks are valid, and
    their scores; ``k' = min(k, n)``. The blocks are read, never written.

    Exactly the top K of the whole row: equal scores rank by column (:func:`pack`); excluded
    cells get keys below every score and are picked only when a row has fewer than k other
    cells, marked invalid. Only one block and the running (T, k) best exist at a time; once
    every row holds k picks, only a block's cells that reach their row's k-th best are looked
    at one by one, as a search index's heap does: on the CPU by the compiled kernel of
    :mod:`metarec.scoring.heap` (one pass per block) unless ``compiled`` is false, elsewhere
    by PyTorch operations (:func:`_merge`).
    """
    order = torch.argsort(exclude_cols, stable=True)
    ex_rows, ex_cols = exclude_rows[order], exclude_cols[order]
    kk = min(k, n)
    best = torch.empty((t, 0), dtype=torch.long)
    blocks = iter(_seeded(blocks, max(SEED, kk)))
    for c0, key in blocks:
        if best.device != key.device:       # the blocks' device (a GPU's) from here on
            best, ex_rows, ex_cols = (x.to(key.device) for x in (best, ex_rows, ex_cols))
        if compiled and key.device.type == "cpu" and best.shape[1] == kk and kk > 0:
            best = _compiled(best, itertools.chain([(c0, key)], blocks), n,
                             exclude_rows, exclude_cols)
            break
        c1 = c0 + key.shape[1]
        lo, hi = torch.searchsorted(ex_cols, torch.tensor([c0, c1], device=key.device)
                                    ).tolist()
        rows, cols = ex_rows[lo:hi], ex_cols[lo:hi]
        if best.shape[1] == kk and kk > 0:
            best = _merge(best, key, c0, n, rows, cols)
            continue
        if torch.isnan(key).any():
            raise FloatingPointError(NAN)
        packed = pack(key, c0, n)                                          # (T, B)
        packed[rows, cols - c0] = LOWEST + (n - 1 - cols)                  # still unique
        best = torch.cat([best, packed.topk(min(kk, key.shape[1]), 1, sorted=False).values], 1)
        best = best.topk(min(kk, best.shape[1]), 1, sorted=False).values   # (T, <= k)
    best = best.sort(1, descending=True).values                           # (T, k')
    return unpack(best, n)


def _compiled(best: Tensor, blocks: Iterable[tuple[int, Tensor]], n: int,
              exclude_rows: Tensor, exclude_cols: Tensor) -> Tensor:
    """``best`` (T, k) packed keys updated with every block of ``blocks`` by the compiled
    heaps of :mod:`metarec.scoring.heap`; the same keys :func:`_merge` would give."""
    heap.threads(torch.get_num_threads())
    col, valid, score = unpack(best, n)
    hs = torch.where(valid, score, float("-inf")).numpy()     # new tensors: the heaps
    hc, hx = col.numpy(), (~valid).numpy()
    heap.heapify(hs, hc, hx)
    t = best.shape[0]
    rows, cols = exclude_rows.cpu().numpy(), exclude_cols.cpu().numpy()
    order = np.lexsort((cols, rows))                                      # by row, then column
    ex_cols = cols[order].astype(np.int64)
    ptr = np.searchsorted(rows[order], np.arange(t + 1))
    ex_start, ex_end = ptr[:-1].astype(np.int64), ptr[1:].astype(np.int64)
    nan_at = np.full(t, -1, dtype=np.int64)
    for c0, key in blocks:
        heap.merge(key.detach().float().numpy(), c0, hs, hc, hx, ex_start, ex_end, ex_cols,
                   nan_at)
        if (nan_at >= 0).any():
            raise FloatingPointError(NAN)
    hs_t, hc_t, hx_t = torch.from_numpy(hs), torch.from_numpy(hc), torch.from_numpy(hx)
    return torch.where(hx_t, LOWEST + (n - 1 - hc_t), pack(hs_t, hc_t, n))


NAN = "the model produced NaN scores"
TILE = 128   # columns whose maximum is compared with a row's k-th best at once
SEED = 512   # columns of the first block ranked whole, for each row's first k-th best


def _seeded(blocks: Iterable[tuple[int, Tensor]], width: int
            ) -> Iterator[tuple[int, Tensor]]:
    """``blocks`` with the first one cut after ``width`` columns: only those are ranked
    whole (keys packed, a top K); the rest already meets a k-th best that filters it."""
    blocks = iter(blocks)
    first = next(blocks, None)
    if first is None:
        return
    c0, key = first
    if key.shape[1] > width:
        yield c0, key[:, :width]
        yield c0 + width, key[:, width:]
    else:
        yield first
    yield from blocks


def _merge(best: Tensor, key: Tensor, c0: int, n: int, ex_rows: Tensor, ex_cols: Tensor
           ) -> Tensor:
    """``best`` (T, k) packed keys updated with a block's scores ``key`` (T, B) at columns
    c0..: only cells scoring at least their row's k-th best can enter (``>=``: a later column
    with an equal score never outranks it, but 0.0 does outrank -0.0), and an excluded cell
    never does (the row's k picks already outrank it). One pass takes the maximum of each
    tile of ``TILE`` columns; only tiles whose maximum reaches the k-th best are read again,
    so the few candidates are found without a comparison per cell."""
    _, valid, kth = unpack(best.min(1, keepdim=True).values, n)             # (T, 1)
    kth = torch.where(valid, kth, float("-inf"))  # an excluded pick: any score beats it
    r, c = _at_least(key, kth)
    if ex_rows.numel() and r.numel():
        b = key.shape[1]
        keep = ~torch.isin(r * b + c, ex_rows * b + (ex_cols - c0))
        r, c = r[keep], c[keep]
    if r.numel() == 0:
        return best
    rows, inverse, counts = torch.unique_consecutive(r, return_inverse=True,
                                                     return_counts=True)
    slot = torch.arange(r.numel(), device=r.device) - (torch.cumsum(counts, 0) - counts)[inverse]
    cand = torch.full((rows.numel(), int(counts.max())), LOWEST, device=r.device)  # (R, m)
    cand[inverse, slot] = pack(key[r, c], c0 + c, n)
    best = best.clone()
    best[rows] = torch.cat([best[rows], cand], 1).topk(best.shape[1], 1, sorted=False).values
    return best


def _at_least(key: Tensor, kth: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, columns) of the cells of ``key`` (T, B) at or above their row's ``kth`` (T, 1),
    in row-major order; raises on a NaN score."""
    t, b = key.shape
    w = b - b % TILE
    r = c = torch.empty(0, dtype=torch.long, device=key.device)
    if w:
        tiles = key[:, :w].unfold(1, TILE, TILE)                         # (T, B // TILE, TILE)
        peak = tiles.amax(-1)                                             # NaN if one is
        if torch.isnan(peak).any():
            raise FloatingPointError(NAN)
        tr, tc = (peak >= kth).nonzero(as_tuple=True)                    # candidate tiles
        pr, pc = (tiles[tr, tc] >= kth[tr]).nonzero(as_tuple=True)       # within them
        r, c = tr[pr], tc[pr] * TILE + pc
    if w < b:                                                              # the last columns
        if torch.isnan(key[:, w:]).any():
            raise FloatingPointError(NAN)
        rr, rc = (key[:, w:] >= kth).nonzero(as_tuple=True)
        r, c = torch.cat([r, rr]), torch.cat([c, rc + w])
        order = torch.argsort(r * b + c)
        r, c = r[order], c[order]
    return r, c


def top_k(key: Tensor, exclude_rows: Tensor, exclude_cols: Tensor, k: int
          ) -> tuple[Tensor, Tensor]:
    """Catalogue positions (T, k') of the k highest keys of a dense (T, C) matrix, and which
    picks are valid (:func:`top_k_blocks` with one block)."""
    idx, valid, _ = top_k_blocks([(0, key)], key.shape[0], key.shape[1], exclude_rows,
                                 exclude_cols, k)
    return idx, valid
