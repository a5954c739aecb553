"""Adapt the meta-learned model to many users at once and rank the whole catalogue for each.

Adaptation is the predictor's own batched path (``algorithm.adapt``: ``vmap(grad(...))`` over
users, no outer graph). Scoring every item for every user through ``AdaptivePredictor.predict``
would gather and project item features once per user ((T, C, features) tensors); here item
vectors are embedded and projected once per run and each user's adapted head scores them with
one matmul (dot) or batched matmuls (MLP). That fast path is valid whenever no item-side
parameter is adapted (adapt = head, decision or user); the closed-form ``ridge`` learner gets
its own (item features once, one matmul with each user's weights). Both are checked against
``predict`` in the tests. Anything else (adapt = all) adapts once and runs the algorithm's own
``predict`` on blocks of the catalogue, so memory stays bounded by ``FALLBACK_CELLS``.

Ranking uses the pre-sigmoid logit (ratings saturate in float32 and would tie) with ties broken
by catalogue position, so the order is unique and does not depend on ``topk``'s algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metarec.data.tasks import TaskBatch
from metarec.meta.predictor import AdaptivePredictor
from metarec.models.network import PreferenceNet

_ITEM_SIDE = ("item_", "user_cat.", "user_multi.", "user_num.")
FALLBACK_CELLS = 1 << 18  # (user, item) pairs per predict call on the fallback path


@dataclass
class Ragged:
    """Per-user variable-length rows in CSR form: row u is ``values[starts[u]:starts[u+1]]``."""

    items: np.ndarray     # (nnz,) int64 catalogue index
    ratings: np.ndarray   # (nnz,) float32
    starts: np.ndarray    # (U + 1,) int64

    def padded(self, a: int, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """Users a..b-1 as (T, W) items, ratings and mask, W = their longest row (>= 1)."""
        lo, hi = self.starts[a:b], self.starts[a + 1:b + 1]
        lengths = hi - lo
        width = max(int(lengths.max()) if len(lengths) else 0, 1)
        rows = np.repeat(np.arange(b - a), lengths)
        cols = np.arange(int(lengths.sum())) - np.repeat(lengths.cumsum() - lengths, lengths)
        flat = slice(int(self.starts[a]), int(self.starts[b]))
        items = np.zeros((b - a, width), np.int64)
        ratings = np.zeros((b - a, width), np.float32)
        mask = np.zeros((b - a, width), bool)
        items[rows, cols] = self.items[flat]
        ratings[rows, cols] = self.ratings[flat]
        mask[rows, cols] = True
        return torch.from_numpy(items), torch.from_numpy(ratings), torch.from_numpy(mask)


def task_batch(user_idx: Tensor, items: Tensor, ratings: Tensor, mask: Tensor) -> TaskBatch:
    """A TaskBatch whose support is each user's interactions and whose query is empty."""
    t = user_idx.shape[0]
    empty = torch.zeros((t, 1), dtype=torch.long)
    return TaskBatch(task_id=torch.arange(t), user_idx=user_idx, support_items=items,
                     support_ratings=ratings, support_mask=mask, query_items=empty,
                     query_ratings=empty.float(), query_mask=empty.bool())


