"""Nightly scoring benchmark: throughput, achieved GFLOP/s against the machine's matmul, peak RSS.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scoring.py [--users 16384]

writes ``benchmarks/results/scoring.json``. The model is the params.yaml default (dot
interaction, embedding 32, adapt = user, MAML with 5 inner steps) on ML-100K-shaped data:
users with age, gender (2), occupation (21) and zip region (10); 1,682 items with release year,
genres (19) and an id embedding. Weights are a random initialisation: speed does not depend on
them. Every cold user has K = 10 interactions and is scored against all 1,682 items.

- ``users_per_s``: adaptation + catalogue scoring + top-K of ``recommend_chunk`` over
  ``--users`` users in chunks of ``score.chunk_users`` (after one warm-up chunk), the best
  of 3 runs (``runs_seconds``); faiss's search is timed the same way, and so is the same
  work with the PyTorch top K (``pytorch_top_k``: the GPU path, the CPU's before the
  compiled kernel).
- ``gflops``: analytic FLOPs of that work / its time. Per user, with d = 32, Du = 4d (user
  fields), Di = 3d (item fields), K = 10, s = 5 steps, C = 1,682 items:

      inner step  = 6 d Du          (user projection: forward, its weight gradient, update)
                  + 10 K d          (dot product, output layer, their gradients)
      once        = 2 K Di d        (item projection of the support items)
      scoring     = 2 d Du + 2 C (d + 2)   (adapted user vector, one GEMM with [v, b, 1])
      total       = s * inner step + once + scoring

  Embedding look-ups, sigmoid, masking and top-K are counted as zero FLOPs, and so is the
  inner loop's ranking loss (``train.objective.inner: both``). With ``--loss softmax`` (the
  params default) that loss ranks the support against the whole catalogue every inner step
  ((T, C) scores and softmax), which dominates at 10^5 items (``adapt_seconds``); with
  ``--loss sampled`` it ranks against ``negatives`` (256) items drawn per chunk, which is what
  a catalogue of that size is trained with.
- ``matmul_gflops``: best of 5 ``torch.mm`` of two 2048 x 2048 fp32 matrices, same threads.
- ``peak_rss_mb``: ``metarec.stages.score.run`` end to end (read tables, select, adapt, score,
  write the Parquet) on 10k and 100k synthetic cold users, each in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from data_pipeline import vm_hwm_mb

from metarec import algorithms
from metarec.checkpoint import load_model, save_model
from metarec.config import ModelParams, ObjectiveParams, ScoreParams, TrainParams, to_dict
from metarec.data.encoding import encode_entity, fit_entity_vocab
from metarec.data.tasks import EpisodeData
from metarec.io import write_parquet
from metarec.meta.features import FeatureStore
from metarec.meta.predictor import AdaptivePredictor
from metarec.models.network import PreferenceNet, build_network, network_kwargs
from metarec.scoring.engine import recommend_chunk, task_batch

N_ITEMS, K, STEPS, TOP = 1682, 10, 5, 20
REPS = 3   # timed runs of ours and of faiss: the best of each (a shared machine's noise)
AS_OF = "2024-06-30"
END = 1_719_792_000  # 2024-07-01 00:00 UTC
GENRES = [f"g{j}" for j in range(19)]
RESULT = Path(__file__).parent / "results" / "scoring.json"


def make_world(root: Path, n_users: int, seed: int = 0, n_items: int = N_ITEMS,
               loss: str = "softmax") -> None:
    """validated/{interactions,users,items}.parquet and models/maml.pt under ``root``."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame({
        "user_id": pd.Series([f"u{i}" for i in range(n_users)], dtype="string"),
        "age": rng.integers(7, 74, n_users).astype("float64"),
        "gender": pd.Series(rng.choice(["F", "M"], n_users), dtype="string"),
        "occupation": pd.Series(rng.choice([f"o{j}" for j in range(21)], n_users),
                                dtype="string"),
        "zip": pd.Series(rng.choice([str(j) for j in range(10)], n_users), dtype="string")})
    n_genres = rng.integers(1, 4, n_items)
    items = pd.DataFrame({
        "item_id": pd.Series([str(i + 1) for i in range(n_items)], dtype="string"),
        "release_year": rng.integers(1930, 1999, n_items).astype("float64"),
        "genres": [list(rng.choice(GENRES, k, replace=False)) for k in n_genres]})
    inter = pd.DataFrame({
        "user_id": users["user_id"].repeat(K).reset_index(drop=True),
        "item_id": pd.Series((_supports(rng, n_users, n_items) + 1).reshape(-1).astype(str),
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
    model = ModelParams()
    train = TrainParams(inner_steps=STEPS, objective=ObjectiveParams(loss=loss))
    kwargs = network_kwargs(data.items, data.users, data.rating_range, model)
    torch.manual_seed(seed)
    maml = algorithms.get("maml")
    algo = maml(build_network(kwargs), **maml.config_from(model, train))
    algo.network_kwargs = kwargs
    save_model(root / "models" / "maml.pt",
               AdaptivePredictor("maml", algo, FeatureStore(data.users, data.items)),
               {"model": to_dict(model), "train": to_dict(train)}, vocab)


def _supports(rng: np.random.Generator, n_users: int, n_items: int) -> np.ndarray:
    """(U, K) distinct items per user, vectorised (K smallest of random keys would need
    U x n_items draws; rejection of repeats among K random picks is exact and cheap)."""
    sup = rng.integers(0, n_items, (n_users, K))
    while True:
        s = np.sort(sup, axis=1)
        dup = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if not dup.any():
            return sup
        sup[dup] = rng.integers(0, n_items, (int(dup.sum()), K))


def flops_per_user(d: int, du: int, di: int, k: int, steps: int, c: int) -> int:
    """Analytic FLOPs of adapting one user and scoring the catalogue (module docstring)."""
    inner = 6 * d * du + 10 * k * d
    return steps * inner + 2 * k * di * d + 2 * d * du + 2 * c * (d + 2)


def matmul_gflops(n: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b), device) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _sync(device: str) -> None:
    """Wait for a GPU's queued kernels, so that a timer counts them."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: str = "cpu") -> float:  # noqa: ANN001 - tiny helper
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def throughput(root: Path, n_users: int, chunk: int, n_items: int, device: str = "cpu"
               ) -> dict[str, object]:
    """Users/s and GFLOP/s of the engine over ``n_users`` K-interaction users, the time split
    (adaptation and catalogue scores timed on their own; ``top_k_seconds`` is what the whole's
    best run leaves after the parts' best runs, an estimate that includes the picks' ratings
    and explanations), the ranking GEMM's own rate, and ``faiss``'s exact
    inner-product search on the same adapted user vectors and item vectors (on the CPU:
    faiss-cpu is a CPU peer, so a GPU run reports it for reference only)."""
    from metarec.checkpoint import read_checkpoint
    from metarec.io import read_parquet
    from metarec.meta.predictor import catalogue_blocks
    from metarec.scoring.engine import CELLS

    vocab = read_checkpoint(root / "models" / "maml.pt")["vocab"]
    users = encode_entity(read_parquet(root / "validated" / "users.parquet"), "user_id",
                          vocab["users"])
    items = encode_entity(read_parquet(root / "validated" / "items.parquet"), "item_id",
                          vocab["items"])
    data = EpisodeData(tasks=pd.DataFrame(), users=users, items=items, vocab=vocab)
    predictor = load_model(root / "models" / "maml.pt", data)
    predictor.store.to(device)           # in place: the algorithm's catalogue sees it too
    predictor.learner.to(device)
    rng = np.random.default_rng(1)
    sup = torch.from_numpy(_supports(rng, n_users, n_items))               # (U, K)
    ratings = torch.from_numpy(rng.integers(1, 6, (n_users, K)).astype(np.float32))
    mask = torch.ones((n_users, K), dtype=torch.bool)
    user_idx = torch.arange(n_users) % len(users)

    def batch_of(a: int, b: int):  # noqa: ANN202 - tiny helper
        return task_batch(user_idx[a:b], sup[a:b], ratings[a:b], mask[a:b])

    def chunk_run(a: int, b: int, no: int) -> torch.Tensor:
        rows = torch.arange(b - a).repeat_interleave(K)
        return recommend_chunk(predictor, batch_of(a, b), no, rows, sup[a:b].reshape(-1),
                               TOP)[0]

    def timed_runs() -> tuple[list[float], list[torch.Tensor]]:
        """REPS timings of every chunk, and the last run's picks."""
        runs, tops = [], []
        for _ in range(REPS):
            _sync(device)
            start = time.perf_counter()
            tops = [chunk_run(a, min(a + chunk, n_users), no)  # each ends on the CPU: synced
                    for no, a in enumerate(range(0, n_users, chunk))]
            runs.append(time.perf_counter() - start)
        return runs, tops

    chunk_run(0, min(chunk, n_users), 0)  # warm-up
    runs, tops = timed_runs()
    seconds = min(runs)
    # the same work with the PyTorch top K (what GPUs run, and the CPU before the kernel)
    from metarec.scoring import engine
    compiled_path = engine.top_k_blocks
    engine.top_k_blocks = functools.partial(compiled_path, compiled=False)
    try:
        torch_runs, _ = timed_runs()
    finally:
        engine.top_k_blocks = compiled_path

    # the same work in parts: adaptation, catalogue scores alone (the ranking GEMM), and the
    # query vectors the dot model ranks with (score = query . [v, rbias, 1])
    algo, table = predictor.learner, predictor._table()
    keys = PreferenceNet.item_keys(table, algo.rank_output)                  # (N, d + 2)
    adapt_runs, gemm_runs = [], []
    for _ in range(REPS):                  # each part's best of REPS, like the whole
        adapt_s = gemm_s = 0.0
        queries = []
        for no, a in enumerate(range(0, n_users, chunk)):
            _sync(device)
            t0 = time.perf_counter()
            state = predictor.adapt(batch_of(a, min(a + chunk, n_users)), no)
            _sync(device)
            t1 = time.perf_counter()
            with torch.no_grad():
                for _ in catalogue_blocks(algo, state[0]["rank"], state[1], table, CELLS,
                                          reuse=True):
                    pass
                _sync(device)
                gemm_s += time.perf_counter() - t1
                queries.append(algo.catalogue_queries(state[0]["rank"], state[1], table).cpu())
            adapt_s += t1 - t0
        adapt_runs.append(adapt_s)
        gemm_runs.append(gemm_s)
    adapt_s, gemm_s = min(adapt_runs), min(gemm_runs)
    d = keys.shape[1]
    result: dict[str, object] = {
        "users_per_s": n_users / seconds, "seconds": seconds, "runs_seconds": runs,
        "pytorch_top_k": {"users_per_s": n_users / min(torch_runs),
                          "runs_seconds": torch_runs},
        "adapt_seconds": adapt_s,
        "catalogue_scores_seconds": gemm_s,
        "top_k_seconds": max(seconds - adapt_s - gemm_s, 0.0),
        "ranking_gemm_gflops": 2 * d * n_items * n_users / gemm_s / 1e9}
    f = flops_per_user(d - 2, algo.model.user_width, algo.model.item_width, K, STEPS, n_items)
    result.update({"gflops": f * n_users / seconds / 1e9, "flops_per_user": f})
    result["faiss"] = faiss_search(torch.cat(queries), keys.cpu(), sup, torch.cat(tops), chunk)
    return result


def faiss_search(q: torch.Tensor, keys: torch.Tensor, sup: torch.Tensor,
                 ours_top: torch.Tensor, chunk: int) -> dict[str, object]:
    """faiss-cpu's exact ``IndexFlatIP`` on the same vectors and threads: the top
    ``TOP + K`` per user (faiss cannot exclude the support), then the support filtered out;
    its users/s excludes the adaptation that produced the query vectors (ours includes it),
    and ``agreement`` is the share of our top-``TOP`` it returns too."""
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss-cpu is not installed (pip install -e '.[bench]')"}
    faiss.omp_set_num_threads(torch.get_num_threads())
    x = keys.float().contiguous().numpy()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    qn = q.float().contiguous().numpy()
    n_users = len(qn)
    index.search(qn[: min(chunk, n_users)], TOP + K)  # warm-up
    runs = []
    for _ in range(REPS):
        start = time.perf_counter()
        _, found = index.search(qn, TOP + K)                              # (U, TOP + K)
        runs.append(time.perf_counter() - start)
    seconds = min(runs)
    found = torch.from_numpy(found)
    keep = ~(found[:, :, None] == sup[:, None, :]).any(-1)
    hits = [len(set(o.tolist()) & set(f[k][:TOP].tolist()))
            for o, f, k in zip(ours_top[:2000], found[:2000], keep[:2000], strict=True)]
    return {"users_per_s": n_users / seconds, "seconds": seconds, "runs_seconds": runs,
            "k_searched": TOP + K,
            "agreement_top20": sum(hits) / (TOP * len(hits)), "checked_users": len(hits)}


def child(root: Path) -> None:
    """Run the score stage once; print peak RSS (MB) and seconds as JSON."""
    from metarec.stages.score import run

    start = time.perf_counter()
    run(ScoreParams(as_of=AS_OF, active_days=1, model="maml"), root / "validated",
        root / "models", root / "out")
    seconds = time.perf_counter() - start
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the forked
    # copy of the parent, which by now holds the throughput run and the 1M-user world
    rss = vm_hwm_mb()
    print(json.dumps({"peak_rss_mb": rss, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=16_384, help="users in the throughput run")
    ap.add_argument("--items", type=int, default=N_ITEMS, help="catalogue size")
    ap.add_argument("--rss-users", default="10000,100000",
                    help="cold-user counts of the end-to-end stage runs (peak RSS)")
    ap.add_argument("--loss", default="softmax", choices=["softmax", "sampled", "bpr"],
                    help="train.objective.loss of the scored model (its inner loop's ranking "
                         "loss): softmax = the whole catalogue every step")
    ap.add_argument("--device", default="cpu",
                    help="cpu | cuda: where the engine adapts and ranks (benchmarks/gpu.sh)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default results/scoring.json, or scoring_<items>.json)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    chunk = ScoreParams().chunk_users
    out_path = args.out or (RESULT if args.items == N_ITEMS
                            else RESULT.with_name(f"scoring_{args.items}.json"))
    sizes = [int(n) for n in args.rss_users.split(",") if n]
    result: dict[str, object] = {"threads": torch.get_num_threads(), "chunk_users": chunk,
                                 "device": args.device,
                                 "k_interactions": K, "inner_steps": STEPS,
                                 "items": args.items, "top": TOP, "inner_loss": args.loss}
    with tempfile.TemporaryDirectory(prefix="metarec-bench-") as tmp:
        root = Path(tmp) / "throughput"
        make_world(root, 10_000, n_items=args.items, loss=args.loss)
        result.update(throughput(root, args.users, chunk, args.items, args.device))
        result["matmul_gflops"] = matmul_gflops(device=args.device)
        rss: dict[str, float] = {}
        stage_s: dict[str, float] = {}
        for n in sizes:
            root = Path(tmp) / str(n)
            make_world(root, n, n_items=args.items, loss=args.loss)
            out = subprocess.run([sys.executable, __file__, "--child", str(root)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"the score stage on {n:,} users failed "
                                 f"(exit {out.returncode}):\n{out.stderr[-3000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            rss[str(n)], stage_s[str(n)] = got["peak_rss_mb"], got["seconds"]
    result["peak_rss_mb"] = rss
    result["stage_seconds"] = stage_s
    result["stage_users_per_s"] = {n: int(n) / s for n, s in stage_s.items()}
    result["gflops_fraction_of_matmul"] = result["gflops"] / result["matmul_gflops"]
    result["ranking_gemm_fraction_of_matmul"] = (result["ranking_gemm_gflops"]
                                                 / result["matmul_gflops"])
    faiss_ups = result["faiss"].get("users_per_s")
    if faiss_ups and args.device == "cpu":   # a peer on the same hardware only
        result["throughput_ratio_over_faiss"] = result["users_per_s"] / faiss_ups
    if len(sizes) >= 2:
        result["rss_ratio_largest_over_smallest"] = rss[str(sizes[-1])] / rss[str(sizes[0])]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
