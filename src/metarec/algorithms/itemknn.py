"""``itemknn`` fold-in: a user's score for item i is the sum over their support items j of
cosine(i, j) among j's ``neighbours`` most similar items (on the meta-train users' binary
history). The neighbour count and the history window are chosen on validation (catalogue
nDCG). Only each item's top neighbours are kept (items x neighbours), never items x items.

The neighbour grid shares one similarity pass per window: the largest count's neighbours are
kept, every smaller count is their first columns, and the validation scores of the counts in
increasing order add only the columns between one count and the next. Scores are summed in
float64 (exact for these float32 similarities), so any order of summation gives the same
float32 scores as :meth:`ItemKNN.rank`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from metarec.algorithms import register
from metarec.config import bounded
from metarec.data.tasks import TaskBatch
from metarec.models.base import Capabilities, FitContext
from metarec.models.statistical import (
    RankingBaseline,
    interaction_matrix,
    sparse_product,
    tune_product,
)

CHUNK_CELLS = 1 << 24   # cells of a block of tasks' scores or gathered neighbours (memory)


@dataclass(frozen=True)
class ItemKNNParams:
    neighbours: tuple[int, ...] = bounded((10, 20, 50, 100, 200, 400, 800, 1600), 1,
                                          nonempty=True)
    window: tuple[int, ...] = bounded((0, 20), 0, nonempty=True)   # first N per user (0 = all)
    block: int = bounded(4096, 1)              # items whose similarities are computed at once


def top_neighbours(x: torch.Tensor, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) neighbour codes and cosine similarities of every item code of the sparse
    (users, items) matrix ``x``, computed in blocks of items (bounded memory). An item is not
    its own neighbour; items without interactions have similarity 0 to everything; equal
    similarities rank the lower code first."""
    n = x.shape[1]
    k = min(k, max(n - 1, 1))
    xt = x.t().coalesce()                                                # (n, users)
    norms = torch.sparse.sum(x, 0).to_dense().sqrt()                     # (n,)
    idx, val = [], []
    for a in range(0, n, block):
        b = min(a + block, n)
        rows = torch.index_select(xt, 0, torch.arange(a, b))             # (B, users)
        co = sparse_product(rows, x)                                      # (B, n)
        sim = co / (norms[a:b, None] * norms[None, :]).clamp_min(1e-12)
        sim[torch.arange(b - a), torch.arange(a, b)] = -1.0               # not itself
        top = torch.sort(sim, dim=1, descending=True, stable=True)   # ties: lower code first
        idx.append(top.indices[:, :k])
        val.append(top.values[:, :k].clamp_min(0.0))
    return torch.cat(idx), torch.cat(val)


def add_neighbours(out: torch.Tensor, support_items: torch.Tensor, support_mask: torch.Tensor,
                   codes: torch.Tensor, neighbours: torch.Tensor, similarity: torch.Tensor,
                   lo: int, hi: int, cells: int = CHUNK_CELLS) -> torch.Tensor:
    """Add to ``out`` (T, n_codes) float64 each task's similarities to its support items'
    neighbours in columns ``lo:hi`` of ``neighbours`` / ``similarity`` (n_codes, K), in
    blocks of tasks of about ``cells`` (task, support, neighbour) entries."""
    t, s = support_items.shape
    step = max(1, cells // max(1, s * (hi - lo)))
    for a in range(0, t, step):
        sup = codes[support_items[a:a + step]]                              # (B, S)
        nb = neighbours[sup, lo:hi]                                         # (B, S, k)
        sim = similarity[sup, lo:hi].double() * support_mask[a:a + step, :, None]
        out[a:a + step].scatter_add_(1, nb.reshape(len(sup), -1), sim.reshape(len(sup), -1))
    return out


@register
class ItemKNN(RankingBaseline):
    name = "itemknn"
    capabilities = Capabilities(seeded=False)   # no random draw: one fit serves all seeds
    Params = ItemKNNParams

    def __init__(self, neighbours: torch.Tensor, similarity: torch.Tensor, k: int = 0,
                 window: int = 0) -> None:
        super().__init__()
        self.neighbours = neighbours.long()       # (n_ids, k) neighbour codes
        self.similarity = similarity.float()      # (n_ids, k) their cosine similarity
        self.k, self.window = int(k), int(window)

    @classmethod
    def fit(cls, ctx: FitContext) -> ItemKNN:
        p, data = cls.params_of(ctx.train), ctx.data
        tops = {w: top_neighbours(interaction_matrix(data, w), max(p.neighbours), p.block)
                for w in p.window}
        codes = data.items.id_code.long()

        def scores(batch: TaskBatch) -> Iterator[tuple[tuple[int, int], int, torch.Tensor]]:
            for w, (idx, val) in tops.items():
                step = max(1, CHUNK_CELLS // idx.shape[0])
                for a in range(0, len(batch), step):
                    items = batch.support_items[a:a + step]                 # (B, S)
                    out = torch.zeros(len(items), idx.shape[0], dtype=torch.float64)
                    done = 0
                    for k in sorted(set(p.neighbours)):   # each adds the columns past the last
                        add_neighbours(out, items, batch.support_mask[a:a + step], codes,
                                       idx, val, done, k)
                        done = k
                        yield (w, k), a, out[:, codes].float()

        def make(window: int, k: int) -> ItemKNN:
            idx, val = tops[window]
            return cls(idx[:, :k], val[:, :k], k, window).bind(data)

        best, best.tuning = tune_product(make, {"window": p.window, "neighbours": p.neighbours},
                                         data, ctx.train.val_ndcg_k, scores)
        return best

    def rank(self, state: TaskBatch) -> torch.Tensor:
        out = torch.zeros(len(state), self.neighbours.shape[0], dtype=torch.float64)
        add_neighbours(out, state.support_items, state.support_mask, self.codes,
                       self.neighbours, self.similarity, 0, self.neighbours.shape[1])
        return out[:, self.codes].float()                                 # (T, N)

    def explain(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        """The support item with the largest similarity to each recommended item."""
        sup, rec = self.codes[batch.support_items], self.codes[items]        # (T, S), (T, k)
        nb, sim = self.neighbours[sup], self.similarity[sup]              # (T, S, K)
        contrib = torch.stack([((nb == rec[:, None, j, None]) * sim).sum(-1)
                               for j in range(rec.shape[1])], -1)         # (T, S, k)
        return self._argmax_support(contrib, batch.support_mask)

    def extra_state(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "similarity": self.similarity, "k": self.k,
                "window": self.window}
