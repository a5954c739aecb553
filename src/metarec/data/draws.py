"""Meta-train tasks drawn afresh from the training history (every epoch, for instance).

A task is one meta-train user: a support of K interactions (K drawn from the episodes'
``support_sizes``) and a query of the next up to Q. ``temporal`` draws keep time order (first
K, next Q: the shape of a cold user's test task); ``random`` draws shuffle each user's history
first. ``history`` is no episode at all: each user's whole history split at random into a
context (a fraction drawn uniformly in [0.05, 0.95]) and every other interaction as targets,
as a denoising autoencoder (Mult-DAE) is trained: how the network is trained *without*
episodes, the reference a meta-learner is measured against. Vectorised over rows; the same
generator state gives the same tasks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from metarec.data.tasks import TaskBatch, moments, pad_rows

DRAWS = ("temporal", "random")          # episodes shaped like the test tasks
HISTORY = "history"                      # no episodes: whole histories, DAE-style


def draw_tasks(history: pd.DataFrame, support_sizes: tuple[int, ...], query_size: int,
               mode: str, rng: np.random.Generator) -> TaskBatch:
    """One task per user of ``history`` (user_idx, item_idx, rating, timestamp) that has more
    interactions than its drawn K; users are in ascending ``user_idx`` order."""
    if mode not in (*DRAWS, HISTORY):
        raise ValueError(f"draw must be one of {(*DRAWS, HISTORY)}, got {mode!r}")
    users = history["user_idx"].to_numpy(np.int64)
    second = (history["timestamp"].to_numpy(np.int64) if mode == "temporal"
              else rng.permutation(len(history)))
    order = np.lexsort((second, users))                                  # by user, then key
    users = users[order]
    items = history["item_idx"].to_numpy(np.int64)[order]
    ratings = history["rating"].to_numpy(np.float32)[order]
    stamps = history["timestamp"].to_numpy(np.int64)[order]
    uniq, first, counts = np.unique(users, return_index=True, return_counts=True)
    which = np.repeat(np.arange(len(uniq)), counts)                      # user of each row
    pos = np.arange(len(users)) - first[which]
    if mode == HISTORY:           # a random share of the history as context, the rest
        share = rng.uniform(0.05, 0.95, size=len(uniq))
        k = np.maximum(1, np.floor(share * counts)).astype(np.int64)
        limit = counts
    else:
        k = np.asarray(support_sizes, dtype=np.int64)[rng.integers(len(support_sizes),
                                                                   size=len(uniq))]
        limit = k + query_size
    ok = counts > k                                                      # >= 1 query row
    task = np.cumsum(ok) - 1                                             # user -> task
    sup = ok[which] & (pos < k[which])
    qry = ok[which] & (pos >= k[which]) & (pos < limit[which])
    n = int(ok.sum())
    s_items, s_rat, s_mask = pad_rows(task[which[sup]], n, items[sup], ratings[sup])
    q_items, q_rat, q_mask = pad_rows(task[which[qry]], n, items[qry], ratings[qry])
    used = sup | qry
    now = moments(task[which[used]], stamps[used], qry[used], n)
    return TaskBatch(task_id=torch.arange(n), user_idx=torch.from_numpy(uniq[ok]),
                     support_items=s_items, support_ratings=s_rat, support_mask=s_mask,
                     query_items=q_items, query_ratings=q_rat, query_mask=q_mask, now=now)