class CatalogueScorer:
    """Adapted ratings of every catalogue item for a chunk of users."""

    def __init__(self, predictor: AdaptivePredictor, n_items: int, seed: int = 0) -> None:
        self.predictor = predictor
        self.algorithm = predictor.algorithm
        self.model: PreferenceNet = self.algorithm.model
        self.store = predictor.store
        self.n_items = n_items
        self.seed = seed
        names = self.algorithm.adapt_names
        self.ridge = self.algorithm.name == "ridge"
        self.fast_path = self.ridge or not any(n.startswith(_ITEM_SIDE) for n in names)
        with torch.no_grad():
            feats = self.store.items(torch.arange(n_items))
            if self.ridge:  # the learner's own item features, computed once for all users
                phi, offset = self.algorithm._item_side(feats)             # (C, D), (C,)
                self.item_vec, self.item_bias = phi, offset
            elif self.fast_path:
                x, bias = self.model.embed_items(feats)                    # (C, Di), (C,)
                self.item_vec = self.model.item_proj(x)                    # (C, d)
                self.item_bias = bias                                      # (C,)

    def adapt(self, batch: TaskBatch, chunk_no: int) -> dict[str, Tensor]:
        """Per-user parameters (T, ...) after the inner loop on each user's interactions."""
        gen = torch.Generator(device=self.store.device).manual_seed(self.seed + chunk_no)
        algo = self.algorithm
        return algo.adapt(algo.meta_params(), self.store.support(batch), create_graph=False,
                          generator=gen)

    def score(self, batch: TaskBatch, chunk_no: int) -> tuple[Tensor, Tensor]:
        """(ranking logits, predicted ratings), both (T, C) float32."""
        fast = self.adapt(batch, chunk_no)
        if not self.fast_path:
            rating = self._predict_blocks(fast, batch)                     # (T, C)
            return rating, rating
        m = self.model
        with torch.no_grad():
            if self.ridge:  # ridge rates offset + phi . w, clamped; rank on the unclamped
                raw = self.item_bias + fast["w"] @ self.item_vec.T         # (T, C)
                rating = raw.clamp(m.rating_min, m.rating_max)
                return raw.float(), rating.float()
            raw = self._logits(fast, batch.user_idx)                       # (T, C)
            rating = m.rating_min + (m.rating_max - m.rating_min) * torch.sigmoid(raw)
        return raw.float(), rating.float()

    def _predict_blocks(self, fast: dict[str, Tensor], batch: TaskBatch) -> Tensor:
        """``AdaptivePredictor.predict`` split over item blocks: same numbers, bounded memory."""
        t = len(batch)
        step = max(1, FALLBACK_CELLS // max(t, 1))
        parts = []
        with torch.no_grad():
            for c0 in range(0, self.n_items, step):
                items = torch.arange(c0, min(c0 + step, self.n_items)).expand(t, -1)  # (T, B)
                cands = self.store.candidates(batch.user_idx, items)
                parts.append(self.algorithm.predict(fast, cands).float())  # (T, B)
        return torch.cat(parts, dim=1)                                     # (T, C)

    def _param(self, fast: dict[str, Tensor], name: str, t: int) -> Tensor:
        """The adapted value (T, ...) of ``name``, or the shared one broadcast to T users."""
        if name in fast:
            return fast[name]
        shared = dict(self.model.named_parameters())[name]
        return shared.expand(t, *shared.shape)

    def _logits(self, fast: dict[str, Tensor], user_idx: Tensor) -> Tensor:
        """Pre-sigmoid output of :class:`PreferenceNet` for every (user, catalogue item)."""
        m, t = self.model, user_idx.shape[0]
        p = lambda name: self._param(fast, name, t)  # noqa: E731 - local shorthand
        xu = m.embed_users(self.store.users(user_idx))                     # (T, Du)
        u = torch.einsum("tdk,tk->td", p("user_proj.weight"), xu) + p("user_proj.bias")  # (T, d)
        iv = self.item_vec                                                 # (C, d)
        if m.interaction == "dot":
            w = p("out.weight")[:, 0, :]                                   # (T, d)
            raw = (u * w) @ iv.T + p("out.bias")                           # (T, C)
        else:
            d = u.shape[1]
            w0 = p("decision.0.weight")                                    # (T, h1, 2d)
            hu = torch.einsum("thd,td->th", w0[..., :d], u)                # (T, h1)
            hi = torch.matmul(iv, w0[..., d:].transpose(1, 2))             # (T, C, h1)
            h = torch.relu(hi + (hu + p("decision.0.bias")).unsqueeze(1))  # (T, C, h1)
            for k in range(1, len(m.decision)):
                wk = p(f"decision.{k}.weight").transpose(1, 2)             # (T, h_{k-1}, h_k)
                h = torch.relu(torch.matmul(h, wk) + p(f"decision.{k}.bias").unsqueeze(1))
            raw = torch.matmul(h, p("out.weight").transpose(1, 2)).squeeze(-1)  # (T, C)
            raw = raw + p("out.bias")
        return raw + self.item_bias + p("user_bias") + p("global_bias")  # (T, C)


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
