"""Data-parallel meta-training (Lightning DDP) over processes started by ``torchrun``.

With ``train.strategy: ddp`` every process runs the whole train stage on the same data and
params; Lightning wraps the :class:`~metarec.train.module.MetaLearner` in
``DistributedDataParallel``, so the gradients of one outer step are averaged across processes
during ``manual_backward``. Each process meta-trains on ``meta_batch / world_size`` different
tasks per step (a seeded ``DistributedSampler``), so the global meta-batch, and hence the
result, does not depend on how many processes share it. Only global rank 0 writes files.

Processes must be created outside Lightning (``torchrun``, or a launcher that sets
``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); otherwise
Lightning would re-run the command line once per extra process, which we refuse.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy

from metarec.config import TrainParams
from metarec.errors import ParamsError


def world_size(train: TrainParams) -> int:
    """Processes that share one outer step: ``devices x num_nodes`` under DDP, else 1."""
    return train.devices * train.num_nodes if train.strategy == "ddp" else 1


def check(train: TrainParams, classes: Iterable[Any]) -> None:
    """Raise :class:`ParamsError` unless ``train`` can meta-train every algorithm class in
    ``classes`` (each says why not: ``ddp_refusal``)."""
    if train.devices < 1 or train.num_nodes < 1:
        raise ParamsError(f"train.devices ({train.devices}) and train.num_nodes "
                          f"({train.num_nodes}) must be at least 1")
    if train.strategy != "ddp":
        if train.devices != 1 or train.num_nodes != 1:
            raise ParamsError("train.devices and train.num_nodes above 1 need "
                              "train.strategy: ddp")
        return
    for cls in classes:     # what DDP cannot do at all first, then how to run it
        reason = cls.ddp_refusal(train)
        if reason is not None:
            raise ParamsError(f"train.strategy ddp cannot train {cls.name!r}: {reason} "
                              "(or remove it from train.algorithms)")
    if train.workers != 1:
        raise ParamsError(f"train.strategy ddp trains in the processes torchrun started: set "
                          f"train.workers to 1 (now {train.workers})")
    n = world_size(train)
    if train.meta_batch % n:
        raise ParamsError(f"train.meta_batch ({train.meta_batch}) must be a multiple of the "
                          f"number of processes, devices x num_nodes = {n}")
    if dist.is_available() and dist.is_initialized():  # a previous fit joined the group
        if dist.get_world_size() != n:
            raise ParamsError(f"the process group has {dist.get_world_size()} processes but "
                              f"train.devices x train.num_nodes = {n}")
        return
    launched = os.environ.get("WORLD_SIZE")  # (Lightning deletes it when a fit ends)
    if launched is None or "LOCAL_RANK" not in os.environ:
        if n > 1:
            raise ParamsError(
                f"train.strategy ddp with {n} processes: start them with torchrun, e.g. "
                f"`torchrun --nnodes {train.num_nodes} --nproc-per-node {train.devices} "
                "--no-python metarec train` (WORLD_SIZE and LOCAL_RANK are not set)")
    elif int(launched) != n:
        raise ParamsError(f"the launcher started WORLD_SIZE={launched} processes but "
                          f"train.devices x train.num_nodes = {n}")


def strategy(train: TrainParams, cls: Any) -> str | DDPStrategy:
    """The Lightning strategy for algorithm class ``cls``: gloo on CPUs, NCCL on GPUs.

    An algorithm whose loss skips some network parameters (``capabilities.unused_parameters``,
    e.g. ridge's closed-form head bypasses the output layer) makes DDP look for them every
    step."""
    if train.strategy != "ddp":
        return "auto"
    gpu = train.accelerator in ("gpu", "cuda") or (
        train.accelerator == "auto" and torch.cuda.is_available())
    return DDPStrategy(process_group_backend="nccl" if gpu else "gloo",
                       find_unused_parameters=cls.capabilities.unused_parameters,
                       # buffers are not trained; and validation may run a different number
                       # of batches per process, where a per-forward broadcast would hang
                       forward_sync_buffers=False)


def global_rank(train: TrainParams) -> int:
    """This process's rank (0 without DDP), known before Lightning joins the process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    if train.strategy != "ddp":
        return 0
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    node = int(env.get("NODE_RANK", env.get("GROUP_RANK", "0")))
    return node * train.devices + int(env.get("LOCAL_RANK", "0"))


def barrier() -> None:
    """Wait for every process (no-op outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
