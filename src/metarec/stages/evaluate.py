"""Stage `evaluate`: every trained model on the test tasks, per scenario, K and seed.

Reads ``models/seed<S>/`` (meta-learner checkpoints and ``baselines.pt``) and the episodes;
writes ``metrics/eval.json``, ``reports/eval/report.md`` and PNG curves in ``reports/eval/``.

Honesty rules:
- every choice is made on validation tasks (test-time inner steps of each meta-learner, the
  "best baseline" that every model is compared against); test tasks are only scored;
- catalogue metrics rank every item not in the user's support set, not 10 query items;
- comparisons are paired bootstraps over test users of seed-averaged per-user values.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from metarec.config import EvaluateParams
from metarec.data.tasks import SCENARIOS, EpisodeData, TaskBatch, load_episodes, to_batch
from metarec.errors import DataError
from metarec.eval.bootstrap import paired_bootstrap
from metarec.eval.metrics import (
    catalogue_metrics,
    catalogue_targets,
    per_task_mae,
    per_task_rmse,
    query_ndcg,
)
from metarec.eval.report import adaptation_curves, markdown_table
from metarec.io import write_json, write_text
from metarec.meta.checkpoint import load_predictor
from metarec.models.base import ColdStartPredictor
from metarec.models.baselines import load_baselines

log = logging.getLogger("metarec.evaluate")
COMPARED = ("mae", "rmse", "ndcg@3", "ndcg@20", "recall@20")
TABLE = ("mae", "rmse", "ndcg@1", "ndcg@3", "ndcg@5", "recall@20", "ndcg@20", "hit@20")


def load_models(models_dir: Path, data: EpisodeData) -> dict[int, dict[str, Any]]:
    """{seed: {name: predictor}} from ``models_dir/seed<S>/``."""
    seeds = sorted(models_dir.glob("seed*"))
    if not seeds:
        raise DataError("no trained models (expected seed<S>/ folders); run `dvc repro train`",
                        file=str(models_dir))
    out: dict[int, dict[str, Any]] = {}
    for folder in seeds:
        seed = int(folder.name.removeprefix("seed"))
        models: dict[str, Any] = {}
        if (folder / "baselines.pt").exists():
            models.update(load_baselines(folder / "baselines.pt"))
        for path in sorted(folder.glob("*.pt")):
            if path.name != "baselines.pt":
                models[path.stem] = load_predictor(path, data)
        out[seed] = models
    return out


def score_batch(model: ColdStartPredictor, batch: TaskBatch, n_items: int,
                params: EvaluateParams) -> dict[str, torch.Tensor]:
    """Per-task metric values (T,) for one model on one batch of tasks.

    One ``predict`` call scores the query items and the whole catalogue together, so the model
    adapts once per task.
    """
    t, q = batch.query_items.shape
    catalogue = torch.arange(n_items).expand(t, n_items)                       # (T, N)
    scores = model.predict(batch, torch.cat([batch.query_items, catalogue], 1))  # (T, Q+N)
    pred, full = scores[:, :q], scores[:, q:]
    out = {"mae": per_task_mae(pred, batch.query_ratings, batch.query_mask),
           "rmse": per_task_rmse(pred, batch.query_ratings, batch.query_mask)}
    for k in params.query_ndcg_ks:
        out[f"ndcg@{k}"] = query_ndcg(pred, batch.query_ratings, batch.query_mask, k)
    cands, rel = catalogue_targets(batch.support_items, batch.support_mask, batch.query_items,
                                   batch.query_ratings, batch.query_mask, n_items,
                                   params.relevance_threshold)
    cat = catalogue_metrics(full, cands, rel, params.catalogue_k)
    ck = params.catalogue_k
    out.update({f"recall@{ck}": cat.recall, f"ndcg@{ck}": cat.ndcg, f"hit@{ck}": cat.hit_rate})
    return out


def _nanmean(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else math.nan


def _val_mse(model: Any, batch: TaskBatch) -> float:
    pred = model.predict(batch, batch.query_items)
    err = ((pred - batch.query_ratings) ** 2)[batch.query_mask]
    return float(err.mean())


def choose_inner_steps(models: dict[str, Any], val: TaskBatch, grid: tuple[int, ...]
                       ) -> dict[str, dict[str, Any]]:
    """Test-time inner steps of each meta-learner, chosen by validation MSE (grid search)."""
    chosen = {}
    for name, model in models.items():
        algo = getattr(model, "algorithm", None)
        if algo is None or name == "pretrain":
            continue
        scores = {}
        for steps in grid:
            algo.inner_steps = steps
            scores[steps] = _val_mse(model, val)
        best = min(scores, key=lambda s: (scores[s], s))
        algo.inner_steps = best
        chosen[name] = {"steps": best, "val_mse": {str(s): round(v, 5)
                                                   for s, v in scores.items()}}
    return chosen


NON_META = ("pretrain", "finetune")


def is_baseline(name: str, model: Any) -> bool:
    """Statistical baselines and the network without meta-learning (pretrain / finetune)."""
    if isinstance(model, Ensemble):
        return False
    return getattr(model, "algorithm", None) is None or name in NON_META


def best_baselines(models: dict[str, Any], val: TaskBatch, n_items: int,
                   params: EvaluateParams) -> dict[str, dict[str, Any]]:
    """The best non-meta model on validation tasks for each metric family.

    Accuracy metrics (MAE, RMSE) compare against the baseline with the lowest validation MAE;
    ranking metrics against the one with the highest validation catalogue nDCG@k. Comparing
    a ranking metric against the most accurate baseline would flatter the meta-learners.
    """
    ck = f"ndcg@{params.catalogue_k}"
    scores = {name: score_batch(m, val, n_items, params) for name, m in models.items()
              if is_baseline(name, m)}
    mae = {n: _nanmean(v["mae"]) for n, v in scores.items()}
    ndcg = {n: _nanmean(v[ck]) for n, v in scores.items()}
    return {"accuracy": {"name": min(mae, key=lambda n: (mae[n], n)), "val_mae": mae},
            "ranking": {"name": max(ndcg, key=lambda n: (ndcg[n], n)), f"val_{ck}": ndcg}}


def family(metric: str) -> str:
    return "accuracy" if metric in ("mae", "rmse") else "ranking"


def steps_curve(models: dict[str, Any], batch: TaskBatch, n_items: int,
                params: EvaluateParams, seed: int) -> list[dict[str, Any]]:
    """Metrics against test-time inner steps 0..10 for each adaptive model."""
    rows = []
    for name, model in models.items():
        algo = getattr(model, "algorithm", None)
        if algo is None or name == "pretrain":
            continue
        keep = algo.inner_steps
        for steps in range(0, 11):
            algo.inner_steps = steps
            vals = score_batch(model, batch, n_items, params)
            rows.append({"model": name, "steps": steps, "seed": seed,
                         **{m: _nanmean(vals[m]) for m in ("mae", f"ndcg@{params.catalogue_k}")}})
        algo.inner_steps = keep
    return rows


def _steps_plot(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Reuse the K-curve plotter: steps play the role of K, one panel."""
    as_k = [{"model": r["model"], "scenario": "user_cold", "k": r["steps"], "seed": r["seed"],
             metric: r[metric]} for r in rows]
    adaptation_curves(as_k, metric, path)


