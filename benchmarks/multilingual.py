"""Items in many languages: no text, hashed n-grams and the semantic encoder on new items.

    .venv/bin/python benchmarks/multilingual.py [--only multilingual|ml100k]
                                                [--out benchmarks/results/multilingual.json]

Two data sets: the multilingual catalogue (``benchmarks/params/multilingual.yaml``: a
synthetic log whose items are described in six languages, taste planted on the topics, new
items in a language their topic never used before; :mod:`metarec.data.sources.multilingual`)
and ML-100K titles (``benchmarks/params/ml100k_multilingual.yaml``). For each, and for each
encoder (``hashed``, ``use-multilingual``), the params file is overlaid on the project's
``params.yaml`` and the stage commands run up to ``evaluate`` (:func:`platforms.run_stages`),
with ``train.text_ablation: true``: the evaluation's own ``metrics/eval.json: text`` rows are
each meta-learner with the encoder against itself without text (``none``), paired bootstrap
CI over test users. Semantic against hashed, two runs on the same test tasks: each run's
per-user values come from the evaluate stage's own group job (:func:`group_job`, the inner
steps it chose on validation) and go through the same paired bootstrap
(:func:`compare_views`).

On the catalogue, the cross-lingual check (:func:`cross_lingual`): for each new item, the
item-cold test users whose support holds a liked item of the same topic described in another
language against those whose support holds no liked item of that topic; AUC of the new
item's rank among the new items in each user's ranking (0.5: the model cannot tell them
apart). Its mean over new items in a language their topic's existing items used (seen) and
in one they never used (unseen): the goal is an unseen margin above 0.5 of at least 90% of
the seen one. Writes ``benchmarks/results/multilingual.json``; README's table is generated
from it by ``benchmarks/table.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from platforms import run_stages

from metarec.data.tasks import load_episodes
from metarec.data.text import USE_MULTILINGUAL
from metarec.data.views import NOTEXT, SEP
from metarec.eval.compare import compare_views
from metarec.eval.evaluation import Inputs, group_job
from metarec.eval.groups import TestGroup, groups_of
from metarec.eval.scoring import eligible_items
from metarec.params import overlaid, parse

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"multilingual": ROOT / "benchmarks" / "params" / "multilingual.yaml",
            "ml100k": ROOT / "benchmarks" / "params" / "ml100k_multilingual.yaml"}
RESULT = ROOT / "benchmarks" / "results" / "multilingual.json"
ENCODERS = ("hashed", USE_MULTILINGUAL)
SCENARIOS = ("item_cold", "user_item_cold")
GOAL_MARGIN = 0.9     # unseen-language AUC margin >= 90% of the seen-language one


def cross_lingual(percentile: np.ndarray, liked: np.ndarray, topic: np.ndarray,
                  language: np.ndarray) -> np.ndarray:
    """(J,) AUC per new item: does a user who liked its topic in another language rank it
    higher than a user who liked nothing of its topic?

    ``percentile`` (T, J): each new item's place in each task's ranking of the new items
    (1 = first); ``liked`` (T, topics, languages) bool: the task's support holds a relevant
    item of that topic described in that language; ``topic``, ``language`` (J,) codes of the
    new items. NaN where either group of users is empty. Ties count one half (average ranks).
    """
    by_topic = liked[:, topic, :]                                       # (T, J, languages)
    own = np.take_along_axis(by_topic, language[None, :, None], axis=2)[..., 0]   # (T, J)
    positive = by_topic.sum(axis=2) > own                  # liked it in another language
    negative = ~by_topic.any(axis=2)                       # liked nothing of its topic
    n_pos, n_neg = positive.sum(axis=0), negative.sum(axis=0)
    # Mann-Whitney: ranks among the users of either group (the others left out as NaN)
    ranks = pd.DataFrame(np.where(positive | negative, percentile, np.nan)).rank(
        axis=0, method="average").to_numpy()
    u = np.nansum(np.where(positive, ranks, 0.0), axis=0) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _placement(scores: torch.Tensor, new: np.ndarray) -> np.ndarray:
    """(T, J) each new item's place in each task's ranking of the new items: the share of
    the other new items it beats (ties one half); 1 = first."""
    s = pd.DataFrame(scores[:, torch.from_numpy(new)].double().numpy().T)
    ranks = s.rank(axis=0, method="average").to_numpy().T                # (T, J), 1 = lowest
    return (ranks - 1) / max(len(new) - 1, 1)


def _liked(data: Any, batch: Any, truth: pd.DataFrame) -> tuple[np.ndarray, dict[str, Any]]:
    """(T, topics, languages) bool: the relevant support items of each task, by the planted
    topic and language of their description; and the code books."""
    topics = sorted(truth["topic"].unique())
    languages = sorted(truth["language"].unique())
    by_id = truth.set_index("item_id")
    ids = np.asarray(data.items.ids, dtype=object)
    t_code = by_id.loc[ids, "topic"].map({t: i for i, t in enumerate(topics)}).to_numpy()
    l_code = by_id.loc[ids, "language"].map({v: i for i, v in enumerate(languages)}).to_numpy()
    items = batch.support_items.numpy()
    rel = (batch.support_mask & (batch.support_ratings >= data.relevance_threshold)).numpy()
    out = np.zeros((len(items), len(topics), len(languages)), dtype=bool)
    task, pos = np.nonzero(rel)
    out[task, t_code[items[task, pos]], l_code[items[task, pos]]] = True
    return out, {"topics": topics, "languages": languages, "topic": t_code,
                 "language": l_code}


def cross_lingual_check(runs: dict[str, Path], params: Any, truth: pd.DataFrame
                        ) -> list[dict[str, Any]]:
    """Per encoder (none = a run's ``~notext`` models), meta-learner and K: the mean AUC of
    :func:`cross_lingual` over new items in a seen and in an unseen language (seed-averaged
    per item), with the number of new items that have both groups of users."""
    out = []
    unseen_of = truth.set_index("item_id")["unseen_language"]
    arms = [(USE_MULTILINGUAL, runs[USE_MULTILINGUAL], ""), ("hashed", runs["hashed"], ""),
            ("none", runs["hashed"], NOTEXT)]
    for arm, cwd, want_view in arms:
        data = load_episodes(cwd / "data" / "episodes")
        inputs = Inputs(data, cwd / "models")
        ev = json.loads((cwd / "metrics" / "eval.json").read_text())
        new = np.flatnonzero(eligible_items("item_cold", params.evaluate,
                                            data.items.id_code).numpy())
        unseen = unseen_of.loc[np.asarray(data.items.ids, dtype=object)[new]].to_numpy()
        ks = sorted({g.k for g in groups_of(data) if g.label == "item_cold" and g.k is not None})
        for k in ks:
            batch = TestGroup("item_cold", k).batch(data)
            liked, codes = _liked(data, batch, truth)
            per_model: dict[str, list[np.ndarray]] = {}
            for seed, models in inputs.models().items():
                chosen = ev["choices"][str(seed)]["inner_steps"]
                for name, model in models.items():
                    algorithm, _, view = name.partition(SEP)
                    if algorithm not in params.train.algorithms or view != want_view:
                        continue
                    if name in chosen:
                        model.set_steps(rate=chosen[name]["steps"],
                                        rank=chosen[name]["rank_steps"])
                    scores = model.rank(model.adapt(batch))                   # (T, N)
                    auc = cross_lingual(_placement(scores, new), liked,
                                        codes["topic"][new], codes["language"][new])
                    per_model.setdefault(algorithm, []).append(auc)
            for name, aucs in sorted(per_model.items()):
                auc = np.mean(aucs, axis=0)
                row = {"encoder": arm, "model": name, "k": k, "tasks": len(batch)}
                for group, mask in (("seen", ~unseen), ("unseen", unseen)):
                    ok = mask & np.isfinite(auc)
                    row[f"auc_{group}"] = round(float(auc[ok].mean()), 6) if ok.any() else None
                    row[f"items_{group}"] = int(ok.sum())
                out.append(row)
    return out


def per_user(cwd: Path, params: Any) -> dict:
    """The evaluate stage's per-user values of every model of the run in ``cwd`` on the
    item-cold and user-and-item-cold test groups, with the inner steps it chose."""
    ev = json.loads((cwd / "metrics" / "eval.json").read_text())
    inputs = Inputs(load_episodes(cwd / "data" / "episodes"), cwd / "models")
    steps = {int(seed): {name: (r["steps"], r["rank_steps"])
                         for name, r in c["inner_steps"].items()}
             for seed, c in ev["choices"].items() if seed.isdigit()}
    values: dict = {}
    for group in groups_of(inputs.data):
        if group.label in SCENARIOS:
            values.update(group_job(inputs, params.evaluate, group, steps, {})[1])
    return values


def nearest_topic(vectors: np.ndarray, topic: np.ndarray, train: np.ndarray,
                  test: np.ndarray) -> np.ndarray:
    """(len(test),) bool: whether each test row's vector is nearest (cosine) to the mean
    vector of the training rows of its own topic."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    topics = np.unique(topic[train])
    centres = np.stack([unit[train & (topic == t)].mean(axis=0) for t in topics])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    return topics[np.argmax(unit[test] @ centres.T, axis=1)] == topic[test]


def text_alone(runs: dict[str, Path], truth: pd.DataFrame) -> dict[str, Any]:
    """What the text vectors tell of a new item's topic before any model: the share of new
    items (seen / unseen language) whose vector is nearest the centre of the training
    items of their own topic; for hashed, the semantic encoder's 512 numbers and its
    projection to ``text_dim`` (the vocabulary's, fitted on the training items)."""
    from metarec.data.encoding import encode_entity

    out: dict[str, Any] = {}
    for encoder in ENCODERS:
        data = load_episodes(runs[encoder] / "data" / "episodes")
        ids = np.asarray(data.items.ids, dtype=object)
        known = np.isin(ids, np.asarray(data.vocab["items"]["ids"], dtype=object))
        facts = truth.set_index("item_id").loc[ids]
        topic = facts["topic"].to_numpy()
        unseen = facts["unseen_language"].to_numpy()
        new = facts["new"].to_numpy() & ~known
        cols = [j for j, c in enumerate(data.items.num_names) if c.startswith("description#")]
        views = {encoder: data.items.numeric[:, cols].numpy()}
        if encoder == USE_MULTILINGUAL:                   # the same, before the projection
            vocab = json.loads(json.dumps(data.vocab["items"]))
            del vocab["features"]["description"]["projection"]
            items = pd.read_parquet(runs[encoder] / "data" / "episodes" / "items.parquet")
            whole = encode_entity(items, "item_id", vocab)
            views[f"{encoder} (512, unprojected)"] = whole.numeric[:, [
                j for j, c in enumerate(whole.num_names) if c.startswith("description#")]
            ].numpy()
        for name, vecs in views.items():
            out[name] = {group: round(float(nearest_topic(vecs, topic, known,
                                                          new & mask).mean()), 4)
                         for group, mask in (("seen", ~unseen), ("unseen", unseen))}
    return out


def _text_rows(ev: dict, encoder: str) -> list[dict[str, Any]]:
    """The evaluation's own with/without-text rows of the scenarios compared here."""
    return [{**{k: v for k, v in r.items() if k != "view"},
             "comparison": f"{encoder} - none"} for r in ev.get("text", [])
            if r["scenario"] in SCENARIOS]


def run_dataset(name: str, path: Path, tmp: Path) -> dict[str, Any]:
    """Both encoders' runs of one data set, their comparisons and (catalogue) the check."""
    runs, seconds, rows = {}, {}, []
    base = overlaid(yaml.safe_load((ROOT / "params.yaml").read_text()),
                   yaml.safe_load(path.read_text()))
    for encoder in ENCODERS:
        raw = overlaid(base, {"episodes": {"text_encoder": encoder},
                             "train": {"text_ablation": True}})
        cwd = tmp / name / encoder
        cwd.mkdir(parents=True)
        (cwd / "merged.yaml").write_text(yaml.safe_dump(raw, sort_keys=False,
                                                        allow_unicode=True))
        print(f"{name}, {encoder}:", flush=True)
        seconds[encoder] = run_stages(cwd / "merged.yaml", cwd)
        runs[encoder] = cwd
        ev = json.loads((cwd / "metrics" / "eval.json").read_text())
        rows += _text_rows(ev, encoder)
    params = parse(base | {"episodes": {**base["episodes"], "text_encoder": "hashed"}})
    semantic, hashed = (per_user(runs[e], params) for e in (USE_MULTILINGUAL, "hashed"))
    meta = set(params.train.algorithms)            # the baselines read no text
    paired = {key: v for key, v in semantic.items() if key[0] in meta}
    paired.update({(key[0] + SEP + "hashed", *key[1:]): v for key, v in hashed.items()
                   if key[0] in meta})
    metric = f"ndcg@{params.evaluate.catalogue_k}"
    for r in compare_views(paired, metric, params.evaluate):
        rows.append({**{k: v for k, v in r.items() if k != "view"},
                     "comparison": f"{USE_MULTILINGUAL} - hashed"})
    # the runs' models without text are the same models: the same per-user values
    same = all(bool(((a[metric] == b[metric]) | (a[metric].isnan() & b[metric].isnan())).all())
               for key in semantic if key[0].endswith(SEP + NOTEXT)
               for a, b in zip(semantic[key], hashed[key], strict=True))
    report = {"params": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT)
              else str(path), "dataset": base["ingest"]["source"],
              "seeds": base["train"]["seeds"], "algorithms": base["train"]["algorithms"],
              "item_id_dropout": base["train"].get("item_id_dropout", 0.0),
              "text_dim": base["episodes"]["text_dim"], "catalogue_metric": metric,
              "item_cold_catalogue": base["evaluate"]["item_cold_catalogue"],
              "confidence": params.evaluate.bootstrap_confidence,
              "none_identical_across_runs": bool(same), "rows": rows, "seconds": seconds}
    if base["ingest"]["source"] == "synthetic" and base["ingest"]["synthetic"]["text"][
            "languages"]:
        from metarec.data.sources.synthetic import described_catalogue

        truth = described_catalogue(params.ingest.synthetic)
        report["cross_lingual"] = cross_lingual_check(runs, params, truth)
        report["text_alone"] = text_alone(runs, truth)
    return report


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, read from the results: on the catalogue, the semantic encoder
    beats hashed and none on item-cold nDCG with the CI above 0 at every K (per model), and
    new items in an unseen language placed within 10% of those in a seen one (AUC margins
    above 0.5, per model and K)."""
    cat = report["datasets"].get("multilingual")
    if cat is None:
        return {}
    out: dict[str, Any] = {}
    for model in cat["algorithms"]:
        for other in ("hashed", "none"):
            rows = [r for r in cat["rows"] if r["model"] == model
                    and r["scenario"] == "item_cold"
                    and r["comparison"] == f"{USE_MULTILINGUAL} - {other}"]
            out[f"{model}: beats {other} at every K"] = bool(rows) and all(
                r["ci_low"] > 0 for r in rows)
        checks = [r for r in cat.get("cross_lingual", []) if r["model"] == model
                  and r["encoder"] == USE_MULTILINGUAL]
        out[f"{model}: unseen within 10% of seen at every K"] = bool(checks) and all(
            r["auc_unseen"] - 0.5 >= GOAL_MARGIN * (r["auc_seen"] - 0.5) for r in checks)
    return out


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(DATASETS), action="append")
    ap.add_argument("--params", type=Path, help="one params file of one data set, named by "
                    "its stem, instead of the shipped ones (a smoke run)")
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    start = time.perf_counter()
    old = json.loads(args.out.read_text()) if args.out.exists() else {"datasets": {}}
    report: dict[str, Any] = {"datasets": dict(old.get("datasets", {}))}
    with tempfile.TemporaryDirectory(prefix="metarec-multilingual-") as tmp:
        todo = ({args.params.stem: args.params} if args.params
                else {name: DATASETS[name] for name in args.only or sorted(DATASETS)})
        for name, path in todo.items():
            t0 = time.perf_counter()
            report["datasets"][name] = run_dataset(name, path, Path(tmp))
            report["datasets"][name]["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    report["goals"] = goals(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for name, d in report["datasets"].items():
        for r in d["rows"]:
            if r["scenario"] == "item_cold":
                print(f"{name:12s} {r['model']:8s} {r['comparison']:30s} K={r['k']!s:3s} "
                      f"{r['value_without']:.4f} -> {r['value_with']:.4f} {r['diff']:+.4f} "
                      f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] ({r['users']} users)")
        for r in d.get("cross_lingual", []):
            print(f"{name:12s} cross-lingual {r['encoder']:17s} {r['model']:8s} K={r['k']!s:3s}"
                  f" AUC seen {r['auc_seen']} ({r['items_seen']}) unseen {r['auc_unseen']} "
                  f"({r['items_unseen']})")
    print("goals:", report["goals"], f"({time.perf_counter() - start:.0f} s)")
    return report


if __name__ == "__main__":
    main()
