"""Replayed nights judged on what their users did next (``metarec backtest``).

For every night of the window (``backtest.from_date`` .. ``to_date``, every ``every_days``)
the batch is built exactly as the nightly batch is (:func:`metarec.scoring.batch.recommend`):
the night's world, its cold-start users and, with ``warm``, its active warm users re-adapted
on their latest ``score.dynamic_last`` interactions. Each user's top K is judged against the
relevant items the user interacted with in the following ``horizon_days`` (items the user
already had are never recommended, so they are not counted): HitRate@K, Recall@K (hits /
relevant items) and nDCG@K (binary gain, ideal DCG of min(relevant, K) hits).

Peers, on the same nights and users:

- ``static``: the same model adapted once: a warm user keeps the model of its first
  ``max_interactions`` interactions (what a batch without re-adaptation serves it);
- ``baseline``: the strongest non-meta model by validation nDCG (``metrics/selection.json``),
  given the same interactions as the nightly batch;
- ``popularity``: the items with most interactions in the ``popularity_days`` before the night
  (ties by item id), minus the user's own.

No leakage: the models were trained on nothing at or after the first judged second. A window
whose first night ends before the latest interaction of the episodes' meta-train and
validation rows is refused, as is a night whose horizon runs past the end of the log. With
``retrain_every_days``, the nights are served by models retrained on the log as it stood on
the latest retrain point (:mod:`metarec.scoring.retrain`) instead, and the window may start
anywhere.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from metarec import algorithms
from metarec.config import BacktestParams, ScoreParams, TableSource, ValidateParams
from metarec.errors import ParamsError
from metarec.eval.bootstrap import paired_bootstrap
from metarec.io import read_json, read_parquet
from metarec.scoring import retrain
from metarec.scoring.batch import check_day, landing_check, recommend, resolve
from metarec.scoring.world import DAY, World, day_end, landing_files, parse_as_of

METHODS = ("model", "static", "baseline", "popularity")
METRICS = ("hit_rate", "recall", "ndcg")
KINDS = ("cold", "warm")


def nights(p: BacktestParams) -> list[str]:
    """The replayed nights, ``from_date`` to ``to_date`` every ``every_days`` (inclusive)."""
    if p.from_date is None or p.to_date is None:
        raise ParamsError("backtest.from_date and backtest.to_date: set both (YYYY-MM-DD)")
    first, last = parse_as_of(p.from_date), parse_as_of(p.to_date)
    if last < first:
        raise ParamsError(f"backtest.to_date {last} is before backtest.from_date {first}")
    n = (last - first).days // p.every_days + 1
    return [(first + dt.timedelta(days=i * p.every_days)).isoformat() for i in range(n)]


def trained_until(episodes_dir: str | Path) -> int:
    """The first second after every interaction the models were trained or tuned on (the
    meta-train and validation task rows and the training history of the episodes)."""
    folder = Path(episodes_dir)
    tasks = read_parquet(folder / "episodes.parquet")
    seen = tasks.loc[tasks["split"].isin(["train", "val"]), "timestamp"]
    hist = read_parquet(folder / "history.parquet")["timestamp"]
    return int(max(seen.max(), hist.max() if len(hist) else seen.max())) + 1


def check_window(days: list[str], p: BacktestParams, trained_end: int, log_end: int) -> None:
    """Refuse nights whose judged days overlap training, or run past the end of the log."""
    first_judged = day_end(parse_as_of(days[0]))
    if first_judged < trained_end:
        last_day = dt.datetime.fromtimestamp(trained_end - 1, dt.UTC).date()
        raise ParamsError(
            f"backtest.from_date {days[0]}: the window overlaps the training period (the "
            f"models saw interactions up to {last_day}); start the window on {last_day} or "
            "later")
    horizon_end = day_end(parse_as_of(days[-1])) + p.horizon_days * DAY
    if horizon_end > log_end:
        last_day = dt.datetime.fromtimestamp(log_end - 1, dt.UTC).date()
        raise ParamsError(
            f"backtest.to_date {days[-1]}: its {p.horizon_days}-day horizon runs past the end "
            f"of the log ({last_day}); end the window {p.horizon_days} days before it")


def peers(selection: dict[str, Any] | None, model: str) -> str | None:
    """The non-meta model with the highest validation nDCG other than ``model``."""
    scores = (selection or {}).get(f"val_{(selection or {}).get('metric', '')}", {})
    baselines = set(algorithms.names("baseline")) - {model}
    ranked = sorted(((v, n) for n, v in scores.items() if n in baselines and v == v),
                    reverse=True)
    return ranked[0][1] if ranked else None


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every night of a backtest shares."""

    params: BacktestParams
    score: ScoreParams           # top_k = k, dynamic = warm, as_of set per night
    validated_dir: str
    models_dir: str
    selection: str | None
    nights: list[str]
    model: str
    baseline: str | None
    threshold: float
    training: retrain.Training | None = None   # what retraining needs
    validate: ValidateParams = ValidateParams()   # the rules landing rows go through
    landing_format: TableSource = TableSource()

    def resolve(self, day: str, model: str | None = None) -> Any:
        """The batch inputs of ``day`` (:func:`metarec.scoring.batch.resolve`) served by
        ``model`` (default: the backtested one) with the checkpoints of :meth:`models_for`;
        retrained models serve from the seed they were retrained with."""
        models = self.models_for(day)
        inputs = resolve(self.score, self.validated_dir, models, day, self.selection,
                         self.validate, self.landing_format)
        name = model or self.model
        steps = (inputs.selection or {}).get("inner_steps", {}).get(str(inputs.seed), {})
        inputs = dataclasses.replace(inputs, model=name, steps=steps.get(name))
        if models != self.models_dir and self.training is not None:
            inputs = dataclasses.replace(inputs, seed=self.training.train.seeds[0])
        return inputs

    def models_for(self, day: str) -> str:
        """The checkpoints that serve ``day``: params' models, or those retrained on the log
        up to the night's retrain point."""
        if self.params.retrain_every_days is None or self.training is None:
            return self.models_dir
        at = retrain.point(self.nights[0], day, self.params.retrain_every_days)
        served = (self.model,) if self.baseline is None else (self.model, self.baseline)
        return str(retrain.models_at(self.training, self.validated_dir, served, at))


