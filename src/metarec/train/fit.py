"""Fit one algorithm on an :class:`EpisodeData` with Lightning; tune the fine-tuning baseline.

Each fit seeds everything first, so the same params and data give the same weights. With
``train.strategy: ddp`` the fit runs data-parallel over the processes ``torchrun`` started
(:mod:`metarec.train.distributed`); every process returns the same result.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from metarec.config import ModelParams, TrainParams
from metarec.data.tasks import EpisodeData, TaskBatch
from metarec.meta.algorithms import MetaAlgorithm, build_algorithm
from metarec.meta.checkpoint import build_model, model_kwargs
from metarec.meta.features import FeatureStore
from metarec.meta.predictor import query_loss_sum
from metarec.models.baselines import fit_als, training_ratings
from metarec.train import distributed
from metarec.train.data import EpisodeDataModule, take
from metarec.train.module import MetaLearner

log = logging.getLogger(__name__)
# Lightning notices that say nothing about our run (tasks are few per epoch by design).
_QUIET = (r".*isinstance\(treespec, LeafSpec\).*", r".*number of training batches.*",
          r".*does not have many workers.*")


@dataclass
class FitResult:
    name: str
    algorithm: MetaAlgorithm
    model_kwargs: dict[str, Any]
    initial_val_loss: float
    best_val_loss: float
    best_step: int
    steps: int
    seconds: float
    history: list[tuple[int, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        return {"initial_val_loss": self.initial_val_loss, "best_val_loss": self.best_val_loss,
                "best_step": self.best_step, "steps": self.steps,
                "seconds": round(self.seconds, 2), **self.extra}


def algorithm_config(name: str, model: ModelParams, train: TrainParams) -> dict[str, Any]:
    """Constructor arguments of algorithm ``name`` from the params."""
    cfg: dict[str, Any] = {"adapt": model.adapt, "inner_lr": train.inner_lr,
                           "inner_steps": train.inner_steps}
    if name == "reptile":
        cfg.update(epsilon=train.reptile_epsilon, mode=train.reptile_mode)
    if name == "ridge":
        cfg.update(lam=train.ridge_lambda, query_loss=train.ridge_query_loss,
                   train_item_ids=train.ridge_train_item_ids,
                   item_features=train.ridge_item_features)
    return cfg


def init_from_mf(algorithm: MetaAlgorithm, data: EpisodeData, train: TrainParams) -> None:
    """Start the ridge learner at biased MF: ALS item factors and biases on meta-train ratings.

    The item-id embedding takes the ALS factors and ``item_proj`` reads only that block (the
    feature embeddings start with zero weight and are learned by the outer loop); the global
    bias is the training mean, the user prior is zero and ``lam`` stays at its initial value:
    at step 0 the learner predicts what :class:`~metarec.models.baselines.BiasedMF` with that
    ``lam`` does, so meta-training starts from the baseline rather than from noise.
    """
    net = algorithm.model
    if net.item_id is None:
        raise ValueError("ridge_mf_init needs model.item_id_embedding: true")
    users, items, ratings = training_ratings(data)
    mu = float(ratings.mean())
    d = net.item_id.embedding_dim
    q, b_i = fit_als(users, items, ratings, len(data.users), len(data.items), mu, d,
                     train.ridge_mf_reg, train.ridge_mf_iters, train.seed)   # (N, d), (N,)
    codes = data.items.id_code.long()                                        # (N,)
    dtype = net.global_bias.dtype
    with torch.no_grad():
        net.item_id.weight.zero_()
        net.item_id.weight.index_copy_(0, codes, q.to(dtype))
        net.item_bias.weight.zero_()
        net.item_bias.weight[:, 0].index_copy_(0, codes, b_i.to(dtype))
        net.item_proj.weight.zero_()
        net.item_proj.weight[:, -d:] = torch.eye(d, dtype=dtype)  # the id block comes last
        net.item_proj.bias.zero_()
        net.user_proj.weight.zero_()
        net.user_proj.bias.zero_()
        net.user_bias.zero_()
        net.global_bias.fill_(mu)


def validation_loss(algorithm: MetaAlgorithm, store: FeatureStore, tasks: TaskBatch,
                    chunk: int = 512) -> float:
    """Query MSE per rating over all ``tasks`` after adaptation (same seeds as validation)."""
    sse, n = 0.0, 0
    for b, start in enumerate(range(0, len(tasks), chunk)):
        idx = torch.arange(start, min(start + chunk, len(tasks)))
        gen = torch.Generator(device=store.device).manual_seed(b)
        s, c = query_loss_sum(algorithm, store, take(tasks, idx).to(store.device), gen)
        sse, n = sse + s, n + c
    return sse / max(n, 1)


def _loggers(log_dir: Path, name: str) -> list[Any]:
    """CSV logs, and DVCLive's (metrics and plots under ``<log_dir>/<name>/dvclive``) without
    creating DVC experiments or touching dvc.yaml: the train stage already is a DVC stage."""
    from dvclive.lightning import DVCLiveLogger

    return [CSVLogger(str(log_dir), name=name, version=0),
            DVCLiveLogger(dir=str(log_dir / name / "dvclive"), save_dvc_exp=False,
                          dvcyaml=False, report=None)]


def fit_algorithm(name: str, data: EpisodeData, model: ModelParams, train: TrainParams,
                  log_dir: str | Path) -> FitResult:
    """Meta-train ``name`` (or pretrain) for ``train.max_steps`` outer steps; keep the best.

    Under DDP only global rank 0 writes the CSV logs in ``log_dir``.
    """
    distributed.check(train, [name])
    for logger_name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    L.seed_everything(train.seed, workers=True, verbose=False)
    kwargs = model_kwargs(data, model)
    algorithm = build_algorithm(name, build_model(kwargs), algorithm_config(name, model, train))
    if name == "ridge" and train.ridge_mf_init:
        init_from_mf(algorithm, data, train)
    store = FeatureStore(data.users, data.items)
    dm = EpisodeDataModule(data, train.meta_batch, seed=train.seed)
    dm.setup("fit")
    assert dm.val_tasks is not None
    initial = validation_loss(algorithm, store, dm.val_tasks)
    outer_lr = train.ridge_outer_lr if name == "ridge" else train.outer_lr
    module = MetaLearner(algorithm, store, train.outer_optimizer, outer_lr,
                         grad_clip=train.grad_clip, patience=train.patience)
    logger = (_loggers(Path(log_dir), name) if distributed.global_rank(train) == 0 else False)
    trainer = L.Trainer(
        max_steps=train.max_steps, max_epochs=-1, accelerator=train.accelerator,
        strategy=distributed.strategy(train, name), devices=train.devices,
        num_nodes=train.num_nodes, use_distributed_sampler=False,  # the data module shards
        logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
        deterministic=True, num_sanity_val_steps=0, val_check_interval=train.val_every,
        check_val_every_n_epoch=None, log_every_n_steps=min(10, train.val_every))
    start = time.perf_counter()
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - start
    if module.best_state is not None:  # the best validated weights, not the last ones
        algorithm.load_state_dict(module.best_state)
    best = module.best_val if module.best_state is not None else initial
    best_step = module.best_step
    algorithm.cpu()
    store.to("cpu")
    return FitResult(name=name, algorithm=algorithm, model_kwargs=kwargs,
                     initial_val_loss=initial, best_val_loss=best, best_step=best_step,
                     steps=int(trainer.global_step), seconds=seconds,
                     history=module.val_history)


def tune_finetune(pretrained: FitResult, data: EpisodeData, model: ModelParams,
                  train: TrainParams) -> FitResult:
    """Fine-tuning baseline: the pretrained network + per-task SGD on the support set.

    Steps and learning rate are the pair of ``train.finetune_steps`` x ``train.finetune_lrs``
    with the lowest validation query loss (a grid of a few cheap first-order evaluations).
    """
    start = time.perf_counter()
    store = FeatureStore(data.users, data.items)
    dm = EpisodeDataModule(data, train.meta_batch, seed=train.seed)
    dm.setup("validate")
    assert dm.val_tasks is not None
    grid: dict[str, float] = {}
    best: tuple[float, int, float] | None = None
    for steps in train.finetune_steps:
        for lr in train.finetune_lrs:
            cfg = {"adapt": model.adapt, "inner_lr": lr, "inner_steps": steps}
            algo = build_algorithm("finetune", pretrained.algorithm.model, cfg)
            loss = validation_loss(algo, store, dm.val_tasks)
            grid[f"steps={steps},lr={lr:g}"] = loss
            if best is None or loss < best[0]:
                best = (loss, steps, lr)
    assert best is not None
    loss, steps, lr = best
    algo = build_algorithm("finetune", pretrained.algorithm.model,
                           {"adapt": model.adapt, "inner_lr": lr, "inner_steps": steps})
    if distributed.global_rank(train) == 0:  # every DDP process chose the same
        log.info("finetune: chose %d steps, lr %g (val loss %.4f)", steps, lr, loss)
    return FitResult(name="finetune", algorithm=algo, model_kwargs=pretrained.model_kwargs,
                     initial_val_loss=pretrained.best_val_loss, best_val_loss=loss,
                     best_step=pretrained.best_step, steps=pretrained.steps,
                     seconds=time.perf_counter() - start,
                     extra={"chosen_steps": steps, "chosen_lr": lr, "grid": grid})
