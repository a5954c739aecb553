"""The train stage's fits as jobs: spread over worker processes, the outputs are the same bytes;
a fit that reads no seed is made once for every seed; the longest jobs go first."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import small_params

from metarec import algorithms, fitting
from metarec.checkpoint import read_checkpoint
from metarec.config import TrainParams
from metarec.data.tasks import load_episodes
from metarec.errors import ParamsError, WorkerLost, permanent
from metarec.models.base import FitContext
from metarec.stages import episodes, ingest, train, validate
from metarec.workers import Workers


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("workers")
    p = small_params(users=200, items=60, interactions=5_000)
    ingest.run(p.ingest, root / "canonical")
    validate.run(p.validate, root / "canonical", root / "validated", root / "quarantine",
                 root / "report")
    episodes.run(p.episodes, root / "validated", root / "episodes", root / "data.json",
                 root / "report/summary.json")
    return {"root": root, "params": p}


def _without_seconds(obj: Any) -> Any:
    """A fit's record without its wall-clock seconds (the one value that may differ)."""
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items()
                if k not in ("seconds", "fit_seconds")}
    if isinstance(obj, list):
        return [_without_seconds(v) for v in obj]
    return obj


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)


@pytest.mark.slow
def test_two_workers_write_the_same_bytes_as_one_process(project: dict[str, Any]) -> None:
    """Every checkpoint (weights, tuning, params), every training log and train.json equal
    between one process and two workers (draw probes, a requires chain, seed-free and seeded
    fits); only the seconds differ."""
    root, p = project["root"], project["params"]
    tp = replace(p.train, algorithms=("maml", "reptile", "ridge"), threads=1,
                 baselines=("item_mean", "item_user_bias", "biased_mf", "ease", "pretrain",
                            "finetune"))
    runs = {w: train.run(p.model, replace(tp, workers=w), root / "episodes",
                         root / f"models{w}", root / f"train{w}.json") for w in (1, 2)}
    one, two = root / "models1", root / "models2"
    files = sorted(f.relative_to(one) for f in one.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(two) for f in two.rglob("*") if f.is_file())
    assert any(f.suffix == ".csv" for f in files) and (one / "probes").is_dir()
    for f in files:
        if f.suffix == ".pt":
            a, b = read_checkpoint(one / f), read_checkpoint(two / f)
            assert _equal(_without_seconds(a["state"]), _without_seconds(b["state"])), f
            assert a["params"] == b["params"] and "workers" not in a["params"]["train"]
        else:
            assert (one / f).read_bytes() == (two / f).read_bytes(), f
    metrics = [json.loads((root / f"train{w}.json").read_text()) for w in (1, 2)]
    assert [m.pop("workers") for m in metrics] == [1, 2]
    assert _without_seconds(metrics[0]) == _without_seconds(metrics[1])
    # the first meta-learner probes the draws, and its probe at train.inner_lr is reused by
    # the learning-rate search (one fit less)
    choice = runs[2]["draw_choice"]
    assert choice["probe"] == "maml" and choice["inner_lr"]["probe"] == "maml"
    probes = sorted(f.name for f in (one / "probes").iterdir())
    assert len(probes) == len(tp.draws) + len(tp.search.inner_lr) - 1, probes


def test_a_fit_that_reads_no_seed_is_the_same_for_every_seed(project: dict[str, Any]) -> None:
    """What lets the stage fit ``seeded = False`` algorithms once: fitted for two seeds, they
    are equal; a seeded one (biased_mf, its ALS start) is not."""
    data = load_episodes(project["root"] / "episodes")
    train_params = project["params"].train
    free = [n for n in algorithms.names() if not algorithms.get(n).capabilities.seeded]
    assert {"ease", "itemknn", "most_popular", "item_mean"} <= set(free)

    def fit(name: str, seed: int) -> dict[str, Any]:
        fitted: dict[str, Any] = {}
        for n in [*algorithms.get(name).requires, name]:
            ctx = FitContext(data=data, model=project["params"].model,
                             train=replace(train_params, seed=seed), log_dir=Path("."),
                             fitted=fitted)
            fitted[n] = algorithms.get(n).fit(ctx)
        return fitted[name].state()

    for name in free:
        assert _equal(fit(name, 0), fit(name, 7)), name
    assert not _equal(fit("biased_mf", 0), fit("biased_mf", 7))


