"""``ease`` (Steck, WWW 2019): a closed-form item-item model on the binary interaction matrix.

B = I - P diagMat(1 / diag(P)), P = (X^T X + lambda I)^-1, diag(B) = 0; a new user's scores are
their support row times B, so it needs no user fit. lambda and the history window are chosen on
validation (catalogue nDCG).

The grid is cheap where it can be: one Gram matrix per window, one Cholesky inverse per lambda
(half the work of a general inverse), and a validation task's scores x B = x - (x P) / diag(P)
from the rows of P of its support items (a sparse product, not tasks x items^2); B itself is
built for the chosen (window, lambda) only. An eigendecomposition of G would give every
lambda's P from one factorisation, but here it costs ~7 Cholesky inverses (5,000 items, one
thread), and each lambda's scores then need tasks x items^2 products with the eigenvectors,
more than one Cholesky inverse once there are half as many validation tasks as items.

Past ``large_items`` items in a window's G (10^4 items: ~42 s per float64 inverse, one thread)
its penalties are walked, not tried whole: a hill-climb over the sorted grid from the middle
value toward the better neighbour while validation nDCG improves, each inverse in float32
(~2.3x faster there; on a synthetic log B moved < 1e-6). The tuning record lists only the
penalties scored and says why.

Only items with interactions in the window enter G (an item without any has G's row lambda e_i,
so zero row and column of B: score 0). ``top_items`` > 0 is the bounded variant for catalogues
too large for a dense items x items matrix: EASE over that many most-interacted items (the
head), every other item ranked after the head in order of interactions. Past ``max_items``
head items the fit is refused, naming the memory and the knobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from metarec.algorithms import register
from metarec.config import bounded
from metarec.data.tasks import EpisodeData, TaskBatch
from metarec.errors import ParamsError
from metarec.metrics import finite_or
from metarec.models.base import Capabilities, FitContext
from metarec.models.linalg import ridge_inverse
from metarec.models.statistical import (
    RankingBaseline,
    interaction_matrix,
    sparse_product,
    tune_product,
)

CHUNK_CELLS = 1 << 24   # cells of a block of tasks' x P, x B and scores (bounds memory)


@dataclass(frozen=True)
class EaseParams:
    lam: tuple[float, ...] = bounded((10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
                                      10000.0), 1e-9,
                                     nonempty=True)     # ridge penalty grid
    window: tuple[int, ...] = bounded((0, 20), 0, nonempty=True)   # first N per user (0 = all)
    top_items: int = bounded(0, 0)      # 0: every item with interactions; N: the N most
                                        # interacted, the others after them by popularity
    max_items: int = bounded(20_000, 1)                 # refuse a dense G past this many items
    large_items: int = bounded(5_000, 1)    # past this many items in G: float32, lam walked


def head_items(x: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m,) ascending codes of the items with interactions in the sparse (users, codes) ``x``,
    and the popularity the others are ranked by. With ``top`` > 0 only the ``top`` most
    interacted (equal counts: the lower code first), and every code's count / (1 + the largest)
    in [0, 1) (n,); without, an empty popularity (the others score 0)."""
    counts = torch.sparse.sum(x, 0).to_dense()                             # (n,)
    active = torch.nonzero(counts > 0).squeeze(1)                          # (m,) ascending
    if top == 0:
        return active, torch.zeros(0)
    if top < active.numel():
        order = torch.sort(counts[active], descending=True, stable=True).indices[:top]
        active = torch.sort(active[order]).values
    return active, counts / (1.0 + counts.max())


def below_head(head: torch.Tensor, popularity: torch.Tensor) -> torch.Tensor:
    """(B, n_out) scores of the items outside the head (``popularity`` (n_out,) in [0, 1)):
    after every head item of the row (B, m), in order of popularity."""
    return head.min(1, keepdim=True).values - 1.0 + popularity.to(head.dtype)


