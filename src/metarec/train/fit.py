"""Meta-train one learner on an :class:`EpisodeData` with Lightning: the outer loop driver.

:func:`fit_meta` is what a registered episodic algorithm's ``fit`` calls
(:mod:`metarec.train.entries`): it seeds everything, builds the learner (so the same params
and data give the same weights), validates before the first step, runs the Lightning outer
loop and keeps the best validated weights. With ``train.strategy: ddp`` the fit runs
data-parallel over the processes ``torchrun`` started (:mod:`metarec.train.distributed`);
every process returns the same result.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from metarec.config import TrainParams
from metarec.data.tasks import EpisodeData
from metarec.meta.features import feature_store
from metarec.meta.learner import Learner
from metarec.meta.predictor import validation_loss
from metarec.progress import progress
from metarec.train import distributed
from metarec.train.data import EpisodeDataModule
from metarec.train.module import MetaLearner, TrainingDiverged

log = logging.getLogger(__name__)
# Lightning notices that say nothing about our run (tasks are few per epoch by design).
_QUIET = (r".*isinstance\(treespec, LeafSpec\).*", r".*number of training batches.*",
          r".*does not have many workers.*")


@dataclass
class FitResult:
    name: str
    learner: Learner
    initial_val_loss: float
    best_val_loss: float
    best_step: int
    steps: int
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)
    stopped_by: str | None = None      # patience, time budget, diverged; None: max_steps

    def metrics(self) -> dict[str, Any]:
        return {"initial_val_loss": self.initial_val_loss, "best_val_loss": self.best_val_loss,
                "best_step": self.best_step, "steps": self.steps,
                "stopped_by": self.stopped_by or "max_steps",
                "seconds": round(self.seconds, 2)}


def _loggers(log_dir: Path, name: str) -> list[Any]:
    """CSV logs, and DVCLive's (metrics and plots under ``<log_dir>/<name>/dvclive``) without
    creating DVC experiments or touching dvc.yaml: the train stage already is a DVC stage."""
    from dvclive.lightning import DVCLiveLogger

    return [CSVLogger(str(log_dir), name=name, version=0),
            DVCLiveLogger(dir=str(log_dir / name / "dvclive"), save_dvc_exp=False,
                          dvcyaml=False, report=None)]


class _Progress(L.Callback):
    """Advances the progress bar each outer step with the latest validation loss."""

    def __init__(self, bar: Any, module: MetaLearner) -> None:
        self.bar, self.module = bar, module

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        history = self.module.val_history
        facts = {"val": history[-1][1], "best": self.module.best_val} if history else {}
        self.bar.advance(1, **facts)


def fit_meta(entry: Any, build: Callable[[], Learner], outer_lr: float, *,
             data: EpisodeData, train: TrainParams, log_dir: str | Path,
             draw: str | None = None) -> FitResult:
    """Meta-train ``build()`` for ``train.max_steps`` outer steps; keep the best validated
    weights. ``entry``: the registered algorithm (its name, capabilities, DDP refusal).
    ``draw``: meta-train tasks drawn afresh every epoch that way (None: the fixed draws of
    the episodes). Under DDP only global rank 0 writes the CSV logs in ``log_dir``."""
    name = entry.name
    distributed.check(train, [entry])
    for logger_name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    L.seed_everything(train.seed, workers=True, verbose=False)
    learner = build()
    store = feature_store(data, learner.model)
    learner.use_catalogue(store)
    dm = EpisodeDataModule(data, train.meta_batch, seed=train.seed, draw=draw)
    dm.setup("fit")
    assert dm.val_tasks is not None
    initial = validation_loss(learner, store, dm.val_tasks, k=train.val_ndcg_k)
    if not math.isfinite(initial):
        raise TrainingDiverged(f"{name} (seed {train.seed}): the validation loss before "
                               f"training is {initial}; check the ratings' scale")
    module = MetaLearner(learner, store, train.outer_optimizer, outer_lr,
                         grad_clip=train.grad_clip, patience=train.patience,
                         initial_val=initial, val_k=train.val_ndcg_k, seed=train.seed,
                         item_id_dropout=train.item_id_dropout,
                         cross_trust_lr=train.cross_trust_lr, name=name,
                         max_seconds=train.max_seconds)
    logger = (_loggers(Path(log_dir), name) if distributed.global_rank(train) == 0 else False)
    trainer = L.Trainer(
        max_steps=train.max_steps, max_epochs=-1, accelerator=train.accelerator,
        strategy=distributed.strategy(train, entry), devices=train.devices,
        num_nodes=train.num_nodes, use_distributed_sampler=False,  # the data module shards
        logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
        deterministic=True, num_sanity_val_steps=0, val_check_interval=train.val_every,
        reload_dataloaders_every_n_epochs=1 if draw is not None else 0,
        check_val_every_n_epoch=None, log_every_n_steps=min(10, train.val_every))
    start = time.perf_counter()
    title = f"train {name} seed {train.seed}"
    with warnings.catch_warnings(), progress(title, train.max_steps) as bar:
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        if distributed.global_rank(train) == 0:
            trainer.callbacks.append(_Progress(bar, module))
        trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - start
    if module.best_state is not None:  # the best validated weights (the start included)
        learner.load_state_dict(module.best_state)
    best = module.best_val
    learner.cpu()
    store.to("cpu")
    return FitResult(name=name, learner=learner, initial_val_loss=initial,
                     best_val_loss=best, best_step=module.best_step,
                     steps=int(trainer.global_step), seconds=seconds,
                     history=module.val_history, stopped_by=module.stopped_by)