def test_jobs_keep_requirements_together_and_put_the_longest_first() -> None:
    names = algorithms.fit_order(["global_mean", "item_mean", "item_user_bias", "biased_mf",
                                  "pretrain", "finetune", "fomaml", "maml", "ridge"])
    jobs = fitting.plan_jobs(names, (0, 1))
    assert [(j.seeds, j.names) for j in jobs] == [
        ((0,), ("maml",)), ((1,), ("maml",)),                       # second order first
        ((0,), ("pretrain", "finetune")), ((0,), ("fomaml",)), ((0,), ("ridge",)),
        ((1,), ("pretrain", "finetune")), ((1,), ("fomaml",)), ((1,), ("ridge",)),
        ((0, 1), ("global_mean",)), ((0, 1), ("item_mean", "item_user_bias")),
        ((0,), ("biased_mf",)), ((1,), ("biased_mf",))]
    # every fit of every seed exactly once
    fits = sorted((s, n) for j in jobs for n in j.names for s in j.seeds)
    assert fits == sorted((s, n) for s in (0, 1) for n in names)


def test_on_a_large_catalogue_the_dense_item_fits_go_first() -> None:
    """EASE's grid (a dense items x items inverse per penalty) is the longest fit at 10^4
    items: past the size rule it leads, before the meta-learners; below it, it stays with the
    cheap baselines."""
    names = algorithms.fit_order(["global_mean", "ease", "maml", "fomaml"])
    large = fitting.plan_jobs(names, (0,), large=True)
    assert [j.names for j in large] == [("ease",), ("maml",), ("fomaml",), ("global_mean",)]
    small = fitting.plan_jobs(names, (0,))
    assert [j.names for j in small] == [("maml",), ("fomaml",), ("global_mean",), ("ease",)]


def _matmul(shared: torch.Tensor, power: int) -> tuple[torch.Tensor, int]:
    return (shared @ shared.T) ** power, torch.get_num_threads()


def test_workers_return_results_in_job_order_with_their_threads() -> None:
    x = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
    jobs = [(p,) for p in (1, 2, 3)]
    with Workers(x, 1, 1) as pool:
        here = pool.map(_matmul, jobs)
    with Workers(x, 2, 1) as pool:
        there = pool.map(_matmul, jobs)
    assert all(torch.equal(a, b) and ta == tb == 1
               for (a, ta), (b, tb) in zip(here, there, strict=True))
    with pytest.raises(ValueError, match="must be >= 1"):
        Workers(x, 0, 1)


def _many(shared: None, start: int) -> list[torch.Tensor]:
    return [torch.full((3,), float(start + j)) for j in range(400)]


def test_workers_return_more_tensors_than_the_process_may_open_files() -> None:
    """An evaluation returns thousands of small result tensors. The pool's own pickler
    would send each as an open file descriptor; with room for 256 more descriptors than
    this process holds, 2 x 400 tensors broke the pool ("received 0 items of ancdata")
    before results became bytes."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(held + 256, hard), hard))
    try:
        with Workers(None, 2, 1) as pool:
            out = pool.map(_many, [(0,), (1000,)])
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [len(o) for o in out] == [400, 400]
    assert out[1][399].tolist() == [1399.0] * 3 and out[0][0].tolist() == [0.0] * 3


def _slow_or_failing(shared: None, seconds: float) -> float:
    if seconds < 0:
        raise ArithmeticError("planted: this fit diverged")
    time.sleep(seconds)
    return seconds


def test_a_failing_job_ends_the_map_at_once_and_the_pool_runs_again() -> None:
    """A fit that fails (a diverged meta-learner) ends the stage when it fails, not after the
    other worker's long job; the jobs after it never start and the next map works."""
    with Workers(None, 2, 1) as pool:
        start = time.perf_counter()
        with pytest.raises(ArithmeticError, match="planted"):
            pool.map(_slow_or_failing, [(60.0,), (-1.0,), (60.0,), (60.0,)])
        assert time.perf_counter() - start < 30
        assert pool.map(_slow_or_failing, [(0.0,), (0.01,)]) == [0.0, 0.01]