def run(params: EvaluateParams, episodes_dir: str | Path, models_dir: str | Path,
        metrics_path: str | Path, report_dir: str | Path) -> dict[str, Any]:
    """Evaluate every model and write metrics, report and plots."""
    start = time.perf_counter()
    data = load_episodes(episodes_dir)
    report_dir = Path(report_dir)
    n_items = len(data.items)
    val = to_batch(data.select("val"))
    all_models = load_models(Path(models_dir), data)
    ks = sorted(int(k) for k in data.select("test")["k"].unique())
    rows: list[dict[str, Any]] = []
    per_user: dict[tuple[str, str, int], list[dict[str, torch.Tensor]]] = {}
    choices: dict[str, Any] = {}
    curves: list[dict[str, Any]] = []
    ref_k = min(ks, key=lambda k: abs(k - params.curve_k))
    for seed, models in all_models.items():
        choices[str(seed)] = {"inner_steps": choose_inner_steps(models, val,
                                                                params.inner_steps_grid)}
        choices[str(seed)]["best_baseline"] = best_baselines(models, val, n_items, params)
        _score_all(models, seed, data, ks, n_items, params, rows, per_user)
        if not curves:  # the inner-steps curve on the first seed only: 11x the scoring work
            curve_batch = to_batch(data.select("test", "user_cold", ref_k))
            curves = steps_curve(models, curve_batch, n_items, params, seed)
    ensembles, choices["ensembles"] = build_ensembles(all_models, val, params.ensemble_size)
    _score_all(ensembles, ENSEMBLE_SEED, data, ks, n_items, params, rows, per_user)
    baselines = _majority_baselines(choices)
    comparisons = _compare(per_user, baselines, params)
    result = {"dataset": data.vocab.get("dataset"), "protocol": data.vocab.get("protocol"),
              "results": rows, "comparisons": comparisons, "choices": choices,
              "best_baseline": baselines, "steps_curve": curves,
              "seconds": round(time.perf_counter() - start, 1)}
    write_json(result, metrics_path)
    _write_report(result, report_dir, params, ref_k)
    return result


