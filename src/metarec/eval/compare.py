"""Paired bootstrap of every model against the best baseline of each metric's family."""

from __future__ import annotations

from typing import Any

import torch

from metarec.config import EvaluateParams
from metarec.data.views import SEP
from metarec.eval.bootstrap import paired_bootstrap
from metarec.eval.scoring import compared_metrics, family

PerUser = dict[tuple[str, str, Any], list[dict[str, torch.Tensor]]]


def k_order(k: Any) -> tuple[int, Any]:
    """Sort key of a K value: numbers first, then ``"all"``."""
    return (1, str(k)) if isinstance(k, str) else (0, k)


def compare(per_user: PerUser, baselines: dict[str, str], params: EvaluateParams
            ) -> list[dict[str, Any]]:
    """One row per (model, scenario, K, metric): seed-averaged per-user values of the model
    minus the baseline's, mean and percentile CI over bootstrap resamples of users."""
    out = []
    keys = sorted(per_user, key=lambda key: (key[0], key[1], k_order(key[2])))
    for name, scenario, k in keys:
        seeds = per_user[(name, scenario, k)]
        for metric in compared_metrics(params):
            baseline = baselines[family(metric)]
            if baseline is None or name == baseline or (baseline, scenario, k) not in per_user:
                continue
            base_seeds = per_user[(baseline, scenario, k)]
            model_v = torch.stack([s[metric] for s in seeds]).mean(0)          # (U,)
            base_v = torch.stack([s[metric] for s in base_seeds]).mean(0)     # (U,)
            ok = torch.isfinite(model_v) & torch.isfinite(base_v)
            if ok.sum() < 2:
                continue
            res = paired_bootstrap(model_v[ok], base_v[ok], params.bootstrap_samples,
                                   seed=0, confidence=params.bootstrap_confidence)
            out.append({"model": name, "baseline": baseline, "scenario": scenario, "k": k,
                        "metric": metric, "diff": round(res.diff, 6),
                        "ci_low": round(res.low, 6), "ci_high": round(res.high, 6),
                        "users": res.n_users})
    return out


def _with_without(without: list[dict[str, torch.Tensor]], with_: list[dict[str, torch.Tensor]],
                  metric: str, params: EvaluateParams) -> dict[str, Any] | None:
    """The means, paired difference (with - without) and its CI of two runs on the same users
    (per seed, per-user values), seed-averaged; None when fewer than two users have both."""
    a = torch.stack([s[metric] for s in without]).mean(0)
    b = torch.stack([s[metric] for s in with_]).mean(0)
    ok = torch.isfinite(a) & torch.isfinite(b)
    if ok.sum() < 2:
        return None
    res = paired_bootstrap(b[ok], a[ok], params.bootstrap_samples, seed=0,
                           confidence=params.bootstrap_confidence)
    return {"metric": metric, "value_without": round(float(a[ok].mean()), 6),
            "value_with": round(float(b[ok].mean()), 6), "diff": round(res.diff, 6),
            "ci_low": round(res.low, 6), "ci_high": round(res.high, 6), "users": res.n_users}


def compare_variants(per_user: PerUser, pairs: list[tuple[str, str]], metric: str,
                     params: EvaluateParams) -> list[dict[str, Any]]:
    """Each model on scenario ``b`` minus itself on scenario ``a`` for every (a, b) of
    ``pairs`` (the same users and tasks, e.g. with and without the cross-platform history):
    seed-averaged per-user ``metric``, paired bootstrap over users."""
    out = []
    for name, scenario, k in sorted(per_user, key=lambda key: (key[0], key[1],
                                                                k_order(key[2]))):
        for a, b in pairs:
            if scenario != a or (name, b, k) not in per_user:
                continue
            row = _with_without(per_user[(name, a, k)], per_user[(name, b, k)], metric, params)
            if row is not None:
                out.append({"model": name, "without": a, "with": b, "k": k, **row})
    return out


def compare_views(per_user: PerUser, metric: str, params: EvaluateParams
                  ) -> list[dict[str, Any]]:
    """Each model minus its variant fitted on a view of the episodes (``maml`` minus
    ``maml~notext``: what the left-out features bring) on every scenario and K: the same
    users and tasks, seed-averaged per-user ``metric``, paired bootstrap over users."""
    out = []
    for name, scenario, k in sorted(per_user, key=lambda key: (key[0], key[1],
                                                                k_order(key[2]))):
        base, _, view = name.partition(SEP)
        if not view or (base, scenario, k) not in per_user:
            continue
        row = _with_without(per_user[(name, scenario, k)], per_user[(base, scenario, k)],
                            metric, params)
        if row is not None:
            out.append({"model": base, "view": view, "scenario": scenario, "k": k, **row})
    return out


def compare_zero_step(per_user: PerUser, zero: PerUser, metrics: list[str],
                      params: EvaluateParams) -> list[dict[str, Any]]:
    """Each adaptive model at its chosen test-time inner steps minus itself at 0 steps, on
    every scenario and K: the same model, users and tasks, so the difference is what its
    inner loop adds (seed-averaged per-user values, paired bootstrap over users)."""
    out = []
    for name, scenario, k in sorted(zero, key=lambda key: (key[0], key[1], k_order(key[2]))):
        for metric in metrics:
            row = _with_without(zero[(name, scenario, k)], per_user[(name, scenario, k)],
                                metric, params)
            if row is not None:
                out.append({"model": name, "scenario": scenario, "k": k, **row})
    return out