def plan(p: BacktestParams, score: ScoreParams, training: retrain.Training | None,
         validated_dir: str | Path, episodes_dir: str | Path, models_dir: str | Path,
         selection: str | Path | None, validate: ValidateParams | None = None,
         landing_format: TableSource | None = None) -> Plan:
    """Check the window against training and the log; resolve the model and its peers."""
    days = nights(p)
    if p.retrain_every_days is not None and training is None:
        raise ParamsError("backtest.retrain_every_days needs the episodes, model and train "
                          "params")
    score = dataclasses.replace(score, top_k=p.k, dynamic=p.warm)
    fmt = landing_format or TableSource()
    inputs = resolve(score, validated_dir, models_dir, days[0], selection, validate, fmt)
    log = read_parquet(inputs.tables["interactions"])
    stamps = [log["timestamp"]]
    landing = landing_files(score.landing_dir, dt.date.max)
    if landing:      # the landing rows that pass validation extend the log
        stamps.append(landing_check(inputs, landing).kept.column("timestamp").to_pandas())
    # retrained models see nothing after their retrain point: only the log's end can bind
    trained_end = 0 if p.retrain_every_days is not None else trained_until(episodes_dir)
    check_window(days, p, trained_end, max(int(s.max()) + 1 for s in stamps if len(s)))
    vocab = read_json(Path(episodes_dir) / "vocab.json")
    return Plan(p, score, str(validated_dir), str(models_dir),
                str(selection) if selection is not None else None, days, inputs.model,
                peers(inputs.selection, inputs.model), float(vocab["rating"]["relevant"]),
                training, inputs.validate, fmt)


