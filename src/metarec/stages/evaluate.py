"""Stage `evaluate`: every trained model on the test tasks, per scenario, K and seed.

Reads ``models/seed<S>/<name>.pt`` (every fitted algorithm) and the episodes; writes
``metrics/eval.json``, ``metrics/selection.json`` (the model ``score.model: auto`` serves),
``reports/eval/report.md`` and PNG curves in ``reports/eval/``.

Honesty rules:
- every choice is made on validation tasks (:mod:`metarec.eval.choices`); test tasks are only
  scored;
- catalogue metrics rank every item not in the user's support set, not 10 query items (in the
  item-cold scenarios every new item, ``evaluate.item_cold_catalogue``);
- comparisons are paired bootstraps over test users of seed-averaged per-user values.

Where support sizes vary per user (the melu and predefined protocols: one test task per user
and scenario), an aggregate row over all test users (K = ``all``) stands beside the per-K rows.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from metarec.config import EvaluateParams
from metarec.data.tasks import (
    PLATFORM_COLD,
    SCENARIOS,
    EpisodeData,
    TaskBatch,
    load_episodes,
    to_batch,
    validation_tasks,
)
from metarec.errors import DataError
from metarec.eval import choices as choose
from metarec.eval.compare import PerUser, compare, compare_variants
from metarec.eval.document import write_report
from metarec.eval.ensembles import ENSEMBLE_SEED, build_ensembles
from metarec.eval.headline import headline
from metarec.eval.scoring import (
    catalogue_metric,
    eligible_items,
    metric_names,
    nanmean,
    score_batch,
)
from metarec.io import write_json
from metarec.meta.checkpoint import load_model
from metarec.progress import progress

log = logging.getLogger("metarec.evaluate")


def load_models(models_dir: Path, data: EpisodeData) -> dict[int, dict[str, Any]]:
    """{seed: {name: predictor}} from ``models_dir/seed<S>/``."""
    seeds = sorted(models_dir.glob("seed*"), key=lambda p: int(p.name.removeprefix("seed")))
    if not seeds:
        raise DataError("no trained models (expected seed<S>/ folders); run `dvc repro train`",
                        file=str(models_dir))
    return {int(folder.name.removeprefix("seed")):
            {path.stem: load_model(path, data) for path in sorted(folder.glob("*.pt"))}
            for folder in seeds}


CROSS = "+cross"   # suffix of a platform_cold group scored with the other platforms' history


def test_groups(data: EpisodeData) -> list[tuple[str, Any]]:
    """(scenario, K) of every group of test tasks, K = "all" where each user has one task.

    platform_cold tasks form two groups per K: on their support alone, and with the user's
    history on other platforms (``platform_cold+cross``); and, over all K, one pair of groups
    per platform (``platform_cold@<platform>``, ``platform_cold+cross@<platform>``)."""
    test = data.select("test")
    ks = sorted(int(k) for k in test["k"].unique())
    groups = [(s, k) for s in SCENARIOS for k in ks
              if not data.select("test", s, k).empty]
    tasks = test[test["scenario"] != PLATFORM_COLD].drop_duplicates("task_id")
    one_each = not tasks.empty and not tasks.duplicated(["user_id", "scenario"]).any()
    if one_each and len(ks) > 1:
        groups += [(s, "all") for s in SCENARIOS if not data.select("test", s).empty]
    cold = data.select("test", PLATFORM_COLD)
    if not cold.empty:
        groups += [(PLATFORM_COLD + tail, k) for k in ks for tail in ("", CROSS)
                   if not data.select("test", PLATFORM_COLD, k).empty]
        groups += [(f"{PLATFORM_COLD}{tail}@{name}", "all")
                   for name in sorted(cold["platform"].dropna().unique()) for tail in ("", CROSS)]
    return groups


def cross_pairs(groups: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(without, with) the cross-platform history, for every platform_cold group."""
    names = {s for s, _ in groups}
    with_ = {s: s.replace(PLATFORM_COLD, PLATFORM_COLD + CROSS, 1) for s in names
             if s.partition("@")[0] == PLATFORM_COLD}
    return [(s, w) for s, w in sorted(with_.items()) if w in names]


