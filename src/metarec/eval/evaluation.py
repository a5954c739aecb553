"""The evaluation: every trained model on the test tasks, per scenario, K and seed.

Reads ``models/seed<S>/<name>.pt`` (every fitted algorithm) and the episodes; returns what
``metrics/eval.json`` holds (results, comparisons, choices, the serving choice, the
inner-steps curve, the headline). The evaluate stage writes it, the report and the serving
choice.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metarec.checkpoint import load_model
from metarec.config import EvaluateParams
from metarec.data import views
from metarec.data.tasks import EpisodeData, TaskBatch, load_episodes, to_batch, validation_tasks
from metarec.errors import DataError
from metarec.eval import choices as choose
from metarec.eval.compare import (
    PerUser,
    compare,
    compare_references,
    compare_variants,
    compare_views,
    compare_zero_step,
)
from metarec.eval.ensembles import ENSEMBLE_SEED, Ensemble, build_ensembles
from metarec.eval.groups import TestGroup, cross_pairs, groups_of, nearest_k
from metarec.eval.headline import headline
from metarec.eval.scoring import (
    catalogue_metric,
    eligible_items,
    metric_names,
    nanmean,
    score_blocks,
    score_grid,
    seen_items,
    task_blocks,
)
from metarec.io import plain
from metarec.progress import progress
from metarec.workers import Workers

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


def steps_curve(models: dict[str, Any], data: EpisodeData, k: int, params: EvaluateParams,
                seed: int) -> list[dict[str, Any]]:
    """Metrics against test-time inner steps 0..10 for each adaptive model (user-cold, K)."""
    batch = to_batch(data.select("test", "user_cold", k))
    blocks = task_blocks(batch, len(data.items))
    rows = []
    for name, model in models.items():
        if not model.adapts or len(batch) == 0:
            continue
        by_steps = score_grid(model, blocks, range(0, 11), params, data.relevance_threshold,
                              data.explicit)                # one inner loop of 10 steps
        for steps, vals in by_steps.items():
            rows.append({"model": name, "steps": steps, "seed": seed,
                         **{m: plain(nanmean(vals[m])) for m in ("mae",
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

    def put(self, model: Any, batch: TaskBatch, state: Any, chunk: int = 0) -> None:
        """Keep a state made elsewhere (a worker process) as ``model``'s on ``batch``."""
        self._states[(id(model), id(batch), chunk)] = (batch, state)

    def forget(self, batch: TaskBatch) -> None:
        """Drop every state of ``batch`` (memory holds one group's states at a time)."""
        self._states = {k: v for k, v in self._states.items() if v[0] is not batch}


def _score_group(models: dict[str, Any], seed: int, data: EpisodeData, group: TestGroup,
                 blocks: list[TaskBatch], params: EvaluateParams, adapt: AdaptCache,
                 rows: list[dict[str, Any]], per_user: PerUser, zero: PerUser) -> None:
    """Every model on one group of test tasks (``blocks``: their :func:`task_blocks`): result
    rows + per-user values; for a model with an inner loop, also its per-user values at 0
    test-time steps (``zero``: what the inner loop adds is measured against the same model
    without it)."""
    scenario, k = group.label, group.k_label
    eligible = eligible_items(scenario, params, data.items.id_code)
    seen = [seen_items(data, b, params) for b in blocks]
    users = sum(len(b) for b in blocks)
    for name, model in models.items():
        vals = score_blocks(model, blocks, params, data.relevance_threshold, data.explicit,
                            eligible, [adapt(model, b, i) for i, b in enumerate(blocks)], seen)
        per_user.setdefault((name, scenario, k), []).append(vals)
        rows.append({"model": name, "scenario": scenario, "k": k, "seed": seed,
                     "users": users,
                     **{m: plain(nanmean(v), 6) for m, v in vals.items()}})
        if model.adapts:
            zero.setdefault((name, scenario, k), []).append(score_grid(
                model, blocks, [0], params, data.relevance_threshold, data.explicit, eligible,
                seen)[0])