def judge_night(pl: Plan, day: str) -> pd.DataFrame:
    """Per (user, method) metrics of one night: night, user_id, kind, method, hit_rate,
    recall, ndcg, relevant (the user's relevant future items). Users without a relevant
    future item are left out (counted by :func:`summarise` through ``scored``)."""
    with tempfile.TemporaryDirectory(prefix="metarec-backtest-") as tmp:
        inputs = check_day(pl.resolve(day), tmp)
        tables = {"model": recommend(inputs)[0].to_pandas()}
        if pl.params.warm:
            tables["static"] = recommend(inputs, warm_support="first")[0].to_pandas()
        if pl.baseline is not None:
            base = dataclasses.replace(pl.resolve(day, pl.baseline), checked=inputs.checked)
            tables["baseline"] = recommend(base)[0].to_pandas()
        end = inputs.end
        horizon = end + pl.params.horizon_days * DAY
        later = landing_files(pl.score.landing_dir,
                              parse_as_of(day) + dt.timedelta(pl.params.horizon_days))
        rows = landing_check(inputs, later).kept if later else None
    with World(inputs.tables["interactions"], rows, horizon,
               pl.score.engine_memory_mb) as judged:
        world = judged.frame()
    past = world[world["timestamp"].to_numpy() < end]
    users = tables["model"].drop_duplicates("user_id")[["user_id", "kind"]]
    tables["popularity"] = _popularity(past, users, end, pl.params)
    future = world[(world["timestamp"].to_numpy() >= end)
                   & (world["rating"].to_numpy() >= pl.threshold)]
    relevant = _new_pairs(future, past, users["user_id"])
    frames = [_judge(t, relevant, pl.params.k).assign(method=m) for m, t in tables.items()]
    out = pd.concat(frames, ignore_index=True)
    out = out.merge(users, on="user_id", how="left")
    out["kind"] = np.where(out["kind"] == "cold", "cold", "warm")
    # a cold user's support is the same either way: "adapted once" is judged on warm users only
    out = out[~((out["method"] == "static") & (out["kind"] == "cold"))].reset_index(drop=True)
    out.insert(0, "night", day)
    return out[["night", "user_id", "kind", "method", *METRICS, "relevant"]]


def _new_pairs(future: pd.DataFrame, past: pd.DataFrame, users: pd.Series) -> pd.DataFrame:
    """Distinct (user_id, item_id) of ``future`` for ``users``, minus pairs seen in ``past``."""
    f = future[future["user_id"].isin(users)][["user_id", "item_id"]].drop_duplicates()
    seen = past[past["user_id"].isin(users)][["user_id", "item_id"]].drop_duplicates()
    both = f.merge(seen, on=["user_id", "item_id"], how="left", indicator=True)
    return both.loc[both["_merge"] == "left_only", ["user_id", "item_id"]]


def _judge(recs: pd.DataFrame, relevant: pd.DataFrame, k: int) -> pd.DataFrame:
    """HitRate@k, Recall@k and nDCG@k per user of ``recs`` with a relevant future item."""
    n_rel = relevant.groupby("user_id", observed=True).size().rename("relevant")
    top = recs.loc[recs["rank"] <= k, ["user_id", "item_id", "rank"]]
    hit = top.merge(relevant.assign(hit=1.0), on=["user_id", "item_id"], how="left")
    hit["hit"] = hit["hit"].fillna(0.0)
    hit["gain"] = hit["hit"] / np.log2(hit["rank"].to_numpy() + 1.0)
    per = hit.groupby("user_id", observed=True).agg(hits=("hit", "sum"), dcg=("gain", "sum"))
    per = per.join(n_rel, how="inner")
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    per["hit_rate"] = (per["hits"] > 0).astype(float)
    per["recall"] = per["hits"] / per["relevant"]
    per["ndcg"] = per["dcg"] / ideal[np.minimum(per["relevant"].to_numpy(), k)]
    return per.reset_index()[["user_id", *METRICS, "relevant"]]


def _popularity(past: pd.DataFrame, users: pd.DataFrame, end: int, p: BacktestParams
                ) -> pd.DataFrame:
    """Each user's top K of the recent-popularity order, minus the user's own items."""
    recent = past[past["timestamp"].to_numpy() >= end - p.popularity_days * DAY]
    counts = recent.groupby("item_id", observed=True).size()
    order = counts.reset_index(name="n").sort_values(["n", "item_id"], ascending=[False, True],
                                                     kind="stable")["item_id"].to_numpy()
    seen = past[past["user_id"].isin(users["user_id"])][["user_id", "item_id"]]
    most = int(seen.groupby("user_id", observed=True).size().max()) if len(seen) else 0
    head = order[:p.k + most]                     # a user's top K always lies in this head
    u = users["user_id"].to_numpy(dtype=object)
    grid = pd.DataFrame({"user_id": np.repeat(u, len(head)),
                         "item_id": np.tile(head, len(u)),
                         "pos": np.tile(np.arange(len(head)), len(u))})
    grid = grid.merge(seen.drop_duplicates().assign(seen=True), on=["user_id", "item_id"],
                      how="left")
    grid = grid[grid["seen"].isna()].sort_values(["user_id", "pos"], kind="stable")
    grid["rank"] = grid.groupby("user_id", sort=False).cumcount() + 1
    return grid.loc[grid["rank"] <= p.k, ["user_id", "rank", "item_id"]]


