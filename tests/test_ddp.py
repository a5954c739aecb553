"""Data-parallel training (Lightning DDP, 2 CPU processes, gloo) matches one process.

The 2 ranks are subprocesses of this test running tests/ddp_worker.py (the real train stage)
with the process-group environment set here, so Lightning launches nothing itself.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from meta_fixtures import episode_data, fit_algorithm

from metarec import fitting
from metarec.algorithms.finetune import FinetuneParams
from metarec.algorithms.reptile import ReptileParams
from metarec.algorithms.ridge import RidgeParams
from metarec.config import ModelParams, TrainParams, to_dict
from metarec.errors import ParamsError
from metarec.stages import train as train_stage
from metarec.train.data import EpisodeDataModule

pytestmark = pytest.mark.slow  # two torch.distributed processes (~30 s): not in make test-fast

WORKER = Path(__file__).with_name("ddp_worker.py")
MODEL = ModelParams(interaction="dot", embedding_dim=8, hidden=(16,), adapt="user")
# meta_batch is global: 16 tasks per outer step, i.e. B = 8 tasks on each of the 2 ranks.
SECTIONS = {"ridge": RidgeParams(outer_lr=0.01), "finetune": FinetuneParams(steps=(1,), lrs=(0.1,)),
            "reptile": ReptileParams(mode="adam")}
TRAIN = TrainParams(algorithms=("fomaml", "reptile", "ridge"), max_steps=30, val_every=10,
                    meta_batch=16, outer_lr=0.01, inner_lr=0.1, inner_steps=2, seeds=(0,),
                    sections=SECTIONS, workers=1)
DDP = replace(TRAIN, strategy="ddp", devices=2)
RTOL = 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(tmp: Path, data, train: TrainParams, timeout: float = 80.0) -> list[dict]:
    """Run the train stage on 2 gloo ranks; return each rank's report."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "data.pkl").write_bytes(pickle.dumps(data))
    spec = {"data": str(tmp / "data.pkl"), "model": to_dict(MODEL), "out": str(tmp),
            "train": {k: v for k, v in to_dict(train).items() if k != "seed"},
            "report": str(tmp / "rank{rank}.json")}
    (tmp / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "NODE_RANK": "0", "OMP_NUM_THREADS": "1"}
        log = (tmp / f"rank{rank}.log").open("w")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tmp / "spec.json")],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:  # a rank that lost its peer would wait for it until the gloo timeout
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = "\n".join(f"--- rank {r}\n" + (tmp / f"rank{r}.log").read_text()[-3000:]
                     for r in range(2))
    assert [p.returncode for p in procs] == [0, 0], logs
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def data():
    return episode_data(n_users=80, n_items=40)  # 56 meta-train, 24 validation tasks


def test_ddp_two_ranks_match_one_process(data, tmp_path, monkeypatch):
    """fomaml and reptile (adam mode) on 2 gloo ranks at B = 8 tasks each equal 1 rank at 2B.

    Both runs draw the same 16 tasks at every outer step (the seeded DistributedSampler deals
    one permutation round-robin) and DDP averages the two ranks' mean gradients, which is the
    gradient of the 16-task mean; validation sums squared errors over both ranks' halves. So
    the runs differ only by float32 summation order (per-rank means, then the all-reduce).

    Tolerance: the best validation losses agree within ``RTOL`` = 1e-3 (relative), at the same
    best step. Measured here: 0 (fomaml), 1.3e-7 (reptile), 1.2e-7 (pretrain) - rounding.
    Without the gradient all-reduce (manual_backward under ``no_sync``, tried by hand) the
    ranks' weights diverge and the loss moves by 6-14%, so 1e-3 separates the two by far while
    leaving room for other BLAS builds. The stricter checks are exact: both ranks end with
    bit-identical weights (they could not if each stepped on its own gradients) and the same
    best step, both runs lower the validation loss, and only rank 0 writes files.
    """
    ranks = _launch(tmp_path / "ddp", data, DDP)
    monkeypatch.setattr(fitting, "load_episodes", lambda directory: data)
    one = train_stage.run(MODEL, TRAIN, tmp_path, tmp_path / "one",
                          tmp_path / "one" / "train.json")["seeds"]["seed0"]
    r0, r1 = ranks
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world_size"] == 2 and r0["backend"] == "gloo"
    assert r0["digests"] == r1["digests"]  # gradients were averaged: identical weights
    assert set(r0["digests"]) == {"pretrain", "fomaml", "reptile", "ridge"}
    assert sorted(r0["written"]) == sorted([f"{n}.pt" for n in (*TRAIN.baselines,
                                                                  *TRAIN.algorithms)]
                                           + ["train.json"])
    assert r1["written"] == []
    written = json.loads((tmp_path / "ddp" / "metrics" / "train.json").read_text())
    assert written["processes"] == 2
    assert (tmp_path / "ddp" / "models" / "seed0" / "fomaml.pt").exists()
    for name in ("pretrain", "fomaml", "reptile", "ridge"):
        a, b = r0["metrics"]["seeds"]["seed0"][name], r1["metrics"]["seeds"]["seed0"][name]
        assert a["best_val_loss"] == b["best_val_loss"] and a["best_step"] == b["best_step"]
        ref = one[name]
        assert a["best_val_loss"] < ref["initial_val_loss"]
        assert ref["best_val_loss"] < ref["initial_val_loss"]
        assert a["initial_val_loss"] == pytest.approx(ref["initial_val_loss"], rel=1e-6)
        assert a["best_val_loss"] == pytest.approx(ref["best_val_loss"], rel=RTOL), (name, a, ref)
        assert a["best_step"] == ref["best_step"]