def group_batch(data: EpisodeData, scenario: str, k: Any) -> TaskBatch:
    """The test tasks of one group of :func:`test_groups`, padded."""
    base, _, platform = scenario.partition("@")
    cross = base.endswith(CROSS)
    tasks = data.select("test", base.removesuffix(CROSS), None if k == "all" else k)
    if platform:
        tasks = tasks[tasks["platform"] == platform]
    return to_batch(tasks, cross=cross)


def steps_curve(models: dict[str, Any], data: EpisodeData, k: int, n_items: int,
                params: EvaluateParams, seed: int) -> list[dict[str, Any]]:
    """Metrics against test-time inner steps 0..10 for each adaptive model (user-cold, K)."""
    batch = to_batch(data.select("test", "user_cold", k))
    rows = []
    for name, model in models.items():
        algo = choose.inner_loop(model)
        if algo is None or len(batch) == 0:
            continue
        states = model.adapt_grid(batch, range(0, 11))     # one inner loop of 10 steps
        for steps in range(0, 11):
            vals = score_batch(model, batch, n_items, params, data.relevance_threshold,
                               data.explicit, state=states[steps])
            rows.append({"model": name, "steps": steps, "seed": seed,
                         **{m: _plain(nanmean(vals[m])) for m in ("mae",
                                                                  catalogue_metric(params))}})
    return rows


class AdaptCache:
    """Each model's adaptation to each task batch, made once: a seed-ensemble's members are
    models already adapted to the same batches on their own (adapting is most of the
    evaluation's work). Holds the batch with its states, so that its id is not reused."""

    def __init__(self) -> None:
        self._states: dict[tuple[int, int, int], tuple[TaskBatch, Any]] = {}

    def __call__(self, model: Any, batch: TaskBatch, chunk: int = 0) -> Any:
        key = (id(model), id(batch), chunk)
        if key not in self._states:
            self._states[key] = (batch, model.adapt(batch, chunk))
        return self._states[key][1]

    def forget(self, batch: TaskBatch) -> None:
        """Drop every state of ``batch`` (memory holds one group's states at a time)."""
        self._states = {k: v for k, v in self._states.items() if v[0] is not batch}


def _score_group(models: dict[str, Any], seed: int, data: EpisodeData, scenario: str, k: Any,
                 batch: TaskBatch, n_items: int, params: EvaluateParams, adapt: AdaptCache,
                 rows: list[dict[str, Any]], per_user: PerUser, bar: Any) -> None:
    """Every model on one (scenario, K) group: result rows + per-user values."""
    eligible = eligible_items(scenario, params, data.items.id_code)
    for name, model in models.items():
        vals = score_batch(model, batch, n_items, params, data.relevance_threshold,
                           data.explicit, eligible, state=adapt(model, batch))
        per_user.setdefault((name, scenario, k), []).append(vals)
        rows.append({"model": name, "scenario": scenario, "k": k, "seed": seed,
                     "users": len(batch),
                     **{m: _plain(nanmean(v), 6) for m, v in vals.items()}})
        bar.advance(1, seed=seed, scenario=scenario, k=k, model=name)


def _plain(value: float, digits: int | None = None) -> float | None:
    """A JSON value: None for NaN (a metric the model or the labels do not have)."""
    if value != value:
        return None
    return round(value, digits) if digits is not None else value


def _check_evaluated(rows: list[dict[str, Any]], metric: str, data: EpisodeData) -> None:
    """Fail, saying why, when no test task has a relevant query item: every ranking metric
    would be NaN (a threshold above every label, for instance)."""
    if rows and all(r.get(metric) is None for r in rows):
        r = data.vocab["rating"]
        raise DataError(f"no test task has a query item rated >= {data.relevance_threshold:g} "
                        f"(labels {r.get('kind', 'explicit')} in [{r['min']:g}, {r['max']:g}]): "
                        f"every {metric} is undefined; lower episodes.relevance_threshold")