def summarise(pl: Plan, rows: pd.DataFrame) -> dict[str, Any]:
    """Per-night means, and over the window each user's mean over the nights that judged it,
    compared pairwise (paired bootstrap over users) on the users every method judged."""
    p = pl.params
    names = {"model": pl.model, "static": f"{pl.model} (adapted once)",
             "baseline": pl.baseline, "popularity": f"recent popularity ({p.popularity_days} d)"}
    per_night = []
    for (night, kind), g in rows.groupby(["night", "kind"], sort=True):
        per_night.append({"night": night, "kind": kind, "users": int(g["user_id"].nunique()),
                          **{m: {x: round(float(h[x].mean()), 6) for x in METRICS}
                             for m, h in g.groupby("method", sort=False)}})
    overall: dict[str, Any] = {}
    comparisons = []
    for kind in KINDS:
        g = rows[rows["kind"] == kind]
        if g.empty:
            continue
        per_user = g.groupby(["method", "user_id"], observed=True)[list(METRICS)].mean()
        methods = [m for m in METHODS if m in per_user.index.get_level_values(0)]
        wide = {m: per_user.loc[m] for m in methods}
        common = sorted(set.intersection(*(set(w.index) for w in wide.values())))
        overall[kind] = {"users": len(common), **{
            m: {x: round(float(wide[m].loc[common, x].mean()), 6) for x in METRICS}
            for m in methods}}
        pairs = [("model", "static")] if kind == "warm" and "static" in methods else []
        pairs += [("model", m) for m in ("baseline", "popularity") if m in methods]
        for a, b in pairs:
            for x in ("ndcg", "recall"):
                r = paired_bootstrap(torch.tensor(wide[a].loc[common, x].to_numpy()),
                                     torch.tensor(wide[b].loc[common, x].to_numpy()),
                                     p.bootstrap_samples, p.seed, p.bootstrap_confidence)
                comparisons.append({"kind": kind, "model": a, "versus": b, "metric": x,
                                    "diff": round(r.diff, 6), "low": round(r.low, 6),
                                    "high": round(r.high, 6), "p_value": round(r.p_value, 4),
                                    "users": r.n_users})
    return {"window": {"from": pl.nights[0], "to": pl.nights[-1], "every_days": p.every_days,
                       "nights": len(pl.nights), "horizon_days": p.horizon_days, "k": p.k,
                       "retrain_every_days": p.retrain_every_days},
            "methods": names, "relevance_threshold": pl.threshold,
            "confidence": p.bootstrap_confidence,
            "judged_rows": int(len(rows)), "overall": overall, "comparisons": comparisons,
            "per_night": per_night}


def plot(summary: dict[str, Any], path: str | Path) -> Path:
    """nDCG@K per night and method, one panel per user kind (a ``dvc plots`` image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if k in summary["overall"]] or ["cold"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        nights_ = [r for r in summary["per_night"] if r["kind"] == kind]
        for m in METHODS:
            pts = [(dt.date.fromisoformat(r["night"]), r[m]["ndcg"]) for r in nights_ if m in r]
            if pts:
                ax.plot([d for d, _ in pts], [v for _, v in pts], marker="o",
                        label=summary["methods"][m])
        ax.set_title(f"{kind} users: nDCG@{summary['window']['k']} on the next "
                     f"{summary['window']['horizon_days']} days")
        ax.set_xlabel("night")
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def markdown(summary: dict[str, Any]) -> str:
    """The window's table (a Prefect artifact and the README's block)."""
    w, names = summary["window"], summary["methods"]
    lines = [f"Backtest {w['from']} .. {w['to']} ({w['nights']} nights, every "
             f"{w['every_days']} d), judged on the next {w['horizon_days']} days, K={w['k']}.",
             "", "| users | method | HitRate | Recall | nDCG |", "|---|---|---|---|---|"]
    for kind, block in summary["overall"].items():
        for m in METHODS:
            if m in block:
                v = block[m]
                lines.append(f"| {kind} ({block['users']}) | {names[m]} | {v['hit_rate']:.3f} | "
                             f"{v['recall']:.3f} | {v['ndcg']:.3f} |")
    level = f"{summary['confidence']:.0%}"
    lines += ["", f"| users | comparison | metric | diff | {level} CI |", "|---|---|---|---|---|"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['kind']} | {names[c['model']]} - {names[c['versus']]} | "
                     f"{c['metric']} | {c['diff']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] |")
    return "\n".join(lines) + "\n"


__all__ = ["Plan", "check_window", "judge_night", "markdown", "nights", "peers",
           "plan", "plot", "summarise", "trained_until"]
