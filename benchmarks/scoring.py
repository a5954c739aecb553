"""Nightly scoring benchmark: throughput, achieved GFLOP/s against the machine's matmul, peak RSS.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scoring.py [--users 16384]

writes ``benchmarks/results/scoring.json``. The model is the params.yaml default (dot
interaction, embedding 32, adapt = user, MAML with 5 inner steps) on ML-100K-shaped data:
users with age, gender (2), occupation (21) and zip region (10); 1,682 items with release year,
genres (19) and an id embedding. Weights are a random initialisation: speed does not depend on
them. Every cold user has K = 10 interactions and is scored against all 1,682 items.

- ``users_per_s``: adaptation + catalogue scoring + top-K of ``recommend_chunk`` over
  ``--users`` users in chunks of ``score.chunk_users`` (after one warm-up chunk).
- ``gflops``: analytic FLOPs of that work / its time. Per user, with d = 32, Du = 4d (user
  fields), Di = 3d (item fields), K = 10, s = 5 steps, C = 1,682 items:

      inner step  = 6 d Du          (user projection: forward, its weight gradient, update)
                  + 2 K Di d        (item projection of the support items, redone every step)
                  + 10 K d          (dot product, output layer, their gradients)
      scoring     = 2 d Du + 2 C d + 4 C   (adapted user vector, catalogue matmul, biases)
      total       = s * inner step + scoring  (~569 kFLOP)

  Embedding look-ups, sigmoid, masking and top-K are counted as zero FLOPs.
- ``matmul_gflops``: best of 5 ``torch.mm`` of two 2048 x 2048 fp32 matrices, same threads.
- ``peak_rss_mb``: ``metarec.stages.score.run`` end to end (read tables, select, adapt, score,
  write the Parquet) on 10k and 100k synthetic cold users, each in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metarec import algorithms
from metarec.config import ModelParams, ScoreParams, TrainParams, to_dict
from metarec.data.encoding import encode_entity, fit_entity_vocab
from metarec.data.tasks import EpisodeData
from metarec.io import write_parquet
from metarec.meta.checkpoint import load_model, save_model
from metarec.meta.features import FeatureStore
from metarec.meta.predictor import AdaptivePredictor
from metarec.models.network import build_network, network_kwargs
from metarec.scoring.engine import recommend_chunk, task_batch

N_ITEMS, K, STEPS = 1682, 10, 5
AS_OF = "2024-06-30"
END = 1_719_792_000  # 2024-07-01 00:00 UTC
GENRES = [f"g{j}" for j in range(19)]
RESULT = Path(__file__).parent / "results" / "scoring.json"


def make_world(root: Path, n_users: int, seed: int = 0) -> None:
    """validated/{interactions,users,items}.parquet and models/maml.pt under ``root``."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({
        "user_id": pd.Series([f"u{i}" for i in range(n_users)], dtype="string"),
        "age": rng.integers(7, 74, n_users).astype("float64"),
        "gender": pd.Series(rng.choice(["F", "M"], n_users), dtype="string"),
        "occupation": pd.Series(rng.choice([f"o{j}" for j in range(21)], n_users),
                                dtype="string"),
        "zip": pd.Series(rng.choice([str(j) for j in range(10)], n_users), dtype="string")})
    n_genres = rng.integers(1, 4, N_ITEMS)
    items = pd.DataFrame({
        "item_id": pd.Series([str(i + 1) for i in range(N_ITEMS)], dtype="string"),
        "release_year": rng.integers(1930, 1999, N_ITEMS).astype("float64"),
        "genres": [list(rng.choice(GENRES, k, replace=False)) for k in n_genres]})
    inter = pd.DataFrame({
        "user_id": users["user_id"].repeat(K).reset_index(drop=True),
        "item_id": pd.Series(np.concatenate([rng.choice(N_ITEMS, K, replace=False) + 1
                                             for _ in range(n_users)]).astype(str),
                             dtype="string"),
        "rating": rng.integers(1, 6, n_users * K).astype("float64"),
        "timestamp": END - 1 - rng.integers(0, 86_400, n_users * K).astype("int64"),
        "source_row": np.arange(1, n_users * K + 1, dtype=np.int64)})
    write_parquet(inter, root / "validated" / "interactions.parquet")
    write_parquet(users, root / "validated" / "users.parquet")
    write_parquet(items, root / "validated" / "items.parquet")
    train_users = users["user_id"][: n_users // 2]
    user_spec = {"age": {"kind": "numeric"}, "gender": {"kind": "categorical"},
                 "occupation": {"kind": "categorical"}, "zip": {"kind": "categorical"}}
    item_spec = {"release_year": {"kind": "numeric"}, "genres": {"kind": "multicategorical"}}
    vocab = {"rating": {"kind": "explicit", "min": 1.0, "max": 5.0},
             "users": fit_entity_vocab(users, "user_id", user_spec, train_users),
             "items": fit_entity_vocab(items, "item_id", item_spec, items["item_id"])}
    data = EpisodeData(tasks=pd.DataFrame(), vocab=vocab,
                       users=encode_entity(users, "user_id", vocab["users"]),
                       items=encode_entity(items, "item_id", vocab["items"]))
    model, train = ModelParams(), TrainParams(inner_steps=STEPS)
    kwargs = network_kwargs(data.items, data.users, data.rating_range, model)
    torch.manual_seed(seed)
    maml = algorithms.get("maml")
    algo = maml(build_network(kwargs), **maml.config_from(model, train))
    algo.network_kwargs = kwargs
    save_model(root / "models" / "maml.pt",
               AdaptivePredictor("maml", algo, FeatureStore(data.users, data.items)),
               {"model": to_dict(model), "train": to_dict(train)}, vocab)


def flops_per_user(d: int, du: int, di: int, k: int, steps: int, c: int) -> int:
    """Analytic FLOPs of adapting one user and scoring the catalogue (module docstring)."""
    inner = 6 * d * du + 2 * k * di * d + 10 * k * d
    return steps * inner + 2 * d * du + 2 * c * d + 4 * c


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:  # noqa: ANN001 - tiny helper
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(root: Path, n_users: int, chunk: int) -> dict[str, float]:
    """Users/s and GFLOP/s of the engine over ``n_users`` K-interaction users."""
    from metarec.io import read_parquet
    from metarec.meta.checkpoint import read_checkpoint

    vocab = read_checkpoint(root / "models" / "maml.pt")["vocab"]
    users = encode_entity(read_parquet(root / "validated" / "users.parquet"), "user_id",
                          vocab["users"])
    items = encode_entity(read_parquet(root / "validated" / "items.parquet"), "item_id",
                          vocab["items"])
    data = EpisodeData(tasks=pd.DataFrame(), users=users, items=items, vocab=vocab)
    predictor = load_model(root / "models" / "maml.pt", data)
    rng = np.random.default_rng(1)
    sup = torch.from_numpy(np.stack([rng.choice(N_ITEMS, K, replace=False)
                                     for _ in range(n_users)]))             # (U, K)
    ratings = torch.from_numpy(rng.integers(1, 6, (n_users, K)).astype(np.float32))
    mask = torch.ones((n_users, K), dtype=torch.bool)
    user_idx = torch.arange(n_users) % len(users)

    def chunk_run(a: int, b: int, no: int) -> None:
        batch = task_batch(user_idx[a:b], sup[a:b], ratings[a:b], mask[a:b])
        rows = torch.arange(b - a).repeat_interleave(K)
        recommend_chunk(predictor, batch, no, rows, sup[a:b].reshape(-1), 20)

    chunk_run(0, min(chunk, n_users), 0)  # warm-up
    start = time.perf_counter()
    for no, a in enumerate(range(0, n_users, chunk)):
        chunk_run(a, min(a + chunk, n_users), no)
    seconds = time.perf_counter() - start
    model = predictor.algorithm.model
    d = model.user_proj.out_features
    f = flops_per_user(d, model.user_width, model.item_width, K, STEPS, N_ITEMS)
    return {"users_per_s": n_users / seconds, "gflops": f * n_users / seconds / 1e9,
            "flops_per_user": f, "seconds": seconds}


def child(root: Path) -> None:
    """Run the score stage once; print peak RSS (MB) and seconds as JSON."""
    from metarec.stages.score import run

    start = time.perf_counter()
    run(ScoreParams(as_of=AS_OF, active_days=1), root / "validated", root / "models",
        root / "out")
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({"peak_rss_mb": rss, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=16_384, help="users in the throughput run")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    chunk = ScoreParams().chunk_users
    result: dict[str, object] = {"threads": torch.get_num_threads(), "chunk_users": chunk,
                                 "k_interactions": K, "inner_steps": STEPS, "items": N_ITEMS}
    with tempfile.TemporaryDirectory(prefix="metarec-bench-") as tmp:
        rss: dict[str, float] = {}
        stage_s: dict[str, float] = {}
        for n in (10_000, 100_000):
            root = Path(tmp) / str(n)
            make_world(root, n)
            if n == 10_000:
                result.update(throughput(root, args.users, chunk))
                result["matmul_gflops"] = matmul_gflops()
            out = subprocess.run([sys.executable, __file__, "--child", str(root)], check=True,
                                 capture_output=True, text=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            rss[str(n)], stage_s[str(n)] = got["peak_rss_mb"], got["seconds"]
    result["peak_rss_mb"] = rss
    result["stage_seconds"] = stage_s
    result["stage_users_per_s"] = {n: int(n) / s for n, s in stage_s.items()}
    result["gflops_fraction_of_matmul"] = result["gflops"] / result["matmul_gflops"]
    result["rss_ratio_100k_over_10k"] = rss["100000"] / rss["10000"]
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
