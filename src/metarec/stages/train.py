"""Train stage: every algorithm in ``train.algorithms`` and ``train.baselines``, once per seed.

For each seed in ``train.seeds`` writes ``<out_dir>/seed<S>/<name>.pt`` (the whole folder
swapped in at the end: a failed run leaves the previous models, never a mix) (read by
:func:`metarec.meta.checkpoint.load_model`), Lightning CSV logs under
``<out_dir>/seed<S>/logs/<name>/`` and ``metrics_path`` with, per seed and algorithm, what its
fit recorded (validation losses before and after meta-training, best step, seconds; or the
validation grid of a baseline's tuning). Algorithms come from the registry: each is fitted by
its own ``fit``, after the algorithms it ``requires``.

The fits are independent jobs (:func:`plan_jobs`) spread over ``train.workers`` processes
with ``train.threads`` torch threads each (:mod:`metarec.workers`): the outputs are the same
bytes for any number of workers. A fit that reads no seed (``seeded = False``: most
statistical baselines) is made once and saved for every seed; the draw probes of
:func:`choose_draw` run side by side, and the chosen one is the first seed's fit.

With ``train.strategy: ddp`` every process started by ``torchrun`` runs this stage on the same
inputs; each fit is data-parallel, every process ends with the same weights and metrics, and
only global rank 0 writes files and prints. The others wait for it at the end (a barrier), so
the stage ends everywhere once the outputs exist.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from metarec import algorithms
from metarec.config import ModelParams, TrainParams, to_dict
from metarec.data import views
from metarec.data.tasks import EpisodeData, load_episodes
from metarec.errors import ParamsError
from metarec.io import atomic_dir, write_json
from metarec.meta.checkpoint import save_model
from metarec.meta.gradient import MetaAlgorithm
from metarec.models.base import FitContext, Predictor
from metarec.train import distributed
from metarec.train.fit import fit_meta
from metarec.workers import Workers

console = Console(stderr=True)


def fit_order(train: TrainParams) -> list[str]:
    """Baselines then meta-learners, each after what it requires (params order otherwise)."""
    todo = [*train.baselines, *train.algorithms]
    done: list[str] = []
    while todo:
        ready = next(n for n in todo if all(r in done for r in algorithms.get(n).requires))
        todo.remove(ready)
        done.append(ready)
    return done


def run(model_params: ModelParams, train_params: TrainParams, episodes_dir: str | Path,
        out_dir: str | Path, metrics_path: str | Path) -> dict[str, Any]:
    """Fit, checkpoint and report every algorithm; returns the metrics written."""
    names = fit_order(train_params)
    distributed.check(train_params, [algorithms.get(n) for n in names])  # before any work
    data = load_episodes(episodes_dir)
    ablate = _views(train_params, data)
    out_dir = Path(out_dir)
    # Every process computes everything (the same, by construction); rank 0 alone writes.
    writer = distributed.global_rank(train_params) == 0
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:   # all checkpoints appear at once, or none
        tmp = stack.enter_context(atomic_dir(out_dir)) if writer else out_dir
        pool = stack.enter_context(Workers(data, train_params.workers, train_params.threads))
        results, draw, draw_choice = _fit_all(names, pool, model_params, train_params, tmp,
                                              writer, ablate)
    metrics = {"seeds": results, "seconds": round(time.perf_counter() - start, 2),
               "draw": draw, "draw_choice": draw_choice,
               "val_tasks": int(data.select("val")["task_id"].nunique()),
               "train_tasks": int(data.select("train")["task_id"].nunique()),
               "processes": distributed.world_size(train_params),
               "workers": train_params.workers}
    if writer:
        write_json(metrics, metrics_path)
    distributed.barrier()  # the other processes end once rank 0 has written everything
    return metrics


@dataclass(frozen=True)
class FitJob:
    """Algorithms fitted one after another in one process (each after what it ``requires``),
    for the first of ``seeds``, and saved for every one of them: several seeds only when no
    algorithm of the job reads the seed (``seeded``), so that one fit serves them all."""

    seeds: tuple[int, ...]
    names: tuple[str, ...]
    view: str | None = None    # fitted on this view of the episodes (metarec.data.views)


def _views(train: TrainParams, data: EpisodeData) -> tuple[str, ...]:
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
              ablate: tuple[str, ...] = ()) -> list[FitJob]:
    """Every fit as independent jobs: each algorithm grouped with what it requires, a group
    that reads no seed once for all seeds, every other group once per seed; then, for each
    view of ``ablate``, every job that fits one of the meta-learners ``meta`` again on that
    view. The longest go first (second-order meta-training, then the rest of the gradient
    training), so that the workers end together."""
    groups: list[list[str]] = []
    for name in names:                       # fit order: requirements come first
        needs = set(algorithms.get(name).requires)
        joined = [n for g in groups if needs.intersection(g) for n in g]
        groups = [g for g in groups if not needs.intersection(g)]
        groups.append(sorted({*joined, name}, key=names.index))
    jobs = [FitJob(seeds, tuple(g)) for g in groups
            if not any(algorithms.get(n).seeded for n in g)]
    jobs += [FitJob((s,), tuple(g)) for s in seeds for g in groups
             if any(algorithms.get(n).seeded for n in g)]
    jobs += [replace(job, view=view) for view in ablate for job in jobs
             if set(job.names) & set(meta)]

    def cost(job: FitJob) -> int:
        classes = [algorithms.get(n) for n in job.names]
        return (2 if any(getattr(c, "second_order", False) for c in classes)
                else 1 if any(issubclass(c, MetaAlgorithm) for c in classes) else 0)

    return sorted(jobs, key=lambda j: -cost(j))   # stable: seed and params order otherwise


def _fit_all(names: list[str], pool: Workers, model_params: ModelParams,
             train_params: TrainParams, out_dir: Path, writer: bool,
             ablate: tuple[str, ...] = ()
             ) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """Every algorithm for every seed (and every meta-learner on each view of ``ablate``)
    into ``out_dir``; (per-seed records, draw, its choice)."""
    draw, draw_choice, probes = choose_draw(names, pool, model_params, train_params, out_dir,
                                            writer)
    reuse = probes.get(draw)                 # the draw probe's run is this very fit
    jobs = plan_jobs(names, train_params.seeds, train_params.algorithms, ablate)
    prefit = [{reuse.name: reuse} if reuse is not None and reuse.name in job.names
              and job.seeds[0] == train_params.seeds[0] and job.view is None else {}
              for job in jobs]
    done = pool.map(fit_job, [(job, model_params, train_params, out_dir, draw, writer, pre)
                              for job, pre in zip(jobs, prefit, strict=True)])
    records: dict[int, dict[str, Any]] = {}
    for record in done:
        for seed, per_name in record.items():
            records.setdefault(seed, {}).update(per_name)
    first = records[train_params.seeds[0]]        # every seed holds the same fits
    fitted = [*names, *(views.variant(n, v) for v in ablate for n in names
                        if views.variant(n, v) in first)]
    results = {f"seed{seed}": {name: records[seed][name] for name in fitted}
               for seed in train_params.seeds}
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
    meta_train = functools.partial(fit_meta, data=data, train=run_params, log_dir=log_dir,
                                   draw=draw)
    fitted: dict[str, Predictor] = dict(prefit)
    for name in job.names:
        if writer:
            console.print(f"[bold]train[/] seed {', '.join(map(str, job.seeds))} "
                          f"{views.variant(name, job.view)} ...")
        if name not in fitted:
            ctx = FitContext(data=data, model=model, train=run_params, log_dir=log_dir,
                             fitted=fitted, meta_train=meta_train)
            fitted[name] = algorithms.get(name).fit(ctx)
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
    return {s: {views.variant(name, job.view): fitted[name].tuning for name in job.names}
            for s in job.seeds}


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
    probe = next((n for n in names if algorithms.get(n).uses_draws), None)
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


def probe_job(data: EpisodeData, probe: str, model: ModelParams, train: TrainParams,
              out_dir: Path, mode: str, writer: bool) -> Predictor:
    """``probe`` fitted for the first seed on tasks drawn ``mode`` (logs under
    ``<out_dir>/draws/<mode>``). Runs in a worker process or in this one."""
    run_params = replace(train, seed=train.seeds[0])
    if writer:
        console.print(f"[bold]train[/] choosing the task draw: {probe} with {mode} draws")
    ctx = FitContext(data=data, model=model, train=run_params, log_dir=out_dir / "draws",
                     meta_train=functools.partial(fit_meta, data=data, train=run_params,
                                                  log_dir=out_dir / "draws" / mode,
                                                  draw=mode))
    return algorithms.get(probe).fit(ctx)


def _report(name: str, record: dict[str, Any]) -> None:
    if "best_val_loss" in record:
        console.print(f"[bold]train[/] {name}: val loss {record['initial_val_loss']:.4f} -> "
                      f"{record['best_val_loss']:.4f} (step {record['best_step']}, "
                      f"{record['seconds']:.1f} s)")