@dataclass
class Inputs:
    """What every evaluation job reads: the episodes and the checkpoints, loaded on first use
    in each process (a worker receives the episodes only), with their validation tasks."""

    data: EpisodeData
    models_dir: Path
    _models: dict[int, dict[str, Any]] | None = None
    _val: list[TaskBatch] | None = None

    def models(self) -> dict[int, dict[str, Any]]:
        if self._models is None:
            self._models = load_models(self.models_dir, self.data)
        return self._models

    def val(self) -> list[TaskBatch]:
        """The validation tasks' :func:`task_blocks`."""
        if self._val is None:
            self._val = task_blocks(validation_tasks(self.data), len(self.data.items))
        return self._val

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_models": None, "_val": None}


def choose_job(inputs: Inputs, params: EvaluateParams, seed: int, name: str
               ) -> tuple[dict[str, Any] | None, dict[str, float], Any]:
    """One model's choices on validation: (its inner steps record or None, its validation
    scores, its validation state when it may join a seed-ensemble, else None)."""
    data, val, model = inputs.data, inputs.val(), inputs.models()[seed][name]
    steps = choose.choose_inner_steps({name: model}, val, params.inner_steps_grid, params,
                                      data.relevance_threshold, data.explicit)
    states = [model.adapt(b, i) for i, b in enumerate(val)]
    scores = choose.validation_scores({name: model}, val, params, data.relevance_threshold,
                                      data.explicit, lambda m, b, i: states[i])
    return steps.get(name), scores[name], None if choose.is_baseline(name) else states


def group_job(inputs: Inputs, params: EvaluateParams, group: TestGroup,
              steps: dict[int, dict[str, tuple[int, int]]],
              ensembles: dict[str, list[tuple[int, str]]]
              ) -> tuple[dict[int, list[dict[str, Any]]], PerUser, PerUser]:
    """Every model of every seed, then every seed-ensemble (``ensembles``: its members' seed
    and name), on one (scenario, K) group of test tasks, each model adapted once; ``steps``:
    the inner steps chosen on validation. Returns the result rows by seed, the per-user
    values, and those of each adaptive model at 0 steps."""
    data, models = inputs.data, inputs.models()
    for seed, chosen in steps.items():
        for name, (rate, rank) in chosen.items():
            models[seed][name].set_steps(rate=rate, rank=rank)
    adapt = AdaptCache()
    ens = {name: Ensemble(name, [models[s][m] for s, m in members], adapt)
           for name, members in ensembles.items()}
    blocks = task_blocks(group.batch(data), len(data.items))
    rows: dict[int, list[dict[str, Any]]] = {}
    per_user: PerUser = {}
    zero: PerUser = {}
    for seed, group_models in [*models.items(), (ENSEMBLE_SEED, ens)]:
        _score_group(group_models, seed, data, group, blocks, params, adapt,
                     rows.setdefault(seed, []), per_user, zero)
    return rows, per_user, zero


def curve_job(inputs: Inputs, params: EvaluateParams, k: int) -> list[dict[str, Any]]:
    """The inner-steps curve (user-cold, K = ``k``) of the first seed that has one: 11x the
    scoring work, so one seed only."""
    curves: list[dict[str, Any]] = []
    for seed, models in inputs.models().items():
        curves = curves or steps_curve(models, inputs.data, k, params, seed)
    return curves


def _check_evaluated(rows: list[dict[str, Any]], metric: str, data: EpisodeData) -> None:
    """Fail, saying why, when no test task has a relevant query item: every ranking metric
    would be NaN (a threshold above every label, for instance)."""
    if rows and all(r.get(metric) is None for r in rows):
        r = data.vocab["rating"]
        raise DataError(f"no test task has a query item rated >= {data.relevance_threshold:g} "
                        f"(labels {r.get('kind', 'explicit')} in [{r['min']:g}, {r['max']:g}]): "
                        f"every {metric} is undefined; lower episodes.relevance_threshold")