def run(params: EvaluateParams, episodes_dir: str | Path, models_dir: str | Path,
        metrics_path: str | Path, report_dir: str | Path,
        selection_path: str | Path | None = None) -> dict[str, Any]:
    """Evaluate every model; write metrics, the serving choice, report and plots."""
    start = time.perf_counter()
    data = load_episodes(episodes_dir)
    n_items = len(data.items)
    val = validation_tasks(data)
    all_models = load_models(Path(models_dir), data)
    groups = test_groups(data)
    ks = sorted({k for _, k in groups if k != "all"})
    ref_k = min(ks, key=lambda k: abs(k - params.curve_k))
    per_user: PerUser = {}
    choices: dict[str, Any] = {}
    val_scores: dict[str, Any] = {}
    bar_stack = contextlib.ExitStack()
    meta = [n for n in next(iter(all_models.values())) if not choose.is_baseline(n)]
    n_ens = (len(meta) + (min(params.ensemble_size, len(meta)) > 1)
             if len(all_models) > 1 and params.ensemble_size >= 1 else 0)
    n_models = sum(len(m) for m in all_models.values()) + n_ens
    bar = bar_stack.enter_context(progress("evaluate", len(groups) * n_models))
    adapt = AdaptCache()
    for seed, models in all_models.items():
        steps = choose.choose_inner_steps(models, val, params.inner_steps_grid, n_items,
                                          params, data.relevance_threshold, data.explicit)
        val_scores[str(seed)] = choose.validation_scores(models, val, n_items, params,
                                                         data.relevance_threshold,
                                                         data.explicit, adapt)
        choices[str(seed)] = {"inner_steps": steps, "best_baseline": choose.best_baselines(
            val_scores[str(seed)], params)}
    curves: list[dict[str, Any]] = []
    for seed, models in all_models.items():   # the inner-steps curve on the first seed only:
        curves = curves or steps_curve(models, data, ref_k, n_items, params, seed)  # 11x work

    def val_score(model: Any) -> float:
        return nanmean(score_batch(model, val, n_items, params, data.relevance_threshold,
                                   data.explicit, state=adapt(model, val))[
                                       catalogue_metric(params)])

    ensembles, choices["ensembles"] = build_ensembles(all_models, meta, params.ensemble_size,
                                                      val_score, adapt)
    adapt.forget(val)
    # group by group: each seed's models, then the ensembles of their states
    seed_rows: dict[int, list[dict[str, Any]]] = {seed: [] for seed in [*all_models,
                                                                         ENSEMBLE_SEED]}
    for scenario, k in groups:
        batch = group_batch(data, scenario, k)
        for seed, models in [*all_models.items(), (ENSEMBLE_SEED, ensembles)]:
            _score_group(models, seed, data, scenario, k, batch, n_items, params, adapt,
                         seed_rows[seed], per_user, bar)
        adapt.forget(batch)
    rows = [row for seed_part in seed_rows.values() for row in seed_part]
    bar_stack.close()
    _check_evaluated(rows, catalogue_metric(params), data)
    baselines = choose.majority_baselines(choices)
    serving = choose.serving_choice(val_scores, params)
    result = {"dataset": data.vocab.get("dataset"), "protocol": data.vocab.get("protocol"),
              "metrics": metric_names(params), "catalogue_metric": catalogue_metric(params),
              "relevance_threshold": data.relevance_threshold,
              "bootstrap": {"samples": params.bootstrap_samples,
                            "confidence": params.bootstrap_confidence},
              "results": rows, "comparisons": compare(per_user, baselines, params),
              "cross_platform": compare_variants(per_user, cross_pairs(groups),
                                                 catalogue_metric(params), params),
              "choices": choices, "best_baseline": baselines, "serving": serving,
              "steps_curve": curves, "seconds": round(time.perf_counter() - start, 1)}
    result["headline"] = headline(result)
    write_json(result, metrics_path)
    if selection_path is not None:
        write_json(serving, selection_path)
    write_report(result, Path(report_dir), metric_names(params), catalogue_metric(params),
                 params.bootstrap_confidence, ref_k)
    return result
