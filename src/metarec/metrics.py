"""Accuracy and ranking metrics over padded, masked task tensors.

Every function takes batched tensors (one row per task = one cold-start user) and returns one
value per task, so the same numbers feed both the headline means and the paired bootstrap over
users (:mod:`metarec.eval.bootstrap`). Padded positions are excluded through their masks.

Ties in the predictions are never broken by position or item index (which would reward or
punish a model for the order the data happened to be stored in). Instead every ranking metric
is the *expected* value over all orderings of tied items, the tie-averaging of scikit-learn's
and torchmetrics' nDCG: deterministic, and a constant predictor gets exactly the score of a
random ranking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torchmetrics.functional import mean_absolute_error, mean_squared_error


def _check(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.shape != mask.shape or pred.dim() != 2:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask "
                         f"{tuple(mask.shape)} must be the same (T, Q) shape")
    if mask.dtype != torch.bool:
        raise ValueError("mask must be a bool tensor")
    if not (torch.isfinite(pred) | ~mask).all():
        raise ValueError("predictions contain NaN or inf at unmasked positions")


# ---------------------------------------------------------------------------------------------
# rating accuracy


def mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """MAE pooled over every unmasked query rating (torchmetrics); pred/target/mask (T, Q)."""
    _check(pred, target, mask)
    return float(mean_absolute_error(pred[mask].float(), target[mask].float()))


def rmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """RMSE pooled over every unmasked query rating (torchmetrics); pred/target/mask (T, Q)."""
    _check(pred, target, mask)
    return float(mean_squared_error(pred[mask].float(), target[mask].float(), squared=False))


def per_task_mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE of each task's query (T,), NaN for a task with no query; the bootstrap's unit."""
    _check(pred, target, mask)
    m = mask.float()                                                  # (T, Q)
    err = ((pred - target).abs() * m).sum(1)                          # (T,)
    return err / m.sum(1)                                             # (T,) NaN when Q_t = 0


def per_task_rmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMSE of each task's query (T,), NaN for a task with no query."""
    _check(pred, target, mask)
    m = mask.float()                                                  # (T, Q)
    sq = (((pred - target) ** 2) * m).sum(1)                          # (T,)
    return (sq / m.sum(1)).sqrt()                                     # (T,)


# ---------------------------------------------------------------------------------------------
# tie-averaged ranking core


@dataclass
class _Ranked:
    """Items sorted by score with tie groups resolved to their expected relevance."""

    valid: torch.Tensor        # (T, L) bool, position holds a real (unmasked) item
    group: torch.Tensor        # (T, L) long, tie-group id of each sorted position
    group_mean: torch.Tensor   # (T, L) expected relevance at each sorted position
    rel_sorted: torch.Tensor   # (T, L) relevance of each sorted position (for the ideal order)


def _rank(scores: torch.Tensor, rel: torch.Tensor, mask: torch.Tensor) -> _Ranked:
    """Sort each row by score (masked positions last) and average relevance within ties."""
    t, length = scores.shape
    # valid scores are finite (_check), so -inf puts every masked position last, in position
    # order: one stable sort of the catalogue
    s = scores.float().masked_fill(~mask, -torch.inf)                 # (T, L)
    order = torch.argsort(s, dim=1, descending=True, stable=True)     # (T, L)
    s_sorted = s.gather(1, order)                                     # (T, L)
    valid = mask.gather(1, order)                                     # (T, L)
    rel_sorted = rel.float().gather(1, order) * valid                 # (T, L)
    new_group = torch.ones_like(valid)                                # (T, L)
    new_group[:, 1:] = (s_sorted[:, 1:] != s_sorted[:, :-1]) | (valid[:, 1:] != valid[:, :-1])
    group = new_group.long().cumsum(1) - 1                            # (T, L) ids 0..G-1
    g_sum = torch.zeros(t, length).scatter_add_(1, group, rel_sorted)           # (T, L)
    g_cnt = torch.zeros(t, length).scatter_add_(1, group, valid.float())        # (T, L)
    g_mean = g_sum / g_cnt.clamp_min(1.0)                                        # (T, L)
    return _Ranked(valid=valid, group=group, group_mean=g_mean.gather(1, group) * valid,
                   rel_sorted=rel_sorted)


def _discount(length: int, k: int) -> torch.Tensor:
    """1 / log2(rank + 1) for ranks 1..k, then 0: shape (length,)."""
    d = 1.0 / torch.log2(torch.arange(length, dtype=torch.float32) + 2.0)
    d[k:] = 0.0
    return d