def evaluate(params: EvaluateParams, episodes_dir: str | Path, models_dir: str | Path
             ) -> dict[str, Any]:
    """Evaluate every model: what ``metrics/eval.json`` holds (``serving``: what
    ``metrics/selection.json`` holds).

    The work is independent jobs over ``evaluate.workers`` processes of ``evaluate.threads``
    torch threads (:mod:`metarec.workers`): each model's choices on validation, then each
    (scenario, K) group of test tasks (every model and seed-ensemble on it) and the
    inner-steps curve. The outputs are the same bytes for any number of workers."""
    start = time.perf_counter()
    inputs = Inputs(load_episodes(episodes_dir), Path(models_dir))
    data, val, all_models = inputs.data, inputs.val(), inputs.models()
    groups = groups_of(data)
    ks = sorted({g.k for g in groups if g.k is not None})
    ref_k = nearest_k(ks, params.curve_k)
    keys = [(seed, name) for seed, models in all_models.items() for name in models]
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(Workers(inputs, params.workers, params.threads, "evaluate"))
        bar = stack.enter_context(progress("evaluate", len(keys) + len(groups) + 1))
        # 1. every choice on validation, model by model
        picked = pool.map(choose_job, [(params, seed, name) for seed, name in keys],
                          done=lambda: bar.advance(1, step="validation"))
        adapt = AdaptCache()
        choices: dict[str, Any] = {str(seed): {"inner_steps": {}} for seed in all_models}
        val_scores: dict[str, Any] = {str(seed): {} for seed in all_models}
        steps: dict[int, dict[str, tuple[int, int]]] = {seed: {} for seed in all_models}
        for (seed, name), (record, score, states) in zip(keys, picked, strict=True):
            model = all_models[seed][name]
            if record is not None:
                choices[str(seed)]["inner_steps"][name] = record
                steps[seed][name] = (record["steps"], record["rank_steps"])
                model.set_steps(rate=record["steps"], rank=record["rank_steps"])
            val_scores[str(seed)][name] = score
            if states is not None:
                for i, (block, state) in enumerate(zip(val, states, strict=True)):
                    adapt.put(model, block, state, i)
        for seed in all_models:
            choices[str(seed)]["best_baseline"] = choose.best_baselines(val_scores[str(seed)],
                                                                        params)

        def val_score(model: Any) -> float:
            states = [adapt(model, b, i) for i, b in enumerate(val)]
            return nanmean(score_blocks(model, val, params, data.relevance_threshold,
                                        data.explicit, states=states)[catalogue_metric(params)])

        meta = [n for n in next(iter(all_models.values()))    # variants stay out of the
                if not choose.is_baseline(n) and views.SEP not in n]  # seed-ensembles
        ensembles, choices["ensembles"] = build_ensembles(all_models, meta,
                                                          params.ensemble_size, val_score, adapt)
        for block in val:
            adapt.forget(block)
        member = {id(m): (seed, name) for seed, models in all_models.items()
                  for name, m in models.items()}
        spec = {name: [member[id(m)] for m in ens.members] for name, ens in ensembles.items()}
        # 2. the inner-steps curve and every group of test tasks
        curves, *scored = pool.run([(curve_job, (params, ref_k)),
                                    *((group_job, (params, group, steps, spec))
                                      for group in groups)],
                                   done=lambda: bar.advance(1, step="test"))
    seed_rows: dict[int, list[dict[str, Any]]] = {seed: [] for seed in [*all_models,
                                                                         ENSEMBLE_SEED]}
    per_user: PerUser = {}
    zero: PerUser = {}
    for by_seed, group_values, group_zero in scored:
        for seed, part in by_seed.items():
            seed_rows[seed].extend(part)
        per_user.update(group_values)
        zero.update(group_zero)
    rows = [row for part in seed_rows.values() for row in part]
    _check_evaluated(rows, catalogue_metric(params), data)
    baselines = choose.majority_baselines(choices)
    serving = choose.serving_choice(val_scores, params, steps)
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
    result["zero_step"] = compare_zero_step(per_user, zero, ["mae", catalogue_metric(params)],
                                            params)
    trained = {name for models in all_models.values() for name in models}
    result["references"] = compare_references(per_user, meta, list(params.references),
                                              catalogue_metric(params), params)
    result["references_untrained"] = [r for r in params.references if r not in trained]
    text = compare_views(per_user, catalogue_metric(params), params)
    if text:                 # train.text_ablation: each meta-learner with and without text
        result["text"] = text
    result["headline"] = headline(result)
    return result
