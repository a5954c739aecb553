"""Fitting every algorithm for every seed: jobs, their order, the probes, checkpoints.

The fits are independent jobs (:func:`plan_jobs`) spread over worker processes
(:mod:`metarec.workers`): each algorithm is grouped with what it requires, a group that reads
no seed (``capabilities.seeded`` False: most statistical baselines) is fitted once and saved
for every seed, and the costliest jobs go first, so that the workers end together. The models
are the same bytes for any number of workers. What must be chosen on validation before the
fits (``train.search``: a bounded choice, the same rule on every data set) is chosen by probes
fitted side by side for the first seed: how meta-train tasks are drawn (:func:`choose_draw`)
and the inner loops' learning rate (:func:`choose_inner_lr`); the chosen probe is that
algorithm's first-seed fit. The train stage wires this to its files; the backtest's retraining
(:mod:`metarec.backtest.retrain`) calls it on a shorter log.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from metarec import algorithms
from metarec.checkpoint import save_model
from metarec.config import ModelParams, TrainParams, to_dict
from metarec.data import views
from metarec.data.tasks import EpisodeData, load_episodes
from metarec.errors import ParamsError
from metarec.io import atomic_dir
from metarec.models.base import FitContext, Predictor
from metarec.train import distributed
from metarec.train.module import TrainingDiverged
from metarec.workers import Workers

console = Console(stderr=True)


@dataclass(frozen=True)
class FitJob:
    """Algorithms fitted one after another in one process (each after what it ``requires``),
    for the first of ``seeds``, and saved for every one of them: several seeds only when no
    algorithm of the job reads the seed, so that one fit serves them all."""

    seeds: tuple[int, ...]
    names: tuple[str, ...]
    view: str | None = None    # fitted on this view of the episodes (metarec.data.views)


def ablation_views(train: TrainParams, data: EpisodeData) -> tuple[str, ...]:
    """The views the meta-learners are fitted on too: ``notext`` with ``train.text_ablation``
    (an error when the episodes have no text vectors: there is nothing to leave out)."""
    if not train.text_ablation:
        return ()
    if not views.text_features(data):
        raise ParamsError("train.text_ablation is true but the episodes have no item text "
                          "vectors: name an encoder in episodes.text_encoder (e.g. hashed) "
                          "or set train.text_ablation: false")
    return (views.NOTEXT,)


def plan_jobs(names: list[str], seeds: tuple[int, ...], meta: tuple[str, ...] = (),
              ablate: tuple[str, ...] = (), large: bool = False) -> list[FitJob]:
    """Every fit as independent jobs: each algorithm grouped with what it requires, a group
    that reads no seed once for all seeds, every other group once per seed; then, for each
    view of ``ablate``, every job that fits one of the meta-learners ``meta`` again on that
    view. The longest go first, so that the workers end together: on a ``large`` catalogue
    the dense items x items fits (EASE's grid: ten minutes at 10^4 items, which as the last
    job kept one worker busy alone), then second-order meta-training, then the rest of the
    gradient training."""
    groups: list[list[str]] = []
    for name in names:                       # fit order: requirements come first
        needs = set(algorithms.requirements(name))
        joined = [n for g in groups if needs.intersection(g) for n in g]
        groups = [g for g in groups if not needs.intersection(g)]
        groups.append(sorted({*joined, name}, key=names.index))
    caps = {n: algorithms.get(n).capabilities for n in names}
    jobs = [FitJob(seeds, tuple(g)) for g in groups if not any(caps[n].seeded for n in g)]
    jobs += [FitJob((s,), tuple(g)) for s in seeds for g in groups
             if any(caps[n].seeded for n in g)]
    jobs += [replace(job, view=view) for view in ablate for job in jobs
             if set(job.names) & set(meta)]

    def cost(job: FitJob) -> int:
        return (3 if large and any(caps[n].dense_items for n in job.names)
                else 2 if any(caps[n].second_order for n in job.names)
                else 1 if any(caps[n].gradient for n in job.names) else 0)

    return sorted(jobs, key=lambda j: -cost(j))   # stable: seed and params order otherwise


def fit_models(model: ModelParams, train: TrainParams, episodes_dir: str | Path,
               out_dir: str | Path) -> dict[str, Any]:
    """Fit every algorithm of ``train`` for every seed on the episodes in ``episodes_dir``
    into ``out_dir/seed<S>/`` (the folder swapped in whole at the end: a failure leaves the
    previous models, never a mix); returns the fit records (the train stage's metrics).
    Under DDP every process fits everything (the same, by construction); rank 0 alone
    writes."""
    names = algorithms.fit_order([*train.baselines, *train.algorithms])
    distributed.check(train, [algorithms.get(n) for n in names])  # before any work
    data = load_episodes(episodes_dir)
    objective = train.objective.resolved(data.items.n_ids)
    train = replace(train, objective=objective)       # every fit and checkpoint: the loss used
    ablate = ablation_views(train, data)
    writer = distributed.global_rank(train) == 0
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:   # all checkpoints appear at once, or none
        tmp = stack.enter_context(atomic_dir(out_dir)) if writer else Path(out_dir)
        pool = stack.enter_context(Workers(data, train.workers, train.threads, "train"))
        results, draw, draw_choice = fit_all(pool, model, train, tmp, writer, ablate)
    return {"seeds": results, "seconds": round(time.perf_counter() - start, 2),
            "draw": draw, "draw_choice": draw_choice,
            "objective": {"loss": objective.loss, "item_ids": data.items.n_ids,
                          "sampled_above": objective.sampled_above},
            "val_tasks": int(data.select("val")["task_id"].nunique()),
            "train_tasks": int(data.select("train")["task_id"].nunique()),
            "processes": distributed.world_size(train), "workers": train.workers}


def fit_all(pool: Workers, model: ModelParams, train: TrainParams, out_dir: Path,
            writer: bool, ablate: tuple[str, ...] = ()
            ) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """Every algorithm of ``train`` for every seed (and every meta-learner on each view of
    ``ablate``) into ``out_dir/seed<S>/``; returns (per-seed fit records, draw, its choice)."""
    names = algorithms.fit_order([*train.baselines, *train.algorithms])
    start = time.perf_counter()
    draw, draw_choice, probes = choose_draw(names, pool, model, train, out_dir, writer)
    # a chosen probe's run is that algorithm's first-seed fit: the draw probe's, unless the
    # learning-rate search probed the same algorithm (then its chosen rate's run is)
    reused = {probes[draw].name: probes[draw]} if draw in probes else {}
    known = {train.inner_lr: probes[draw]} if draw in probes else {}
    lr, lr_choice, lr_probes = choose_inner_lr(names, pool, model, train, out_dir, draw,
                                               writer, time.perf_counter() - start, known)
    train = replace(train, inner_lr=lr)
    if lr in lr_probes:
        reused[lr_probes[lr].name] = lr_probes[lr]
    if lr_choice:
        draw_choice = {**draw_choice, "inner_lr": lr_choice}
    large = pool.shared.items.n_ids > train.objective.sampled_above
    jobs = plan_jobs(names, train.seeds, train.algorithms, ablate, large)
    prefit = [{name: fit for name, fit in reused.items() if name in job.names}
              if job.seeds[0] == train.seeds[0] and job.view is None else {} for job in jobs]
    done = pool.map(fit_job, [(job, model, train, out_dir, draw, writer, pre)
                              for job, pre in zip(jobs, prefit, strict=True)])
    records: dict[int, dict[str, Any]] = {}
    for record in done:
        for seed, per_name in record.items():
            records.setdefault(seed, {}).update(per_name)
    first = records[train.seeds[0]]        # every seed holds the same fits
    fitted = [*names, *(views.variant(n, v) for v in ablate for n in names
                        if views.variant(n, v) in first)]
    results = {f"seed{seed}": {name: records[seed][name] for name in fitted}
               for seed in train.seeds}
    return results, draw, draw_choice


def fit_job(data: EpisodeData, job: FitJob, model: ModelParams, train: TrainParams,
            out_dir: Path, draw: str | None, writer: bool, prefit: dict[str, Predictor]
            ) -> dict[int, dict[str, Any]]:
    """Fit ``job`` (``prefit``: fits already made, reused) and save it for each of its seeds;
    returns {seed: {name: its fit's record}} (a view's fits named ``<name>~<view>``). Runs in
    a worker process or in this one."""
    data = views.apply(job.view, data)
    seed = job.seeds[0]
    run_params = replace(train, seed=seed)
    log_dir = out_dir / f"seed{seed}" / "logs"
    if job.view is not None:
        log_dir = log_dir / job.view
    fitted: dict[str, Predictor] = dict(prefit)
    took: dict[str, float | str] = dict.fromkeys(prefit, "probe")
    for name in job.names:
        if writer:
            console.print(f"[bold]train[/] seed {', '.join(map(str, job.seeds))} "
                          f"{views.variant(name, job.view)} ...")
        if name not in fitted:
            ctx = FitContext(data=data, model=model, train=run_params, log_dir=log_dir,
                             fitted=fitted, draw=draw)
            begun = time.perf_counter()
            fitted[name] = algorithms.get(name).fit(ctx)
            took[name] = round(time.perf_counter() - begun, 2)
        if writer:
            _report(name, fitted[name].tuning)
    for s in job.seeds if writer else ():
        # the params that trained it: not how the fits were spread over processes
        trained_by = {k: v for k, v in to_dict(replace(train, seed=s)).items()
                      if k not in ("workers", "text_ablation")}
        params = {"model": to_dict(model), "train": trained_by}
        for name in job.names:
            save_model(out_dir / f"seed{s}" / f"{views.variant(name, job.view)}.pt",
                       fitted[name], params, data.vocab, job.view)
    # the record's copy says how long each fit took (the model's own tuning record, which
    # its checkpoint keeps, holds no clock); "probe": fitted by the draw or rate search
    return {s: {views.variant(name, job.view): {**fitted[name].tuning,
                                                "fit_seconds": took[name]}
                for name in job.names} for s in job.seeds}


def choose_draw(names: list[str], pool: Workers, model: ModelParams, train: TrainParams,
                out_dir: Path, writer: bool) -> tuple[str | None, dict[str, Any], dict]:
    """How meta-train tasks are drawn: None (the episodes' fixed draws, ``resample: false``),
    the one mode of ``train.draws``, or the mode whose probe fit (the first algorithm that
    draws tasks, first seed) has the lowest validation loss, the modes' probes fitted in
    parallel. Returns (mode, record, probe predictors by mode)."""
    if not train.resample:
        return None, {}, {}
    if len(train.draws) == 1:
        return train.draws[0], {}, {}
    probe = next((n for n in names if algorithms.get(n).capabilities.uses_draws), None)
    if probe is None:
        return train.draws[0], {}, {}
    fits = dict(zip(train.draws, pool.map(probe_job, [(probe, model, train, out_dir, mode,
                                                        writer) for mode in train.draws]),
                    strict=True))
    losses = {mode: float(fit.tuning["best_val_loss"]) for mode, fit in fits.items()}
    chosen = min(losses, key=lambda m: (losses[m], train.draws.index(m)))
    record = {"probe": probe, "val_loss": losses, "chosen": chosen}
    if writer:
        console.print(f"[bold]train[/] task draw: {chosen} ({record['val_loss']})")
    return chosen, record, fits


def choose_inner_lr(names: list[str], pool: Workers, model: ModelParams, train: TrainParams,
                    out_dir: Path, draw: str | None, writer: bool, spent: float,
                    known: dict[float, Predictor] | None = None
                    ) -> tuple[float, dict[str, Any], dict[float, Predictor]]:
    """The inner learning rate of every gradient inner loop, chosen on validation tasks
    (``train.search``): the first meta-learner with tunable inner steps fitted for the first
    seed with each rate of ``train.search.inner_lr``, side by side; the lowest validation
    loss wins. ``train.inner_lr`` when the grid holds fewer than two rates, when no algorithm
    has an inner loop, or when the draw probes already spent ``train.search.budget_s``
    seconds (``spent``; said in the record). ``known``: probes already fitted (the draw
    probe at ``train.inner_lr``), used when they are this probe's algorithm. A rate whose
    probe diverges loses (the record names it under ``diverged``); when all do, the stage
    fails. Returns (rate, record, probe predictors)."""
    grid = train.search.inner_lr
    probe = next((n for n in names if algorithms.get(n).capabilities.tunable_steps
                  and algorithms.get(n).capabilities.uses_draws), None)
    if len(grid) < 2 or probe is None:
        return train.inner_lr, {}, {}
    if spent > train.search.budget_s:
        return train.inner_lr, {"skipped": f"the draw probes took {spent:.0f} s of the "
                                f"{train.search.budget_s:g} s budget (train.search.budget_s)"}, {}
    fits = {lr: fit for lr, fit in (known or {}).items() if lr in grid and fit.name == probe}
    todo = [lr for lr in grid if lr not in fits]
    done = pool.map(probe_or_divergence, [(probe, model, replace(train, inner_lr=lr), out_dir,
                                           draw, writer) for lr in todo])
    diverged = {lr: out for lr, out in zip(todo, done, strict=True) if isinstance(out, str)}
    fits.update((lr, out) for lr, out in zip(todo, done, strict=True)
                if not isinstance(out, str))
    if not fits:                                     # every rate diverged: nothing to keep
        raise TrainingDiverged(next(iter(diverged.values())))
    losses = {lr: float(fits[lr].tuning["best_val_loss"]) if lr in fits else float("inf")
              for lr in grid}
    chosen = min(losses, key=lambda lr: (losses[lr], grid.index(lr)))
    if writer:
        console.print(f"[bold]train[/] inner learning rate: {chosen:g} ({losses})")
    record = {"probe": probe, "val_loss": {f"{lr:g}": v for lr, v in losses.items()
                                           if lr in fits}, "chosen": chosen}
    if diverged:
        record["diverged"] = {f"{lr:g}": message for lr, message in diverged.items()}
    return chosen, record, fits


def probe_or_divergence(data: EpisodeData, probe: str, model: ModelParams, train: TrainParams,
                        out_dir: Path, mode: str | None, writer: bool) -> Predictor | str:
    """:func:`probe_job`, or the message of its divergence: a rate that diverges loses the
    search (and is recorded) instead of ending the train stage."""
    try:
        return probe_job(data, probe, model, train, out_dir, mode, writer)
    except TrainingDiverged as exc:
        return str(exc)


def probe_job(data: EpisodeData, probe: str, model: ModelParams, train: TrainParams,
              out_dir: Path, mode: str | None, writer: bool) -> Predictor:
    """``probe`` fitted for the first seed on tasks drawn ``mode`` (logs under
    ``<out_dir>/probes/<mode>-<inner lr>``). Runs in a worker process or in this one."""
    run_params = replace(train, seed=train.seeds[0])
    if writer:
        console.print(f"[bold]train[/] probing: {probe} with {mode} draws, inner lr "
                      f"{train.inner_lr:g}")
    ctx = FitContext(data=data, model=model, train=run_params,
                     log_dir=out_dir / "probes" / f"{mode}-{train.inner_lr:g}", draw=mode)
    return algorithms.get(probe).fit(ctx)


def _report(name: str, record: dict[str, Any]) -> None:
    if "best_val_loss" in record:
        console.print(f"[bold]train[/] {name}: val loss {record['initial_val_loss']:.4f} -> "
                      f"{record['best_val_loss']:.4f} (step {record['best_step']}, "
                      f"{record['seconds']:.1f} s)")
        if str(record.get("stopped_by", "")).startswith("diverged"):
            console.print(f"[bold yellow]train[/] {name}: {record['stopped_by']}")
