"""Second-order meta-training throughput: batched (vmap) vs a per-task loop vs ``higher``.

An ML-100K-sized model (943 users; age numeric, gender, occupation, zip first digit; 1682
items with 19 multi-valued genres + release year; item-id embeddings), meta-batches of 32 tasks
with K = 10 support and Q = 10 query ratings, 5 inner SGD steps, second-order MAML. One outer
step = meta-gradient of all 32 tasks + backward. All three implementations use the same
network and the same tasks in the same run; results go to benchmarks/results/meta_training.json.

It also times one outer step of every algorithm at the default params on the same data, which
is how the train stage's default ``max_steps`` was chosen, and profiles the batched step at
meta-batches of 32 and 256 tasks (``profile``): tasks/s, the split of a step's time between
the feature lookups, the adaptation with the query loss (forward, inner gradients with their
graph) and the meta-gradient's backward, and the operators that take the most time
(``torch.profiler``, self CPU time).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/meta_training.py [--repeats 5] [--device cuda]

``--device cuda`` (benchmarks/gpu.sh) runs the same three implementations on a GPU, timing
with ``torch.cuda.synchronize`` so that queued kernels are counted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import higher
import numpy as np
import torch
from torch.func import functional_call

from metarec import algorithms
from metarec.config import ModelParams, TrainParams
from metarec.data.encoding import FeatureTable
from metarec.data.tasks import TaskBatch
from metarec.io import write_json
from metarec.meta.features import FeatureStore
from metarec.models.network import PreferenceNet

RESULTS = Path(__file__).parent / "results" / "meta_training.json"
N_USERS, N_ITEMS, N_GENRES = 943, 1682, 19
T, K, Q, STEPS, LR = 32, 10, 10, 5, 0.05


def ml100k_like(rng: np.random.Generator) -> tuple[FeatureTable, FeatureTable]:
    """Feature tables with ML-100K's shapes and cardinalities (values random)."""
    users = FeatureTable(
        ids=[str(i) for i in range(N_USERS)], id_code=torch.arange(N_USERS),
        categorical=torch.from_numpy(np.stack([rng.integers(1, 3, N_USERS),
                                               rng.integers(1, 22, N_USERS),
                                               rng.integers(1, 11, N_USERS)], 1)),
        multi=torch.zeros((N_USERS, 0, 1), dtype=torch.long),
        numeric=torch.from_numpy(rng.normal(size=(N_USERS, 1)).astype(np.float32)),
        n_ids=N_USERS + 1, cat_names=["gender", "occupation", "zip1"],
        cat_cardinalities=[3, 22, 11], multi_names=[], multi_cardinalities=[],
        num_names=["age"])
    genres = np.zeros((N_ITEMS, 1, 6), dtype=np.int64)
    for i in range(N_ITEMS):
        k = rng.integers(1, 4)
        genres[i, 0, :k] = rng.choice(np.arange(1, N_GENRES + 1), size=k, replace=False)
    items = FeatureTable(
        ids=[str(i) for i in range(N_ITEMS)], id_code=torch.arange(1, N_ITEMS + 1),
        categorical=torch.zeros((N_ITEMS, 0), dtype=torch.long),
        multi=torch.from_numpy(genres),
        numeric=torch.from_numpy(rng.normal(size=(N_ITEMS, 1)).astype(np.float32)),
        n_ids=N_ITEMS + 1, cat_names=[], cat_cardinalities=[], multi_names=["genres"],
        multi_cardinalities=[N_GENRES + 1], num_names=["year"])
    return users, items


def make_model(users: FeatureTable, items: FeatureTable, mp: ModelParams) -> PreferenceNet:
    return PreferenceNet(
        user_cat_cardinalities=users.cat_cardinalities, user_multi_cardinalities=[],
        user_numeric=1, item_cat_cardinalities=[],
        item_multi_cardinalities=items.multi_cardinalities, item_numeric=1,
        n_item_ids=items.n_ids, rating_range=(1.0, 5.0), embedding_dim=mp.embedding_dim,
        hidden=mp.hidden, interaction=mp.interaction, item_id_embedding=mp.item_id_embedding)


def make_batch(rng: np.random.Generator, k: int = K, t: int = T) -> TaskBatch:
    items = np.stack([rng.choice(N_ITEMS, size=k + Q, replace=False) for _ in range(t)])
    ratings = torch.from_numpy(rng.integers(1, 6, size=(t, k + Q)).astype(np.float32))
    items_t = torch.from_numpy(items)
    users = torch.from_numpy(rng.integers(0, N_USERS, t))
    return TaskBatch(task_id=torch.arange(t), user_idx=users,
                     support_items=items_t[:, :k], support_ratings=ratings[:, :k],
                     support_mask=torch.ones(t, k, dtype=torch.bool),
                     query_items=items_t[:, k:], query_ratings=ratings[:, k:],
                     query_mask=torch.ones(t, Q, dtype=torch.bool))