def gram(data: EpisodeData, window: int, p: EaseParams
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m,) item codes, their float64 Gram matrix (m, m) in ``window`` and the popularity of
    every code (:func:`head_items`); refused past ``max_items`` items, saying what to set."""
    x = interaction_matrix(data, window)
    items, popularity = head_items(x, p.top_items)
    m = items.numel()
    if m > p.max_items:
        gib = 3 * m * m * 8 / 2**30   # G, G + lambda I and its Cholesky factor or inverse
        raise ParamsError(
            f"train.ease: {m:,} items with interactions (window {window}) need dense "
            f"{m:,} x {m:,} float64 matrices (~{gib:,.1f} GiB at the peak), past "
            f"train.ease.max_items ({p.max_items:,}); set train.ease.top_items to at most "
            f"{p.max_items:,} (EASE over that many most-interacted items, every other item "
            f"ranked after them by popularity), raise max_items, or remove ease from "
            f"train.baselines")
    xh = torch.index_select(x, 1, items)                                  # (users, m) sparse
    return items, sparse_product(xh.t(), xh).double(), popularity          # (m, m) G


def n_items(data: EpisodeData, window: int, p: EaseParams) -> int:
    """How many items :func:`gram` puts in G for ``window`` (without building it)."""
    return head_items(interaction_matrix(data, window), p.top_items)[0].numel()


def hill_climb(grid: Sequence[float], score: Callable[[int], float]) -> Iterator[int]:
    """Indices of ``grid`` to score, walking its values in ascending order: the middle one,
    then each step both neighbours of the current one and a move to the better, until the
    current one is the best of the three (a local maximum). ``score(i)`` is read after ``i``
    is yielded (the caller scores it in between); equal scores go to the earlier in grid
    order and NaN is last (:func:`tune_product`'s rule), so every move is strictly up and
    the walk ends. A curve that rises strictly to its best and does not rise after it is
    walked to that best in at most 3 + (its distance from the middle) scores."""
    order = sorted(range(len(grid)), key=lambda i: (grid[i], i))     # positions -> indices
    seen: dict[int, tuple[float, int]] = {}                          # position -> rank key
    at = (len(order) - 1) // 2
    while True:
        near = [j for j in (at, at - 1, at + 1) if 0 <= j < len(order)]
        for j in near:
            if j not in seen:
                yield order[j]
                seen[j] = (finite_or(score(order[j])), -order[j])
        best = max(near, key=seen.__getitem__)
        if best == at:
            return
        at = best


def positions(items: torch.Tensor, n_codes: int) -> torch.Tensor:
    """(n_codes,) each code's row in B (its position in ``items``), -1 for codes B omits."""
    pos = torch.full((n_codes,), -1, dtype=torch.long)
    pos[items] = torch.arange(items.numel())
    return pos


def weights(p: torch.Tensor) -> torch.Tensor:
    """B = -P / diag(P) column by column, zero diagonal, in place of ``p`` (m, m)."""
    p.div_(torch.diagonal(p).clone()).neg_()
    return p.fill_diagonal_(0.0)


def task_scores(p: torch.Tensor, items: torch.Tensor, popularity: torch.Tensor,
                batch: TaskBatch, codes: torch.Tensor, n_codes: int
                ) -> Iterator[tuple[int, torch.Tensor]]:
    """(first task, (B, N) float32 scores x B) of the tasks of ``batch`` block by block
    (``codes``: the catalogue rows' codes), from P (m, m) over ``items``: x B = x - (x P) /
    diag(P), where x P sums the rows of P of each task's support items (a repeated one once);
    the other items by :func:`below_head` when there is a ``popularity``, else 0."""
    m, t, pos = items.numel(), len(batch), positions(items, n_codes)
    sup = pos[codes[batch.support_items]]                                  # (T, S) or -1
    keep = batch.support_mask & (sup >= 0)
    pair = torch.unique(torch.arange(t)[:, None].mul(m).add(sup)[keep])    # sorted by task
    task, col = pair // m, pair % m                                        # (nnz,), (nnz,)
    cols = torch.nonzero(pos[codes] >= 0).squeeze(1)                       # rows in ``items``
    head = pos[codes[cols]]                                                # their positions
    out = torch.nonzero(pos[codes] < 0).squeeze(1)                         # the other rows
    diag = torch.diagonal(p)                                               # (m,)
    step = max(1, CHUNK_CELLS // max(m, codes.numel()))
    bounds = torch.searchsorted(task, torch.arange(0, t + step, step)).tolist()
    for c, a in enumerate(range(0, t, step)):
        lo, hi, size = bounds[c], bounds[c + 1], min(step, t - a)
        at = torch.stack([task[lo:hi] - a, col[lo:hi]])                    # (2, nnz)
        ones = torch.ones(hi - lo, dtype=p.dtype)
        xa = torch.sparse_coo_tensor(at, ones, (size, m), is_coalesced=True,
                                     check_invariants=True)                # (B, m) x
        xb = torch.sparse.mm(xa, p).div_(-diag)                            # (B, m) -xP/diag
        xb.index_put_(tuple(at), ones, accumulate=True)                    # (B, m) x B
        block = torch.zeros(size, codes.numel())                           # (B, N)
        block[:, cols] = xb[:, head].float()
        if popularity.numel():
            block[:, out] = below_head(xb, popularity[codes[out]]).float()
        yield a, block


@register
class Ease(RankingBaseline):
    name = "ease"
    # no random draw: one fit serves all seeds; a dense items x items inverse per penalty
    capabilities = Capabilities(seeded=False, dense_items=True)
    Params = EaseParams

    def __init__(self, items: torch.Tensor, weights: torch.Tensor, n_codes: int,
                 popularity: torch.Tensor, lam: float = 0.0, window: int = 0) -> None:
        super().__init__()
        self.items = items.long()                 # (m,) the codes B covers
        self.weights = weights.float()            # (m, m) B over them, zero diagonal
        self.n_codes = int(n_codes)               # item codes of the vocabulary
        self.popularity = popularity.float()      # (n_codes,) or (0,): see below_head
        self.lam, self.window = float(lam), int(window)

    @classmethod
    def fit(cls, ctx: FitContext) -> Ease:
        p, data = cls.params_of(ctx.train), ctx.data
        n, codes = data.items.n_ids, data.items.id_code.long()
        # windows whose G is past large_items: float32 inverses, the penalties walked (no
        # window has more items than the vocabulary, so a small catalogue skips the count)
        large = {w: m for w in (p.window if n > p.large_items else ())
                 if (m := n_items(data, w, p)) > p.large_items}

        def dense(window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            items, g, pop = gram(data, window, p)
            return items, g.float() if window in large else g, pop

        def penalties(window: int, score: Callable[[tuple[int, float]], float] | None
                      ) -> Iterator[float]:
            """The whole grid, or in a large window the penalties the walk scores."""
            if window not in large or score is None:
                yield from p.lam
                return
            for i in hill_climb(p.lam, lambda i: score((window, p.lam[i]))):
                yield p.lam[i]

        def scores(batch: TaskBatch, score: Callable[[tuple[int, float]], float] | None = None
                   ) -> Iterator[tuple[tuple[int, float], int, torch.Tensor]]:
            for w in p.window:                   # one Gram matrix in memory at a time
                items, g, pop = dense(w)
                for lam in penalties(w, score):
                    for a, block in task_scores(ridge_inverse(g, lam), items, pop, batch,
                                                codes, n):
                        yield (w, lam), a, block

        def make(window: int, lam: float) -> Ease:      # the chosen one: G once more
            items, g, pop = dense(window)
            return cls(items, weights(ridge_inverse(g, lam)), n, pop, lam, window).bind(data)

        search = None
        if large:
            sizes = ", ".join(f"window {w}: {m:,} items" for w, m in large.items())
            search = (f"walked: lam hill-climbed from the middle, in float32, where G has "
                      f"more than large_items {p.large_items:,} ({sizes})")
        best, best.tuning = tune_product(make, {"window": p.window, "lam": p.lam}, data,
                                         ctx.train.val_ndcg_k, scores, search)
        return best

    def rank(self, state: TaskBatch) -> torch.Tensor:
        """x B for each task's binary support row x: a sparse product (the rows of B of its
        support items, each once), not a dense (T, m) x (m, m) one: T x S x m additions
        instead of T x m x m (10^4 items, 20 support items: 500x fewer)."""
        m, t = self.items.numel(), len(state)
        sup = positions(self.items, self.n_codes)[self.codes[state.support_items]]  # (T, S)
        keep = state.support_mask & (sup >= 0)
        pair = torch.unique(torch.arange(t)[:, None].mul(m).add(sup)[keep])   # sorted, once
        x = torch.sparse_coo_tensor(torch.stack([pair // m, pair % m]),
                                    torch.ones(pair.numel()), (t, m), is_coalesced=True,
                                    check_invariants=True)
        head = torch.sparse.mm(x, self.weights)                             # (T, m)
        out = torch.zeros(len(state), self.n_codes)                         # (T, n_codes)
        out[:, self.items] = head
        if self.popularity.numel():
            other = positions(self.items, self.n_codes) < 0                 # (n_codes,)
            out[:, other] = below_head(head, self.popularity[other])
        return out[:, self.codes]                                           # (T, N)

    def explain(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        """The support item j with the largest weight B[j, i] toward each recommended i."""
        pos = positions(self.items, self.n_codes)
        sup, rec = pos[self.codes[batch.support_items]], pos[self.codes[items]]  # (T, S), (T, k)
        contrib = self.weights[sup[:, :, None].clamp_min(0), rec[:, None, :].clamp_min(0)]
        contrib = contrib * ((sup[:, :, None] >= 0) & (rec[:, None, :] >= 0))   # (T, S, k)
        return self._argmax_support(contrib, batch.support_mask)

    def extra_state(self) -> dict[str, Any]:
        return {"items": self.items, "weights": self.weights, "n_codes": self.n_codes,
                "popularity": self.popularity, "lam": self.lam, "window": self.window}
