"""Item text as a model input: the same meta-learners trained with and without title vectors.

    .venv/bin/python benchmarks/text_ablation.py [--params params.yaml] [--algorithms maml]

One ingest and validation of the params' data set (ML-100K by default: titles are a text
feature); then the episodes stage twice, ``episodes.text_encoder: none`` and ``hashed``
(every other param as in ``--params``), and the train stage twice with the same algorithms
and seed. The test tasks of both runs are identical (checked): only the item encoding
differs. Each model's test-time inner steps are chosen on validation tasks, as ``evaluate``
does; test tasks are only scored. Per scenario and K: catalogue nDCG@``catalogue_k`` (every
item ranked), nDCG@5 within the task's query items (where a new item competes with the
user's other new items, not with the whole warm catalogue) and MAE of each variant, and a
paired bootstrap over test users of (with text - without). Writes
``benchmarks/results/text_ablation.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from metarec.data.tasks import load_episodes, to_batch
from metarec.eval import choices as choose
from metarec.eval.bootstrap import paired_bootstrap
from metarec.eval.scoring import catalogue_metric, nanmean, score_batch
from metarec.params import load_params
from metarec.stages import episodes, ingest, train, validate
from metarec.stages.evaluate import load_models, test_groups

ROOT = Path(__file__).resolve().parents[1]
RESULT = Path(__file__).parent / "results" / "text_ablation.json"
SCENARIOS = ("item_cold", "user_item_cold", "user_cold", "warm")


def metrics_of(ev: Any) -> list[str]:
    """Catalogue nDCG, the largest query-set nDCG cut-off, MAE."""
    return [catalogue_metric(ev), f"ndcg@{max(ev.query_ndcg_ks)}", "mae"]


def per_user_scores(root: Path, params: Any) -> tuple[dict, Any, dict]:
    """{(scenario, k): {model: {metric: per-user values (U,)}}} on the test tasks of one run,
    inner steps chosen on validation; the test tasks (for the identity check); and each
    model's validation catalogue metric (what a choice of encoder may look at)."""
    data = load_episodes(root / "episodes")
    n_items, ev = len(data.items), params.evaluate
    metric = catalogue_metric(ev)
    models = load_models(root / "models", data)[params.train.seeds[0]]
    val = to_batch(data.select("val"))
    choose.choose_inner_steps(models, val, ev.inner_steps_grid, n_items, ev,
                              data.relevance_threshold, data.explicit)
    val_scores = {name: round(nanmean(score_batch(m, val, n_items, ev, data.relevance_threshold,
                                                  data.explicit)[metric]), 6)
                  for name, m in models.items()}
    out: dict = {}
    for scenario, k in test_groups(data):
        if scenario not in SCENARIOS:
            continue
        batch = to_batch(data.select("test", scenario, None if k == "all" else k))
        out[(scenario, k)] = {}
        for name, m in models.items():
            vals = score_batch(m, batch, n_items, ev, data.relevance_threshold, data.explicit)
            out[(scenario, k)][name] = {key: vals[key] for key in metrics_of(ev) if key in vals}
    test = data.select("test")[["task_id", "user_id", "item_id", "role", "scenario"]]
    return out, test.reset_index(drop=True), val_scores


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--algorithms", default="maml", help="comma-separated meta-learners")
    ap.add_argument("--seed", type=int, default=0, help="training seed (one)")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    p = load_params(args.params)
    p = replace(p, train=replace(p.train, algorithms=tuple(args.algorithms.split(",")),
                                 baselines=(), seeds=(args.seed,)))
    start = time.perf_counter()
    runs: dict[str, tuple[dict, Any, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="metarec-text-") as tmp:
        common = Path(tmp) / "common"
        ingest.run(p.ingest, common / "canonical")
        validate.run(p.validate, common / "canonical", common / "validated",
                     common / "quarantine", common / "report")
        for encoder in ("none", "hashed"):
            root = Path(tmp) / encoder
            ep = replace(p.episodes, text_encoder=encoder)
            episodes.run(ep, common / "validated", root / "episodes", root / "data.json")
            train.run(p.model, p.train, root / "episodes", root / "models", root / "train.json")
            runs[encoder] = per_user_scores(root, replace(p, episodes=ep))
            print(f"{encoder}: trained and scored ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    (base, base_tasks, base_val), (text, text_tasks, text_val) = runs["none"], runs["hashed"]
    if not base_tasks.equals(text_tasks):
        raise SystemExit("the two runs' test tasks differ: the comparison would not be paired")
    ev = p.evaluate
    rows = []
    for (scenario, k), models in sorted(text.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        for (name, metrics), metric in itertools.product(models.items(), metrics_of(ev)):
            if metric not in metrics:
                continue
            with_text, without = metrics[metric], base[(scenario, k)][name][metric]
            ok = torch.isfinite(with_text) & torch.isfinite(without)
            if ok.sum() < 2:
                continue
            res = paired_bootstrap(with_text[ok], without[ok], ev.bootstrap_samples, seed=0,
                                   confidence=ev.bootstrap_confidence)
            rows.append({"model": name, "metric": metric, "scenario": scenario, "k": k,
                         "users": res.n_users,
                         "without_text": round(nanmean(without[ok]), 6),
                         "with_text": round(nanmean(with_text[ok]), 6),
                         "diff": round(res.diff, 6), "ci_low": round(res.low, 6),
                         "ci_high": round(res.high, 6),
                         "ci_excludes_zero": bool(res.low > 0 or res.high < 0)})
    report = {"dataset": p.ingest.source, "metrics": metrics_of(ev),
              "encoder": "hashed", "text_dim": p.episodes.text_dim,
              "algorithms": list(p.train.algorithms), "seed": args.seed,
              "confidence": ev.bootstrap_confidence,
              "validation": {"without_text": base_val, "with_text": text_val},
              "rows": rows,
              "seconds": round(time.perf_counter() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("validation", report["validation"])
    for r in rows:
        print(f"{r['model']:8s} {r['metric']:8s} {r['scenario']:15s} K={r['k']!s:4s} "
              f"{r['without_text']:.4f} -> {r['with_text']:.4f}  diff {r['diff']:+.4f} "
              f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]")
    return report


if __name__ == "__main__":
    main()