def step_batched(model: PreferenceNet, adapt: str, store: FeatureStore, batch: TaskBatch) -> None:
    algo = algorithms.get("maml").build(model, {"adapt": adapt, "inner_lr": LR,
                                                "inner_steps": STEPS})
    objective, _ = algo.outer_loss(store.support(batch), store.query(batch))
    objective.backward()


def adapted(model: PreferenceNet, adapt: str) -> list[str]:
    """What MAML adapts for ``adapt``: the group less the head no loss reads (as batched)."""
    return algorithms.get("maml").build(model, {"adapt": adapt, "inner_lr": LR,
                                                "inner_steps": STEPS}).adapt_names


def step_loop(model: PreferenceNet, adapt: str, store: FeatureStore, batch: TaskBatch) -> None:
    """Per-task reference: plain autograd with create_graph, one task at a time."""
    names = adapted(model, adapt)
    params = dict(model.named_parameters())
    total = 0.0
    for t in range(T):
        user = store.users(batch.user_idx[t:t + 1])
        s_items, q_items = (store.items(batch.support_items[t:t + 1]),
                            store.items(batch.query_items[t:t + 1]))
        fast = {n: params[n] for n in names}
        for _ in range(STEPS):
            loss = ((functional_call(model, fast, (user, s_items))
                     - batch.support_ratings[t:t + 1]) ** 2).mean()
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: w - LR * gw for (n, w), gw in zip(fast.items(), g, strict=True)}
        total = total + ((functional_call(model, fast, (user, q_items))
                          - batch.query_ratings[t:t + 1]) ** 2).mean() / T
    total.backward()


def step_higher(model: PreferenceNet, adapt: str, store: FeatureStore, batch: TaskBatch) -> None:
    named = dict(model.named_parameters())
    opt = torch.optim.SGD([named[n] for n in adapted(model, adapt)], lr=LR)
    for t in range(T):
        user = store.users(batch.user_idx[t:t + 1])
        s_items, q_items = (store.items(batch.support_items[t:t + 1]),
                            store.items(batch.query_items[t:t + 1]))
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(STEPS):
                diffopt.step(((fmodel(user, s_items) - batch.support_ratings[t:t + 1]) ** 2)
                             .mean())
            loss = ((fmodel(user, q_items) - batch.query_ratings[t:t + 1]) ** 2).mean() / T
            loss.backward()


