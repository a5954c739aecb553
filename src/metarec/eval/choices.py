"""Every choice the evaluation makes, made on validation tasks only.

- each adaptive model's test-time inner steps (a grid, lowest validation MSE);
- the *best baseline* of each metric family that every model is compared against (lowest
  validation MAE for accuracy metrics, highest validation catalogue nDCG for ranking ones);
- the model the nightly batch uses when ``score.model: auto``: the highest validation
  catalogue nDCG, meta-learned or not, averaged over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from metarec import algorithms
from metarec.config import EvaluateParams
from metarec.data.tasks import TaskBatch
from metarec.data.views import base_name
from metarec.eval.scoring import catalogue_metric, nanmean, score_blocks, score_grid


def is_baseline(name: str) -> bool:
    """Statistical baselines and the network without meta-learning (pretrain / finetune);
    a variant (``maml~notext``) is what its algorithm is."""
    return algorithms.get(base_name(name)).kind == "baseline"


def choose_inner_steps(models: dict[str, Any], val: list[TaskBatch], grid: tuple[int, ...],
                       params: EvaluateParams, threshold: float, explicit: bool = True
                       ) -> dict[str, dict[str, Any]]:
    """Test-time inner steps of each adaptive model, chosen on validation tasks (grid
    search; ``val``: their :func:`~metarec.eval.scoring.task_blocks`): for its ratings by the
    lowest MSE, for its ranking by the highest catalogue nDCG. Sets them on the models;
    returns the record."""
    ck = catalogue_metric(params)
    chosen = {}
    n = torch.cat([b.query_mask.sum(1) for b in val]).double()        # ratings per task
    for name, model in models.items():
        if not model.adapts:          # declared: an inner loop whose steps can be set
            continue
        mse, ndcg = {}, {}
        by_steps = score_grid(model, val, grid, params, threshold, explicit)
        for steps, vals in by_steps.items():
            if model.predicts_ratings and explicit:   # pooled MSE over ratings, from per-task RMSE
                mse[steps] = float((vals["rmse"].double() ** 2 * n).nansum() / n.sum())
            ndcg[steps] = nanmean(vals[ck])
        rate = min(mse, key=lambda s: (mse[s], s)) if mse else grid[0]
        rank = max(ndcg, key=lambda s: (ndcg[s], -s)) if ndcg else rate
        model.set_steps(rate=rate, rank=rank)
        chosen[name] = {"steps": rate, "rank_steps": rank,
                        "val_mse": {str(s): round(v, 5) for s, v in mse.items()},
                        f"val_{ck}": {str(s): round(v, 5) for s, v in ndcg.items()}}
    return chosen


def validation_scores(models: dict[str, Any], val: list[TaskBatch], params: EvaluateParams,
                      threshold: float, explicit: bool = True,
                      adapt: Callable[[Any, TaskBatch, int], Any] | None = None
                      ) -> dict[str, dict[str, float]]:
    """{model: {"mae": ..., catalogue metric: ...}} pooled over every validation task (``val``:
    their blocks); ``adapt(model, block, i)``: where a model's state of block i comes from
    (None: it adapts here)."""
    ck = catalogue_metric(params)
    out = {}
    for name, model in models.items():
        states = None if adapt is None else [adapt(model, b, i) for i, b in enumerate(val)]
        vals = score_blocks(model, val, params, threshold, explicit, states=states)
        out[name] = {"mae": nanmean(vals["mae"]), ck: nanmean(vals[ck])}
    return out


def best_baselines(val_scores: dict[str, dict[str, float]], params: EvaluateParams
                   ) -> dict[str, dict[str, Any]]:
    """The best non-meta model on validation tasks for each metric family.

    Comparing a ranking metric against the most accurate baseline would flatter the
    meta-learners, so each family has its own. Models that only rank have no MAE.
    """
    ck = catalogue_metric(params)
    base = {n: v for n, v in val_scores.items() if is_baseline(n)}
    mae = {n: v["mae"] for n, v in base.items() if not math.isnan(v["mae"])}
    ndcg = {n: v[ck] for n, v in base.items()}
    return {"accuracy": {"name": best_on_validation(mae, lower=True),   # None: implicit labels
                         "val_mae": mae},
            "ranking": {"name": best_on_validation(ndcg), f"val_{ck}": ndcg}}


def best_on_validation(scores: dict[str, float], lower: bool = False) -> str | None:
    """The name with the best finite validation score: the highest (a ranking metric) or,
    with ``lower``, the lowest (an error); ties go to the name that sorts last, or first with
    ``lower``. None when no score is finite. Every "best on validation" is this one rule."""
    finite = {n: v for n, v in scores.items() if not math.isnan(v)}
    if not finite:
        return None
    pick = min if lower else max
    return pick(finite, key=lambda n: (finite[n], n))


def majority_baselines(choices: dict[str, Any]) -> dict[str, str]:
    """Per metric family, the baseline most seeds chose (ties: alphabetical)."""
    out = {}
    for fam in ("accuracy", "ranking"):
        names = [c["best_baseline"][fam]["name"] for c in choices.values()
                 if "best_baseline" in c and c["best_baseline"][fam]["name"] is not None]
        out[fam] = max(sorted(set(names)), key=names.count) if names else None
    return out


def serving_choice(per_seed: dict[str, dict[str, dict[str, float]]], params: EvaluateParams,
                   steps: dict[str, dict[str, tuple[int, int]]] | None = None
                   ) -> dict[str, Any]:
    """What the nightly batch serves (``metrics/selection.json``), all chosen on validation:
    ``model`` (``score.model: auto``): the model trained in every seed with the highest
    validation catalogue nDCG averaged over seeds (ties by name); ``seeds``: for every model,
    the seed whose fit scored highest (``score.seed: auto``; ties: the first seed);
    ``inner_steps``: per seed and adaptive model, the test-time inner steps evaluation chose
    (``steps``: {seed: {model: (rate, rank)}}), so that scoring adapts as evaluation did."""
    ck = catalogue_metric(params)
    seeds = list(per_seed.values())
    names = sorted(set.intersection(*(set(s) for s in seeds))) if seeds else []
    mean = {n: sum(s[n][ck] for s in seeds) / len(seeds) for n in names}
    ranked = sorted(mean, key=lambda n: (-mean[n], n))
    if not ranked:
        return {}
    best = ranked[0]
    kind = "meta-learner" if not is_baseline(best) else "baseline"
    runner = ranked[1] if len(ranked) > 1 else None
    why = (f"highest validation catalogue {ck} ({mean[best]:.4f}, mean over {len(seeds)} "
           f"seeds) of {len(ranked)} models"
           + (f"; runner-up {runner} ({mean[runner]:.4f})" if runner else ""))
    order = sorted(per_seed, key=int)
    best_seed = {n: max(order, key=lambda s: (per_seed[s][n][ck], -int(s))) for n in names}
    return {"model": best, "kind": kind, "metric": ck, "why": why,
            f"val_{ck}": {n: round(mean[n], 6) for n in ranked},
            "seeds": {n: int(best_seed[n]) for n in names},
            "inner_steps": {str(seed): {n: {"rate": int(r), "rank": int(k)}
                                        for n, (r, k) in sorted(chosen.items())}
                            for seed, chosen in sorted((steps or {}).items(),
                                                       key=lambda kv: int(kv[0]))}}