def _killed(shared: None, die: bool) -> int:
    if die:                      # what the kernel's out-of-memory killer does to a worker
        os.kill(os.getpid(), signal.SIGKILL)
    return 1


def test_a_worker_killed_by_the_system_is_named_in_one_clear_error() -> None:
    """A worker process ended by the system (out of memory) is a WorkerLost naming the stage,
    the job and the memory, which a retry may cure (not a traceback of the pool's internals),
    and the pool runs again afterwards."""
    with Workers(None, 2, 1, "evaluate") as pool:
        with pytest.raises(WorkerLost, match=r"evaluate: a worker process died while "
                           r"running _killed jobs \([0-2] of 3 done\).*GiB.*evaluate.workers "
                           r"to 1") as caught:
            pool.map(_killed, [(False,), (True,), (False,)])
        assert permanent(caught.value) is None
        assert pool.map(_killed, [(False,), (False,)]) == [1, 1]


STAGE = """
import os, sys, time
from metarec.workers import Workers

def job(shared, seconds):
    print(os.getpid(), flush=True)
    time.sleep(seconds)
    return seconds

if __name__ == "__main__":
    with Workers(None, 2, 1) as pool:
        pool.map(job, [(300,), (300,)])
"""


def test_workers_end_with_a_stage_process_that_is_killed(tmp_path: Path) -> None:
    """A stage killed past its cleanup (SIGKILL, the OOM killer) takes its workers with it,
    not leaving them to finish their jobs on the cores of whatever runs next."""
    import subprocess
    import sys

    script = tmp_path / "stage.py"
    script.write_text(STAGE)
    stage = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(stage.stdout.readline()) for _ in range(2)]       # both jobs running
    stage.kill()
    stage.wait(timeout=30)
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in pids if _running(pid)]
    assert not alive, f"workers {alive} outlived their stage"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"     # a zombie has ended
    except FileNotFoundError:
        return False


def test_ddp_trains_in_the_processes_torchrun_started() -> None:
    from metarec.train import distributed

    with pytest.raises(ParamsError, match="train.workers to 1"):
        distributed.check(TrainParams(strategy="ddp", workers=2), [])


def test_the_choices_before_the_fits_never_read_a_test_task(project: dict[str, Any]) -> None:
    """The bounded search (draw probes, inner learning rate) and every fit read validation
    and meta-train tasks only: test tasks rewritten (ratings flipped, items rotated) leave
    every choice and every checkpoint's weights unchanged."""
    import shutil

    import pandas as pd

    root, p = project["root"], project["params"]
    planted = root / "episodes_planted"
    shutil.copytree(root / "episodes", planted)
    frame = pd.read_parquet(planted / "episodes.parquet")
    test = frame["split"] == "test"
    items = frame.loc[test, "item_id"].to_numpy()
    frame.loc[test, "rating"] = (6 - frame.loc[test, "rating"]).astype("float32")
    frame.loc[test, "item_id"] = pd.array(list(items[1:]) + list(items[:1]), dtype="string")
    frame.to_parquet(planted / "episodes.parquet", index=False)
    assert test.any()
    tp = replace(p.train, algorithms=("encoder", "maml"), baselines=("most_popular",),
                 seeds=(0,), search=replace(p.train.search, inner_lr=(0.05, 0.3)))
    a, b = (train.run(p.model, tp, root / name, root / f"models_{name}",
                      root / f"train_{name}.json") for name in ("episodes", "episodes_planted"))
    assert a["draw_choice"]["inner_lr"]["val_loss"]           # the search ran
    assert _without_seconds(a["draw_choice"]) == _without_seconds(b["draw_choice"])
    for name in ("encoder", "maml", "most_popular"):
        wa = read_checkpoint(root / "models_episodes" / "seed0" / f"{name}.pt")["state"]
        wb = read_checkpoint(root / "models_episodes_planted" / "seed0" / f"{name}.pt")["state"]
        assert _equal(_without_seconds(wa), _without_seconds(wb)), name