def test_ranks_split_each_meta_batch_of_one_process(data):
    """The 2 ranks' meta-batches at a step are exactly the 1-process meta-batch at that step."""
    def batches(rank: int, world: int, meta_batch: int, epoch: int) -> list[list[int]]:
        dm = EpisodeDataModule(data, meta_batch, seed=3)
        dm.setup("fit")
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [list(batch) for batch in loader.batch_sampler]

    for epoch in (0, 1):
        whole = batches(0, 1, 16, epoch)
        halves = [batches(r, 2, 16, epoch) for r in range(2)]
        assert len(whole) == len(halves[0]) == len(halves[1]) == 3
        for step, batch in enumerate(whole):
            assert sorted(batch) == sorted(halves[0][step] + halves[1][step])
            assert not set(halves[0][step]) & set(halves[1][step])
    assert batches(0, 1, 16, 0) != batches(0, 1, 16, 1)  # a new order every epoch
    dm = EpisodeDataModule(data, 16)
    dm.setup("fit")
    val = []
    for r in range(2):
        dm.trainer = SimpleNamespace(global_rank=r, world_size=2)
        loader = dm.val_dataloader()
        val += [loader.dataset[i] for b in loader.batch_sampler for i in b]
    assert sorted(val) == list(range(len(dm.val_tasks)))  # each validation task once


@pytest.mark.parametrize("name,train,reason", [
    ("maml", DDP, "second order"),
    ("metasgd", DDP, "second order"),
    ("metadropout", DDP, "second order"),
    ("reptile", replace(DDP, sections={**SECTIONS, "reptile": ReptileParams(mode="interpolate")}),
     "mode interpolate"),
])
def test_ddp_refuses_what_it_cannot_average(data, tmp_path, name, train, reason):
    train = replace(train, algorithms=("fomaml", name))
    with pytest.raises(ParamsError, match=rf"ddp cannot train '{name}'.*{reason}"):
        train_stage.run(MODEL, train, tmp_path, tmp_path, tmp_path / "m.json")
    with pytest.raises(ParamsError, match=reason):
        fit_algorithm(name, data, MODEL, train, tmp_path)
    assert not (tmp_path / "m.json").exists()


def test_ddp_params_are_checked(tmp_path, monkeypatch):
    for var in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)
    run = lambda train: train_stage.run(MODEL, train, tmp_path, tmp_path,  # noqa: E731
                                        tmp_path / "m.json")
    with pytest.raises(ParamsError, match="torchrun --nnodes 1 --nproc-per-node 2"):
        run(DDP)  # Lightning would otherwise re-run sys.argv (here: pytest) per process
    with pytest.raises(ParamsError, match="need train.strategy: ddp"):
        run(replace(TRAIN, devices=2))
    with pytest.raises(ParamsError, match="multiple of the number of processes"):
        run(replace(DDP, meta_batch=15))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ParamsError, match="WORLD_SIZE=4"):
        run(DDP)


def test_cli_reports_second_order_under_ddp(tmp_path):
    from typer.testing import CliRunner

    from metarec.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("train:\n  strategy: ddp\n  algorithms: [maml]\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--params", str(params),
                                      "--episodes", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "maml" in result.output and "second order" in result.output