ENSEMBLE_SEED = -1  # the "seed" of result rows that average every seed's model


class Ensemble:
    """Averages the predictions of adapted predictors (one algorithm over seeds, or several).

    Each member adapts to the support on its own (with its validation-chosen inner steps)."""

    def __init__(self, name: str, members: list[Any]) -> None:
        self.name, self.members = name, members

    def predict(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.predict(batch, items) for m in self.members]).mean(0)


def build_ensembles(all_models: dict[int, dict[str, Any]], val: TaskBatch, size: int
                    ) -> tuple[dict[str, Ensemble], dict[str, Any]]:
    """``<algo>-ens``: every meta-learner averaged over the seeds; ``meta-ens``: the ``size``
    seed-ensembles with the lowest validation MAE averaged together (chosen on validation)."""
    seeds = list(all_models.values())
    if len(seeds) < 2 or size < 1:
        return {}, {}
    names = [n for n, m in seeds[0].items() if not is_baseline(n, m)
             and all(n in models for models in seeds)]
    out = {f"{n}-ens": Ensemble(f"{n}-ens", [models[n] for models in seeds]) for n in names}
    val_mae = {}
    for name, ens in out.items():
        pred = ens.predict(val, val.query_items)
        val_mae[name] = _nanmean(per_task_mae(pred, val.query_ratings, val.query_mask))
    chosen = sorted(val_mae, key=lambda n: (val_mae[n], n))[:size]
    if len(chosen) > 1:
        out["meta-ens"] = Ensemble("meta-ens", [m for n in chosen for m in out[n].members])
    return out, {"val_mae": {n: round(v, 6) for n, v in val_mae.items()},
                 "meta-ens": chosen if len(chosen) > 1 else []}


def _score_all(models: dict[str, Any], seed: int, data: EpisodeData, ks: list[int],
               n_items: int, params: EvaluateParams, rows: list[dict[str, Any]],
               per_user: dict[tuple[str, str, int], list[dict[str, torch.Tensor]]]) -> None:
    """Every model on every (scenario, K) of the test tasks: result rows + per-user values."""
    for scenario in SCENARIOS:
        for k in ks:
            tasks = data.select("test", scenario, k)
            if tasks.empty:
                continue
            batch = to_batch(tasks)
            for name, model in models.items():
                vals = score_batch(model, batch, n_items, params)
                per_user.setdefault((name, scenario, k), []).append(vals)
                rows.append({"model": name, "scenario": scenario, "k": k, "seed": seed,
                             "users": len(batch),
                             **{m: round(_nanmean(v), 6) for m, v in vals.items()}})
            log.info("seed %d %s K=%d: %d users, %d models", seed, scenario, k, len(batch),
                     len(models))


