"""Train stage: every algorithm in ``train.algorithms`` and ``train.baselines``, once per seed
(wiring only; the fits are planned and run by :mod:`metarec.fitting`).

For each seed in ``train.seeds`` writes ``<out_dir>/seed<S>/<name>.pt`` (the whole folder
swapped in at the end: a failed run leaves the previous models, never a mix) (read by
:func:`metarec.checkpoint.load_model`), Lightning CSV logs under
``<out_dir>/seed<S>/logs/<name>/`` and ``metrics_path`` with, per seed and algorithm, what its
fit recorded (validation losses before and after meta-training, best step, seconds; or the
validation grid of a baseline's tuning). The fits run over ``train.workers`` processes of
``train.threads`` torch threads each: the outputs are the same bytes for any number of
workers.

With ``train.strategy: ddp`` every process started by ``torchrun`` runs this stage on the same
inputs; each fit is data-parallel, every process ends with the same weights and metrics, and
only global rank 0 writes files and prints. The others wait for it at the end (a barrier), so
the stage ends everywhere once the outputs exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metarec.config import ModelParams, TrainParams
from metarec.fitting import fit_models
from metarec.io import write_json
from metarec.train import distributed


def run(model_params: ModelParams, train_params: TrainParams, episodes_dir: str | Path,
        out_dir: str | Path, metrics_path: str | Path) -> dict[str, Any]:
    """Fit, checkpoint and report every algorithm; returns the metrics written."""
    metrics = fit_models(model_params, train_params, episodes_dir, out_dir)
    if distributed.global_rank(train_params) == 0:
        write_json(metrics, metrics_path)
    distributed.barrier()  # the other processes end once rank 0 has written everything
    return metrics