def _sync(device: torch.device) -> None:
    """Wait for queued GPU kernels, so that a timer measures work done, not work queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, model, adapt, store, batches: list[TaskBatch]) -> float:
    """Tasks per second: median over meta-batches after one warm-up step."""
    device = store.device
    fn(model, adapt, store, batches[0])
    model.zero_grad()
    times = []
    for b in batches[1:]:
        _sync(device)
        start = time.perf_counter()
        fn(model, adapt, store, b)
        _sync(device)
        times.append(time.perf_counter() - start)
        model.zero_grad()
    return T / statistics.median(times)


def outer_step_seconds(users, items, rng, repeats: int,
                       device: torch.device) -> dict[str, float]:
    """Seconds per outer step (adapt + backward + Adam) of each algorithm at default params."""
    mp, tp = ModelParams(), TrainParams()
    store = FeatureStore(users, items).to(device)
    out = {}
    for name in [*algorithms.names("meta"), "pretrain"]:
        cls = algorithms.get(name)
        torch.manual_seed(0)
        algo = cls.build(make_model(users, items, mp), cls.config_from(mp, tp)).to(device)
        algo.use_catalogue(store)      # the default objective ranks against the catalogue
        opt = torch.optim.Adam(algo.parameters(), lr=tp.outer_lr)
        times = []
        for r in range(repeats + 1):
            batch = make_batch(rng, k=int(rng.choice([1, 3, 5, 10, 20]))).to(device)
            _sync(device)
            start = time.perf_counter()
            opt.zero_grad()
            objective, _ = algo.outer_loss(store.support(batch), store.query(batch))
            objective.backward()
            opt.step()
            algo.post_step()
            _sync(device)
            if r:
                times.append(time.perf_counter() - start)
        out[name] = round(statistics.median(times), 4)
    return out


PROFILE_SIZES = (32, 256)   # meta-batches the batched step is profiled at
TOP_OPS = 6                 # operators listed per profile


def _phased_step(algo: Any, store: FeatureStore, batch: TaskBatch, device: torch.device
                 ) -> tuple[float, float, float]:
    """One batched outer step; seconds of its feature lookups, adaptation + query loss and
    backward."""
    _sync(device)
    t0 = time.perf_counter()
    support, query = store.support(batch), store.query(batch)
    _sync(device)
    t1 = time.perf_counter()
    objective, _ = algo.outer_loss(support, query)
    _sync(device)
    t2 = time.perf_counter()
    objective.backward()
    _sync(device)
    t3 = time.perf_counter()
    algo.zero_grad()
    return t1 - t0, t2 - t1, t3 - t2


def profile_batched(users: FeatureTable, items: FeatureTable, mp: ModelParams,
                    rng: np.random.Generator, repeats: int, device: torch.device
                    ) -> dict[str, Any]:
    """Where one batched second-order MAML step's time goes, per meta-batch size: tasks/s
    and the median seconds of each phase (feature lookups, adaptation + query loss, the
    meta-gradient's backward) over ``repeats`` steps after a warm-up, and the operators with
    the most self CPU time over those steps (their share of the profiled total)."""
    from torch.profiler import ProfilerActivity, profile

    store = FeatureStore(users, items).to(device)
    out: dict[str, Any] = {}
    for size in PROFILE_SIZES:
        torch.manual_seed(0)
        model = make_model(users, items, mp).to(device)
        algo = algorithms.get("maml").build(model, {"adapt": mp.adapt, "inner_lr": LR,
                                                    "inner_steps": STEPS})
        batches = [make_batch(rng, t=size).to(device) for _ in range(repeats + 1)]
        phases: dict[str, list[float]] = {"features": [], "adapt_and_query_loss": [],
                                          "backward": []}

        _phased_step(algo, store, batches[0], device)            # warm-up
        for b in batches[1:]:
            for name, sec in zip(phases, _phased_step(algo, store, b, device), strict=True):
                phases[name].append(sec)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches[1:]:
                _phased_step(algo, store, b, device)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_OPS]
        seconds = {k: round(statistics.median(v), 5) for k, v in phases.items()}
        out[str(size)] = {
            "tasks_per_s": round(size / sum(seconds.values()), 1),
            "seconds": seconds,
            "share": {k: round(v / sum(seconds.values()), 3) for k, v in seconds.items()},
            "top_ops": [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 3),
                         "calls_per_step": round(e.count / repeats, 1)} for e in top]}
    return out


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (a GPU: benchmarks/gpu.sh)")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    users, items = ml100k_like(rng)
    store = FeatureStore(users, items).to(device)
    batches = [make_batch(rng).to(device) for _ in range(args.repeats + 1)]
    default = ModelParams()
    configs = {f"default ({default.interaction}, adapt={default.adapt})": default,
               "dot, adapt=user": ModelParams(interaction="dot", adapt="user"),
               "melu (mlp, adapt=decision)": ModelParams(interaction="mlp", adapt="decision")}
    results: dict[str, Any] = {}
    for label, mp in configs.items():
        torch.manual_seed(0)
        model = make_model(users, items, mp).to(device)
        tps = {"batched": timed(step_batched, model, mp.adapt, store, batches),
               "loop": timed(step_loop, model, mp.adapt, store, batches),
               "higher": timed(step_higher, model, mp.adapt, store, batches)}
        results[label] = {
            "tasks_per_s": {k: round(v, 1) for k, v in tps.items()},
            "speedup_vs_higher": round(tps["batched"] / tps["higher"], 1),
            "speedup_vs_loop": round(tps["batched"] / tps["loop"], 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "adapted_parameters": sum(p.numel() for n, p in model.named_parameters()
                                      if n in adapted(model, mp.adapt)),
            "profile": profile_batched(users, items, mp, rng, args.repeats, device)}
        print(label, results[label])
    report = {
        "tasks_per_s": results[next(iter(configs))]["tasks_per_s"],
        "configs": results,
        "outer_step_seconds_default_params": outer_step_seconds(users, items, rng, args.repeats,
                                                                 device),
        "setup": {"meta_batch": T, "k": K, "q": Q, "inner_steps": STEPS, "order": 2,
                  "users": N_USERS, "items": N_ITEMS, "repeats": args.repeats,
                  "statistic": "median over meta-batches after one warm-up"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
                    else None},
    }
    write_json(report, args.out)
    print(report["outer_step_seconds_default_params"])
    return report


if __name__ == "__main__":
    main()
