"""Train stage: every algorithm in ``train.algorithms`` and ``train.baselines``, once per seed.

For each seed in ``train.seeds`` writes ``<out_dir>/seed<S>/<name>.pt`` (the whole folder
swapped in at the end: a failed run leaves the previous models, never a mix) (read by
:func:`metarec.meta.checkpoint.load_model`), Lightning CSV logs under
``<out_dir>/seed<S>/logs/<name>/`` and ``metrics_path`` with, per seed and algorithm, what its
fit recorded (validation losses before and after meta-training, best step, seconds; or the
validation grid of a baseline's tuning). Algorithms come from the registry: each is fitted by
its own ``fit``, after the algorithms it ``requires``.

With ``train.strategy: ddp`` every process started by ``torchrun`` runs this stage on the same
inputs; each fit is data-parallel, every process ends with the same weights and metrics, and
only global rank 0 writes files and prints. The others wait for it at the end (a barrier), so
the stage ends everywhere once the outputs exist.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from metarec import algorithms
from metarec.config import ModelParams, TrainParams, to_dict
from metarec.data.tasks import load_episodes
from metarec.io import atomic_dir, write_json
from metarec.meta.checkpoint import save_model
from metarec.models.base import FitContext
from metarec.train import distributed
from metarec.train.fit import fit_meta

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
    out_dir = Path(out_dir)
    # Every process computes everything (the same, by construction); rank 0 alone writes.
    writer = distributed.global_rank(train_params) == 0
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:   # all checkpoints appear at once, or none
        tmp = stack.enter_context(atomic_dir(out_dir)) if writer else out_dir
        results, draw, draw_choice = _fit_all(names, data, model_params, train_params, tmp,
                                              writer)
    metrics = {"seeds": results, "seconds": round(time.perf_counter() - start, 2),
               "draw": draw, "draw_choice": draw_choice,
               "val_tasks": int(data.select("val")["task_id"].nunique()),
               "train_tasks": int(data.select("train")["task_id"].nunique()),
               "processes": distributed.world_size(train_params)}
    if writer:
        write_json(metrics, metrics_path)
    distributed.barrier()  # the other processes end once rank 0 has written everything
    return metrics


def _fit_all(names: list[str], data: Any, model_params: ModelParams, train_params: TrainParams,
             out_dir: Path, writer: bool) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """Every algorithm for every seed into ``out_dir``; (per-seed records, draw, its choice)."""
    results: dict[str, Any] = {}
    draw, draw_choice, probes = choose_draw(names, data, model_params, train_params, out_dir,
                                            writer)
    for seed in train_params.seeds:
        run_params = replace(train_params, seed=seed)
        params = {"model": to_dict(model_params), "train": to_dict(run_params)}
        folder = out_dir / f"seed{seed}"
        meta_train = functools.partial(fit_meta, data=data, train=run_params,
                                       log_dir=folder / "logs", draw=draw)
        fitted: dict[str, Any] = {}
        per_seed: dict[str, Any] = {}
        for name in names:
            if writer:
                console.print(f"[bold]train[/] seed {seed} {name} ...")
            ctx = FitContext(data=data, model=model_params, train=run_params,
                             log_dir=folder / "logs", fitted=fitted, meta_train=meta_train)
            reuse = probes.get(draw) if seed == train_params.seeds[0] else None
            if reuse is not None and reuse.name == name:
                predictor = reuse            # the draw probe's run is this very fit
            else:
                predictor = algorithms.get(name).fit(ctx)
            fitted[name] = predictor
            per_seed[name] = predictor.tuning
            if writer:
                save_model(folder / f"{name}.pt", predictor, params, data.vocab)
                _report(name, predictor.tuning)
        results[f"seed{seed}"] = per_seed
    return results, draw, draw_choice


def choose_draw(names: list[str], data: Any, model: ModelParams, train: TrainParams,
                out_dir: Path, writer: bool) -> tuple[str | None, dict[str, Any], dict]:
    """How meta-train tasks are drawn: None (the episodes' fixed draws, ``resample: false``),
    the one mode of ``train.draws``, or the mode whose probe fit (the first algorithm that
    draws tasks, first seed) has the lowest validation loss. Returns (mode, record, probe
    predictors by mode)."""
    if not train.resample:
        return None, {}, {}
    if len(train.draws) == 1:
        return train.draws[0], {}, {}
    probe = next((n for n in names if algorithms.get(n).uses_draws), None)
    if probe is None:
        return train.draws[0], {}, {}
    run_params = replace(train, seed=train.seeds[0])
    fits, losses = {}, {}
    for mode in train.draws:
        if writer:
            console.print(f"[bold]train[/] choosing the task draw: {probe} with {mode} draws")
        ctx = FitContext(data=data, model=model, train=run_params, log_dir=out_dir / "draws",
                         meta_train=functools.partial(fit_meta, data=data, train=run_params,
                                                      log_dir=out_dir / "draws" / mode,
                                                      draw=mode))
        fits[mode] = algorithms.get(probe).fit(ctx)
        losses[mode] = float(fits[mode].tuning["best_val_loss"])
    chosen = min(losses, key=lambda m: (losses[m], train.draws.index(m)))
    record = {"probe": probe, "val_loss": losses, "chosen": chosen}
    if writer:
        console.print(f"[bold]train[/] task draw: {chosen} ({record['val_loss']})")
    return chosen, record, fits


def _report(name: str, record: dict[str, Any]) -> None:
    if "best_val_loss" in record:
        console.print(f"[bold]train[/] {name}: val loss {record['initial_val_loss']:.4f} -> "
                      f"{record['best_val_loss']:.4f} (step {record['best_step']}, "
                      f"{record['seconds']:.1f} s)")