def _majority_baselines(choices: dict[str, Any]) -> dict[str, str]:
    """Per metric family, the baseline most seeds chose (ties: alphabetical)."""
    out = {}
    for fam in ("accuracy", "ranking"):
        names = [c["best_baseline"][fam]["name"] for c in choices.values()
             if "best_baseline" in c]
        out[fam] = max(sorted(set(names)), key=names.count)
    return out


def _compare(per_user: dict[tuple[str, str, int], list[dict[str, torch.Tensor]]],
             baselines: dict[str, str], params: EvaluateParams) -> list[dict[str, Any]]:
    """Paired bootstrap of each model against the best baseline of each metric's family."""
    out = []
    for (name, scenario, k), seeds in sorted(per_user.items()):
        for metric in COMPARED:
            baseline = baselines[family(metric)]
            if name == baseline or (baseline, scenario, k) not in per_user:
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


def _write_report(result: dict[str, Any], report_dir: Path, params: EvaluateParams,
                  ref_k: int) -> None:
    rows = result["results"]
    ck = params.catalogue_k
    table_metrics = [m.replace("20", str(ck)) for m in TABLE]
    for metric in ("mae", f"ndcg@{ck}"):
        adaptation_curves(rows, metric, report_dir / f"{metric.replace('@', '_at_')}_vs_k.png")
        _steps_plot(result["steps_curve"], metric,
                    report_dir / f"{metric.replace('@', '_at_')}_vs_steps.png")
    comp = [c for c in result["comparisons"] if c["scenario"] == "user_cold"
            and c["metric"] in ("mae", f"ndcg@{ck}")]
    lines = [f"# Evaluation: {result['dataset']} ({result['protocol']} protocol)", "",
             "Best baselines, chosen on validation tasks (majority over seeds): "
             f"**{result['best_baseline']['accuracy']}** for MAE/RMSE (lowest validation MAE), "
             f"**{result['best_baseline']['ranking']}** for ranking metrics (highest "
             f"validation catalogue nDCG@{ck}).", "",
             "## Test metrics (mean ± std over seeds)", "",
             markdown_table(rows, table_metrics), "",
             "## User-cold: each model minus the best baseline "
             "(paired bootstrap over users, 95% CI)", "",
             "| model | baseline | K | metric | diff | 95% CI |", "|---|---|---|---|---|---|"]
    for c in comp:
        lines.append(f"| {c['model']} | {c['baseline']} | {c['k']} | {c['metric']} | "
                     f"{c['diff']:+.4f} | [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] |")
    lines += ["", "## Choices made on validation tasks", ""]
    for seed, ch in result["choices"].items():
        if seed == "ensembles":
            lines.append(f"- ensembles: meta-ens averages {', '.join(ch.get('meta-ens', []))} "
                         "(lowest validation MAE among the seed-ensembles)")
            continue
        steps = ", ".join(f"{n}: {v['steps']}" for n, v in ch["inner_steps"].items())
        lines.append(f"- seed {seed}: test-time inner steps {steps}; best baselines "
                     f"{ch['best_baseline']['accuracy']['name']} (accuracy), "
                     f"{ch['best_baseline']['ranking']['name']} (ranking)")
    lines += ["", f"Curves: `mae_vs_k.png`, `ndcg_at_{ck}_vs_k.png`; against inner steps at "
              f"K={ref_k} (user-cold): `mae_vs_steps.png`, `ndcg_at_{ck}_vs_steps.png`.", ""]
    write_text("\n".join(lines), report_dir / "report.md")