def _ndcg(ranked: _Ranked, k: int, n_relevant: torch.Tensor | None = None) -> torch.Tensor:
    """Tie-averaged nDCG@k per row (T,), NaN where the ideal DCG is 0 (nothing relevant).

    ``n_relevant`` (T,): the gains are 0/1 and each row has that many 1s, so the ideal order
    is known without sorting them."""
    length = ranked.valid.shape[1]
    disc = _discount(length, k)                                       # (L,)
    dcg = (ranked.group_mean * disc).sum(1)                           # (T,)
    if n_relevant is None:
        ideal = ranked.rel_sorted.sort(dim=1, descending=True).values  # (T, L)
    else:
        ideal = (torch.arange(length) < n_relevant[:, None]).float()  # (T, L) the same 1s, 0s
    idcg = (ideal * disc).sum(1)                                      # (T,)
    return torch.where(idcg > 0, dcg / idcg.clamp_min(1e-12), torch.nan)


# ---------------------------------------------------------------------------------------------
# ranking within the query set


def query_ndcg(pred: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor, k: int
               ) -> torch.Tensor:
    """nDCG@k of each task's query items ranked by prediction (T,), gain 2^r - 1.

    The MeLU / literature protocol: only the task's own query items are ranked. A task whose
    query has fewer than k items is scored on all of them (ideal DCG truncated the same way).
    Ties are averaged (module docstring). NaN where every gain is 0 (no positive rating).
    """
    _check(pred, ratings, mask)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gain = torch.pow(2.0, ratings.float()) - 1.0                      # (T, Q)
    return _ndcg(_rank(pred, gain, mask), k)


# ---------------------------------------------------------------------------------------------
# ranking over the whole catalogue


@dataclass
class CatalogueMetrics:
    """Per-task catalogue ranking metrics (T,), NaN where the task has no relevant item."""

    recall: torch.Tensor
    ndcg: torch.Tensor
    hit_rate: torch.Tensor
    evaluated: torch.Tensor    # (T,) bool: the task has at least one relevant item

    def means(self) -> dict[str, float]:
        """Mean over evaluated users (skipped ones excluded, not counted as zero)."""
        e = self.evaluated
        if not e.any():
            return {"recall": float("nan"), "ndcg": float("nan"), "hit_rate": float("nan")}
        return {"recall": float(self.recall[e].mean()), "ndcg": float(self.ndcg[e].mean()),
                "hit_rate": float(self.hit_rate[e].mean())}


