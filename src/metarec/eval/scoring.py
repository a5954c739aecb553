"""One model on one batch of tasks: the per-task values (T,) of every metric params asks for.

Metric names come from ``params.yaml: evaluate`` (``ndcg@<k>`` for each query cut-off,
``recall@<c>``, ``ndcg@<c>``, ``hit@<c>`` for the catalogue cut-off), so changing a cut-off
changes every name downstream: JSON, report, README.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from metarec.config import EvaluateParams
from metarec.data.tasks import EpisodeData, TaskBatch
from metarec.metrics import batch_catalogue_metrics, per_task_mae, per_task_rmse, query_ndcg
from metarec.models.base import Predictor

ACCURACY = ("mae", "rmse")
# (task, item) scores one block of tasks ranks at once (~64 MiB of float32, a few times that
# in the metric's temporaries): bounds the evaluation's memory whatever the number of tasks
EVAL_CELLS = 1 << 24


def catalogue_metric(params: EvaluateParams) -> str:
    """The metric that matters most for a cold user: catalogue nDCG at the cut-off."""
    return f"ndcg@{params.catalogue_k}"


def metric_names(params: EvaluateParams) -> list[str]:
    """Every metric of a result row, in report order."""
    c = params.catalogue_k
    return [*ACCURACY, *(f"ndcg@{k}" for k in params.query_ndcg_ks), f"recall@{c}",
            f"ndcg@{c}", f"hit@{c}"]


def compared_metrics(params: EvaluateParams) -> list[str]:
    """Metrics compared against the best baseline with a paired bootstrap."""
    c = params.catalogue_k
    return [*ACCURACY, *(f"ndcg@{k}" for k in params.query_ndcg_ks), f"ndcg@{c}",
            f"recall@{c}"]


def family(metric: str) -> str:
    return "accuracy" if metric in ACCURACY else "ranking"


def score_batch(model: Predictor, batch: TaskBatch, params: EvaluateParams,
                threshold: float, explicit: bool = True, eligible: torch.Tensor | None = None,
                state: Any = None, seen: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
    """Per-task metric values (T,) for one model on one batch of tasks.

    The model adapts once per task. Its ratings of the query items give MAE and RMSE (NaN for
    a model that only ranks, and for implicit labels); its ranking scores give every ranking
    metric: of the query items
    among themselves (the literature's protocol) and of the whole catalogue minus the support,
    where query items rated at or above ``threshold`` are the relevant ones. ``eligible``
    ((N,) bool, None = every item) narrows the catalogue ranked, e.g. to the new items of an
    item-cold scenario (:func:`eligible_items`); ``seen`` ((T, N) bool) removes what each user
    had before the query period besides its support (:func:`seen_items`). ``state``: the
    model's adaptation to this batch when the caller already has it
    (:meth:`AdaptivePredictor.adapt_grid`).
    """
    if state is None:
        state = model.adapt(batch)
    full = model.rank(state)                                                  # (T, N)
    t = len(batch)
    out: dict[str, torch.Tensor] = {}
    if model.predicts_ratings and explicit:   # implicit labels: no rating to predict
        pred = model.rate(state, batch.query_items)                           # (T, Q)
        out["mae"] = per_task_mae(pred, batch.query_ratings, batch.query_mask)
        out["rmse"] = per_task_rmse(pred, batch.query_ratings, batch.query_mask)
    else:
        out["mae"] = out["rmse"] = torch.full((t,), math.nan)
    query_scores = full.gather(1, batch.query_items)                          # (T, Q)
    for k in params.query_ndcg_ks:
        out[f"ndcg@{k}"] = query_ndcg(query_scores, batch.query_ratings, batch.query_mask, k)
    ck = params.catalogue_k
    cat = batch_catalogue_metrics(full, batch, threshold, ck, eligible, seen)
    out.update({f"recall@{ck}": cat.recall, f"ndcg@{ck}": cat.ndcg, f"hit@{ck}": cat.hit_rate})
    return out


def task_blocks(batch: TaskBatch, n_items: int, cells: int = EVAL_CELLS) -> list[TaskBatch]:
    """``batch`` cut into consecutive blocks of at most ``cells // n_items`` tasks, each adapted
    and ranked on its own (block i with chunk i: Meta-Dropout's noise), so that memory follows
    the block and the catalogue, not the number of tasks: 13,000 validation tasks x 10^4 items
    ranked at once took 19 GiB. One block when the batch fits (every batch of ML-100K). The
    cut depends on the catalogue size only, so the values are the same for any workers."""
    step = max(1, cells // max(1, n_items))
    if len(batch) <= step:
        return [batch]
    return [batch.slice(a, min(a + step, len(batch))) for a in range(0, len(batch), step)]


def cat_values(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-task metric values of consecutive blocks, in task order."""
    return {m: torch.cat([p[m] for p in parts]) for m in parts[0]}


def score_blocks(model: Predictor, blocks: list[TaskBatch], params: EvaluateParams,
                 threshold: float, explicit: bool = True, eligible: torch.Tensor | None = None,
                 states: list[Any] | None = None,
                 seen: list[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
    """:func:`score_batch` over the :func:`task_blocks` of a batch, per-task values (T,) in
    task order; ``states[i]`` and ``seen[i]``: block i's (no states: block i adapts here with
    chunk i)."""
    return cat_values([score_batch(model, b, params, threshold, explicit, eligible,
                                   state=model.adapt(b, i) if states is None else states[i],
                                   seen=None if seen is None else seen[i])
                       for i, b in enumerate(blocks)])


def score_grid(model: Predictor, blocks: list[TaskBatch], grid: Sequence[int],
               params: EvaluateParams, threshold: float, explicit: bool = True,
               eligible: torch.Tensor | None = None,
               seen: list[torch.Tensor | None] | None = None
               ) -> dict[int, dict[str, torch.Tensor]]:
    """{steps: per-task values (T,)} of an adaptive model with each number of test-time inner
    steps in ``grid``: block i adapted once (chunk i) for the longest, then scored at each."""
    parts: dict[int, list[dict[str, torch.Tensor]]] = {s: [] for s in grid}
    for i, block in enumerate(blocks):
        states = model.adapt_grid(block, grid, i)        # one inner loop for the whole grid
        for steps in grid:
            parts[steps].append(score_batch(model, block, params, threshold, explicit,
                                            eligible, state=states[steps],
                                            seen=None if seen is None else seen[i]))
    return {steps: cat_values(parts[steps]) for steps in grid}


ITEM_COLD = ("item_cold", "user_item_cold")


def eligible_items(scenario: str, params: EvaluateParams, id_codes: torch.Tensor
                   ) -> torch.Tensor | None:
    """The items an item-cold scenario ranks: those the training history never saw (id code
    0, what a new item looks like to every model) when ``item_cold_catalogue`` is ``new``;
    None (the whole catalogue) otherwise.

    Why: an item-cold query holds only interactions with new items (the protocol filters the
    others out), so against the whole catalogue a model that rightly ranks known favourites
    first scores 0 whatever it knows of new items. Among the new items the metric says how
    well a model places what it has never seen (DropoutNet's item cold-start protocol).
    """
    if scenario not in ITEM_COLD or params.item_cold_catalogue == "all":
        return None
    return id_codes.long() == 0


def nanmean(x: torch.Tensor) -> float:
    """Mean over finite values (tasks a metric skipped are NaN); NaN when there are none."""
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else math.nan


def seen_items(data: EpisodeData, batch: TaskBatch, params: EvaluateParams
               ) -> torch.Tensor | None:
    """(T, N) bool: the items each task's user interacted with before its query period
    besides its support (``evaluate.exclude_history``): a warm user's training-period history,
    which a MovieLens user never rates again; None when off or when no user has any (the
    cold-start scenarios: their users have no history before the support)."""
    if not params.exclude_history or data.history is None or not len(data.history):
        return None
    hist = data.history[["user_idx", "item_idx"]]
    tasks = pd.DataFrame({"task": np.arange(len(batch)),
                          "user_idx": batch.user_idx.numpy()})
    pairs = tasks.merge(hist, on="user_idx", how="inner")
    if pairs.empty:
        return None
    seen = torch.zeros(len(batch), len(data.items), dtype=torch.bool)
    seen[torch.as_tensor(pairs["task"].to_numpy(np.int64, copy=True)),
         torch.as_tensor(pairs["item_idx"].to_numpy(np.int64, copy=True))] = True
    return seen
