"""Item text and item-id dropout: the same meta-learners trained with and without each.

    .venv/bin/python benchmarks/text_ablation.py [--params params.yaml] [--algorithms maml]
        [--dropout 0.5]

One ingest and validation of the params' data set (ML-100K by default: titles are a text
feature); then four variants, every other param as in ``--params``:

- ``none``: ``episodes.text_encoder: none``, ``train.item_id_dropout: 0`` (the reference);
- ``text``: ``hashed`` title vectors;
- ``dropout``: item-id dropout ``--dropout`` (DropoutNet: the network learns to place an
  item whose id it does not know by its features);
- ``text+dropout``: both.

Each is trained with the same algorithms and seed; the test tasks of every run are identical
(checked): only the item encoding and the training differ. Each model's test-time inner steps
are chosen on validation tasks, as ``evaluate`` does; test tasks are only scored. The dropout
rate is fixed by the flag, not chosen (the validation tasks hold no new items to choose it
on). Per scenario and K: catalogue nDCG@``catalogue_k`` (item-cold scenarios rank the new
items, ``evaluate.item_cold_catalogue``), nDCG@5 within the task's query items and MAE of
each variant, and a paired bootstrap over test users of (variant - ``none``). Writes
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
from metarec.eval.evaluation import load_models
from metarec.eval.groups import groups_of
from metarec.eval.scoring import catalogue_metric, eligible_items, nanmean, score_batch
from metarec.params import load_params
from metarec.stages import episodes, ingest, train, validate

ROOT = Path(__file__).resolve().parents[1]
RESULT = Path(__file__).parent / "results" / "text_ablation.json"
SCENARIOS = ("item_cold", "user_item_cold", "user_cold", "warm")


def metrics_of(ev: Any) -> list[str]:
    """Catalogue nDCG, the largest query-set nDCG cut-off, MAE."""
    return [catalogue_metric(ev), f"ndcg@{max(ev.query_ndcg_ks)}", "mae"]


def per_user_scores(episodes_dir: Path, models_dir: Path, params: Any
                    ) -> tuple[dict, Any, dict]:
    """{(scenario, k): {model: {metric: per-user values (U,)}}} on the test tasks of one run,
    inner steps chosen on validation; the test tasks (for the identity check); and each
    model's validation catalogue metric (what a choice of encoder may look at)."""
    data = load_episodes(episodes_dir)
    ev = params.evaluate
    metric = catalogue_metric(ev)
    models = load_models(models_dir, data)[params.train.seeds[0]]
    val = to_batch(data.select("val"))
    choose.choose_inner_steps(models, [val], ev.inner_steps_grid, ev,
                              data.relevance_threshold, data.explicit)
    val_scores = {name: round(nanmean(score_batch(m, val, ev, data.relevance_threshold,
                                                  data.explicit)[metric]), 6)
                  for name, m in models.items()}
    out: dict = {}
    for group in groups_of(data):
        scenario, k = group.label, group.k_label
        if scenario not in SCENARIOS:
            continue
        batch = group.batch(data)
        eligible = eligible_items(scenario, ev, data.items.id_code)
        out[(scenario, k)] = {}
        for name, m in models.items():
            vals = score_batch(m, batch, ev, data.relevance_threshold, data.explicit,
                               eligible)
            out[(scenario, k)][name] = {key: vals[key] for key in metrics_of(ev) if key in vals}
    test = data.select("test")[["task_id", "user_id", "item_id", "role", "scenario"]]
    return out, test.reset_index(drop=True), val_scores


VARIANTS = {"none": ("none", False), "text": ("hashed", False),
            "dropout": ("none", True), "text+dropout": ("hashed", True)}


def compare(base: dict, variant: dict, ev: Any) -> list[dict[str, Any]]:
    """Paired bootstrap rows of (variant - reference) per model, scenario, K and metric."""
    rows = []
    for (scenario, k), models in sorted(variant.items(),
                                        key=lambda kv: (kv[0][0], str(kv[0][1]))):
        for (name, metrics), metric in itertools.product(models.items(), metrics_of(ev)):
            if metric not in metrics:
                continue
            new, ref = metrics[metric], base[(scenario, k)][name][metric]
            ok = torch.isfinite(new) & torch.isfinite(ref)
            if ok.sum() < 2:
                continue
            res = paired_bootstrap(new[ok], ref[ok], ev.bootstrap_samples, seed=0,
                                   confidence=ev.bootstrap_confidence)
            rows.append({"model": name, "metric": metric, "scenario": scenario, "k": k,
                         "users": res.n_users, "reference": round(nanmean(ref[ok]), 6),
                         "variant": round(nanmean(new[ok]), 6),
                         "diff": round(res.diff, 6), "ci_low": round(res.low, 6),
                         "ci_high": round(res.high, 6),
                         "ci_excludes_zero": bool(res.low > 0 or res.high < 0)})
    return rows


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--algorithms", default="maml", help="comma-separated meta-learners")
    ap.add_argument("--seed", type=int, default=0, help="training seed (one)")
    ap.add_argument("--dropout", type=float, default=0.5, help="item-id dropout of the "
                    "dropout variants")
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
        for variant, (encoder, dropout) in VARIANTS.items():
            root, ep_dir = Path(tmp) / variant, Path(tmp) / encoder / "episodes"
            ep = replace(p.episodes, text_encoder=encoder)
            tp = replace(p.train, item_id_dropout=args.dropout if dropout else 0.0)
            if not ep_dir.exists():   # one episodes run per encoder
                episodes.run(ep, common / "validated", ep_dir, ep_dir.parent / "data.json")
            train.run(p.model, tp, ep_dir, root / "models", root / "train.json")
            runs[variant] = per_user_scores(ep_dir, root / "models",
                                            replace(p, episodes=ep, train=tp))
            print(f"{variant}: trained and scored ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    base, base_tasks, _ = runs["none"]
    for variant, (_, tasks, _) in runs.items():
        if not base_tasks.equals(tasks):
            raise SystemExit(f"the test tasks of {variant} differ from none's: the comparison "
                             "would not be paired")
    ev = p.evaluate
    report = {"dataset": p.ingest.source, "metrics": metrics_of(ev), "encoder": "hashed",
              "text_dim": p.episodes.text_dim, "item_id_dropout": args.dropout,
              "item_cold_catalogue": ev.item_cold_catalogue,
              "algorithms": list(p.train.algorithms), "seed": args.seed,
              "confidence": ev.bootstrap_confidence, "reference": "none",
              "validation": {v: r[2] for v, r in runs.items()},
              "variants": {v: compare(base, r[0], ev) for v, r in runs.items() if v != "none"},
              "seconds": round(time.perf_counter() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("validation", report["validation"])
    for variant, rows in report["variants"].items():
        for r in rows:
            print(f"{variant:13s} {r['model']:8s} {r['metric']:8s} {r['scenario']:15s} "
                  f"K={r['k']!s:4s} {r['reference']:.4f} -> {r['variant']:.4f}  diff "
                  f"{r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]")
    return report


if __name__ == "__main__":
    main()