def catalogue_targets(support_items: torch.Tensor, support_mask: torch.Tensor,
                      query_items: torch.Tensor, query_ratings: torch.Tensor,
                      query_mask: torch.Tensor, n_items: int, threshold: float = 4.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(candidates, relevant), both (T, n_items) bool, from a task batch's padded tensors.

    Candidates are every catalogue item not in the task's support set; relevant are the query
    items rated >= ``threshold`` (a relevant item that is also in the support is dropped).
    """
    t = support_items.shape[0]
    # amax, not a plain scatter: a padded slot (item 0, mask False) must not unset item 0
    hits = torch.zeros(t, n_items).scatter_reduce_(
        1, support_items, support_mask.float(), reduce="amax")               # (T, N)
    in_support = hits > 0
    good = (query_mask & (query_ratings >= threshold)).float()               # (T, Q)
    relevant = torch.zeros(t, n_items).scatter_reduce_(
        1, query_items, good, reduce="amax") > 0                            # (T, N)
    candidates = ~in_support
    return candidates, relevant & candidates


def catalogue_metrics(scores: torch.Tensor, candidates: torch.Tensor, relevant: torch.Tensor,
                      k: int = 20) -> CatalogueMetrics:
    """Recall@k, nDCG@k (binary gain) and HitRate@k of ranking all candidates (T, N).

    Recall@k = expected relevant items in the top k / all relevant items; nDCG@k has the ideal
    DCG of min(#relevant, k) hits; HitRate@k = probability that the top k holds a relevant item.
    All three are exact expectations over random orderings of tied scores (hypergeometric for
    HitRate). Tasks without a relevant candidate are skipped (NaN) and counted.
    """
    _check(scores, relevant.float(), candidates)
    if relevant.dtype != torch.bool:
        raise ValueError("relevant must be a bool tensor")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rel = relevant & candidates                                       # (T, N)
    n_rel = rel.sum(1).float()                                        # (T,)
    evaluated = n_rel > 0                                             # (T,)
    ranked = _rank(scores, rel.float(), candidates)
    in_top = torch.zeros_like(ranked.valid)                           # (T, N)
    in_top[:, :k] = True
    in_top &= ranked.valid
    recall = (ranked.group_mean * in_top).sum(1) / n_rel.clamp_min(1.0)   # (T,)
    ndcg = _ndcg(ranked, k, n_rel)                                    # (T,)
    # P(no relevant item in top k) = prod over tie groups of C(G - R, m) / C(G, m), where a
    # group of G items with R relevant has m of its positions inside the top k
    t, n = scores.shape
    size = torch.zeros(t, n).scatter_add_(1, ranked.group, ranked.valid.float())   # (T, G)
    n_r = torch.zeros(t, n).scatter_add_(1, ranked.group, ranked.rel_sorted)      # (T, G)
    m = torch.zeros(t, n).scatter_add_(1, ranked.group, in_top.float())           # (T, G)
    # only the groups of the top k positions (ids < k) have m > 0; every other factor is
    # exactly 1 (its log exactly 0), so the logs are computed for the first k groups only
    g = min(k, n)
    size, n_r, m = size[:, :g], n_r[:, :g], m[:, :g]                  # (T, g)
    feasible = size - n_r >= m                                        # (T, g)
    log_f = torch.zeros(t, n)                                         # (T, G)
    log_f[:, :g] = torch.where(
        feasible, torch.lgamma(size - n_r + 1) - torch.lgamma((size - n_r - m).clamp_min(0) + 1)
        - torch.lgamma(size + 1) + torch.lgamma(size - m + 1), -torch.inf)
    hit = 1.0 - torch.exp(log_f.sum(1))                               # (T,)
    nan = torch.full_like(recall, torch.nan)
    return CatalogueMetrics(recall=torch.where(evaluated, recall, nan),
                            ndcg=torch.where(evaluated, ndcg, nan),
                            hit_rate=torch.where(evaluated, hit.clamp(0.0, 1.0), nan),
                            evaluated=evaluated)


class Tasks(Protocol):
    """A padded batch of tasks (:class:`metarec.data.tasks.TaskBatch`)."""

    support_items: torch.Tensor
    support_mask: torch.Tensor
    query_items: torch.Tensor
    query_ratings: torch.Tensor
    query_mask: torch.Tensor


def reach_top(scores: torch.Tensor, candidates: torch.Tensor, relevant: torch.Tensor, k: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The columns of (B, N) scores that can change nDCG@k, in their order: candidates
    scoring at least the k-th best candidate (ties included: a tie group's size enters its
    averaged gain) and the relevant ones (their count is the ideal DCG's); the other columns
    only shift positions past k. Sorting k-odd columns, not N, is what ranking a catalogue of
    10^4-10^5 items for every grid value costs. Rows are padded with non-candidates; scores
    with NaN or inf are returned whole (the metric rejects them)."""
    b, n = scores.shape
    s = scores.masked_fill(~candidates, -torch.inf)                        # (B, N)
    if n <= k or not torch.isfinite(scores).all():
        return scores, candidates, relevant
    kth = s.topk(k, dim=1).values[:, -1:]                                  # (B, 1)
    keep = candidates & ((s >= kth) | relevant)                            # (B, N)
    count = keep.sum(1)                                                    # (B,)
    width = int(count.max())
    if 2 * width >= n:
        return scores, candidates, relevant
    row, col = torch.nonzero(keep, as_tuple=True)                          # in column order
    at = (row, torch.arange(row.numel()) - (count.cumsum(0) - count)[row])  # place in its row
    out = (torch.zeros(b, width), torch.zeros(b, width, dtype=torch.bool),
           torch.zeros(b, width, dtype=torch.bool))
    out[0][at], out[1][at], out[2][at] = scores[row, col], True, relevant[row, col]
    return out


def batch_catalogue_metrics(scores: torch.Tensor, batch: Tasks, threshold: float, k: int,
                            eligible: torch.Tensor | None = None,
                            seen: torch.Tensor | None = None) -> CatalogueMetrics:
    """The catalogue metrics of ranking scores (T, N) for a batch of tasks: every item not in
    a task's support is a candidate, its query items rated >= ``threshold`` are relevant;
    ``eligible`` ((N,) bool) narrows both (an item-cold scenario's new items); ``seen``
    ((T, N) bool) are items each user interacted with before the task's query period besides
    its support, never candidates (what the nightly batch never recommends either). The one
    rule behind every validation choice and every test metric; the candidates that cannot
    reach the top k are left out of the sort (:func:`reach_top`: the same values)."""
    cands, rel = catalogue_targets(batch.support_items, batch.support_mask, batch.query_items,
                                   batch.query_ratings, batch.query_mask, scores.shape[1],
                                   threshold)
    if eligible is not None:
        cands, rel = cands & eligible, rel & eligible
    if seen is not None:
        cands, rel = cands & ~seen, rel & ~seen
    return catalogue_metrics(*reach_top(scores, cands, rel, k), k)


def finite_or(x: float, default: float = -1.0) -> float:
    """``x``, or ``default`` when it is NaN: a choice by max treats a skipped score as last."""
    return x if not math.isnan(x) else default
