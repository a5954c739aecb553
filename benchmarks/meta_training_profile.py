"""Where a batched second-order MAML outer step spends its time, before optimising it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/meta_training_profile.py [--steps 3]

The model and tasks of ``benchmarks/meta_training.py`` (ML-100K shapes, K = 10, Q = 10, 5
inner steps, adapt = user), at meta-batches of 32 and 256 tasks, for the dot and the MLP
interaction. ``torch.profiler`` records ``--steps`` outer steps (after one warm-up); the JSON
lists each configuration's seconds per step and per task, and the operators with the most
self CPU time with their share. Writes ``benchmarks/results/profile_meta_training.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from meta_training import N_ITEMS, N_USERS, Q, make_model, ml100k_like, step_batched
from torch.profiler import ProfilerActivity, profile

from metarec.config import ModelParams
from metarec.data.tasks import TaskBatch
from metarec.meta.features import FeatureStore

RESULT = Path(__file__).parent / "results" / "profile_meta_training.json"
K = 10


def batch_of(rng: np.random.Generator, t: int) -> TaskBatch:
    items = torch.from_numpy(np.stack([rng.choice(N_ITEMS, size=K + Q, replace=False)
                                       for _ in range(t)]))
    ratings = torch.from_numpy(rng.integers(1, 6, size=(t, K + Q)).astype(np.float32))
    return TaskBatch(task_id=torch.arange(t), user_idx=torch.from_numpy(
        rng.integers(0, N_USERS, t)), support_items=items[:, :K],
        support_ratings=ratings[:, :K], support_mask=torch.ones(t, K, dtype=torch.bool),
        query_items=items[:, K:], query_ratings=ratings[:, K:],
        query_mask=torch.ones(t, Q, dtype=torch.bool))


def one(interaction: str, t: int, steps: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    users, items = ml100k_like(rng)
    torch.manual_seed(0)
    mp = ModelParams(interaction=interaction)
    model = make_model(users, items, mp)
    store = FeatureStore(users, items)
    batches = [batch_of(rng, t) for _ in range(steps + 1)]
    step_batched(model, "user", store, batches[0])                      # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for b in batches[1:]:
            model.zero_grad()
            step_batched(model, "user", store, b)
        seconds = (time.perf_counter() - start) / steps
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    return {"interaction": interaction, "meta_batch": t, "seconds_per_step": round(seconds, 4),
            "ms_per_task": round(1000 * seconds / t, 3),
            "top_self_cpu": [{"op": e.key, "calls": int(e.count // steps),
                              "share": round(e.self_cpu_time_total / total, 4)} for e in top]}


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    rows = []
    for interaction in ("dot", "mlp"):
        for t in (32, 256):
            rows.append(one(interaction, t, args.steps))
            r = rows[-1]
            ops = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in r["top_self_cpu"][:6])
            print(f"{interaction} T={t}: {r['seconds_per_step']:.3f} s/step, "
                  f"{r['ms_per_task']:.2f} ms/task; {ops}", flush=True)
    report = {"threads": torch.get_num_threads(), "configs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
