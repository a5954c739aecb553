"""Train stage: every meta-learner in ``train.algorithms`` plus the pretrain/finetune baselines.

For each seed in ``train.seeds`` writes ``<out_dir>/seed<S>/<name>.pt`` (read by
:func:`metarec.meta.checkpoint.load_predictor`), the fitted statistical baselines in
``<out_dir>/seed<S>/baselines.pt``, Lightning CSV logs under ``<out_dir>/seed<S>/logs/<name>/``
and ``metrics_path`` with, per seed and algorithm, the validation query MSE before and after
training, the best step, steps and seconds, and each baseline's validation tuning.

With ``train.strategy: ddp`` every process started by ``torchrun`` runs this stage on the same
inputs; each fit is data-parallel, every process ends with the same weights and metrics, and
only global rank 0 writes files and prints. The others wait for it at the end (a barrier), so
the stage ends everywhere once the outputs exist.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from metarec.config import ModelParams, TrainParams, to_dict
from metarec.data.tasks import load_episodes
from metarec.errors import ParamsError
from metarec.io import write_json
from metarec.meta.algorithms import ALGORITHMS
from metarec.meta.checkpoint import save_checkpoint
from metarec.models.baselines import fit_baselines, save_baselines
from metarec.train import distributed
from metarec.train.fit import FitResult, fit_algorithm, tune_finetune

META_LEARNERS = tuple(a for a in ALGORITHMS if a not in ("pretrain", "finetune"))
console = Console(stderr=True)


def run(model_params: ModelParams, train_params: TrainParams, episodes_dir: str | Path,
        out_dir: str | Path, metrics_path: str | Path) -> dict[str, Any]:
    """Train, checkpoint and report every algorithm; returns the metrics written."""
    unknown = [a for a in train_params.algorithms if a not in META_LEARNERS]
    if unknown:
        raise ParamsError(f"train.algorithms: unknown {', '.join(unknown)} "
                          f"(known: {', '.join(META_LEARNERS)}; pretrain/finetune always run)")
    names = ["pretrain", *train_params.algorithms]
    distributed.check(train_params, names)  # before any work: DDP refuses second order
    data = load_episodes(episodes_dir)
    out_dir = Path(out_dir)
    results: dict[str, Any] = {}
    # Every process computes everything (the same, by construction); rank 0 alone writes.
    writer = distributed.global_rank(train_params) == 0
    say = console.print if writer else _silent
    start = time.perf_counter()
    for seed in train_params.seeds:
        run_params = replace(train_params, seed=seed)
        params = {"model": to_dict(model_params), "train": to_dict(run_params)}
        folder = out_dir / f"seed{seed}"
        per_seed: dict[str, Any] = {}
        baselines = fit_baselines(data, seed)
        if writer:
            save_baselines(baselines, folder / "baselines.pt")
        per_seed["baselines"] = {n: b.tuning for n, b in baselines.items()}
        for name in names:
            say(f"[bold]train[/] seed {seed} {name}: {run_params.max_steps} outer steps ...")
            fit = fit_algorithm(name, data, model_params, run_params, folder / "logs")
            _save(fit, folder, params, data.vocab, per_seed, writer)
            if name == "pretrain":
                say("[bold]train[/] finetune: choosing steps and lr on validation")
                _save(tune_finetune(fit, data, model_params, run_params), folder, params,
                      data.vocab, per_seed, writer)
        results[f"seed{seed}"] = per_seed
    metrics = {"seeds": results, "seconds": round(time.perf_counter() - start, 2),
               "val_tasks": int(data.select("val")["task_id"].nunique()),
               "train_tasks": int(data.select("train")["task_id"].nunique()),
               "processes": distributed.world_size(train_params)}
    if writer:
        write_json(metrics, metrics_path)
    distributed.barrier()  # the other processes end once rank 0 has written everything
    return metrics


def _silent(*args: Any, **kwargs: Any) -> None:
    """Non-zero ranks print nothing (rank 0 speaks for every process)."""


def _save(fit: FitResult, out_dir: Path, params: dict[str, Any], vocab: dict[str, Any],
          results: dict[str, Any], writer: bool = True) -> None:
    results[fit.name] = fit.metrics()
    if not writer:
        return
    save_checkpoint(out_dir / f"{fit.name}.pt", fit.algorithm, fit.model_kwargs, params, vocab,
                    extra=fit.metrics())
    console.print(f"[bold]train[/] {fit.name}: val loss {fit.initial_val_loss:.4f} -> "
                  f"{fit.best_val_loss:.4f} (step {fit.best_step}, {fit.seconds:.1f} s)")
