"""Do the item titles say anything about how users take an item, beyond genres and year?

    .venv/bin/python benchmarks/text_signal.py [--params params.yaml] [--min-ratings 10]
                                               [--out benchmarks/results/text_signal.json]

Why: issue 17 asks text vectors to improve catalogue nDCG@20 on ML-100K's item-cold tasks,
and the pipeline's own comparison (``benchmarks/text_eval.py``) has about 15 item-cold users,
too few for any CI to exclude 0. This asks the same question of every item at once, with no
recommender in the way: what a new item's features can predict of what users later make of
it. The items with at least ``--min-ratings`` ratings are described by targets learnt from
the ratings alone (16 latent factors of the centred user x item matrix, the log count, the
mean rating); a ridge regression on standardised columns predicts them from the item's
features, 5-fold cross-validated over items. The features are genres + release year, then
the same plus the title vectors of the built-in hashed encoder (``episodes.text_dim``, and
4x that). The title columns get a penalty of their own, so that the fit can switch them off
(the largest of the grid) and fall back on genres + year; both penalties are chosen by
cross-validation inside each outer training fold, never on the items they are scored on.
If the titles carried signal, the held-out R^2 would rise.

Runs the project's ingest and validate stages (params.yaml's data set) in a temporary
folder; writes the R^2 per feature set and target group to ``results/text_signal.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metarec.data.text import hashed_ngrams
from metarec.params import load_params
from metarec.stages import ingest, validate

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "text_signal.json"
FACTORS, FOLDS, INNER, SEED = 16, 5, 4, 0
PENALTIES = (1.0, 10.0, 100.0, 1000.0)                  # genres + year columns
TEXT_PENALTIES = (1.0, 10.0, 100.0, 1e3, 1e4, 1e6)      # title columns (1e6: as good as off)


def targets(ratings: pd.DataFrame, items: pd.Index) -> np.ndarray:
    """(items, FACTORS + 2) standardised: latent factors of the centred user x item rating
    matrix (SVD, scaled by their singular values), log count, mean rating."""
    r = ratings[ratings["item_id"].isin(items)]
    users = pd.Index(r["user_id"].unique())
    mat = np.zeros((len(users), len(items)), np.float64)
    mat[users.get_indexer(r["user_id"]), items.get_indexer(r["item_id"])] = (
        r["rating"] - r["rating"].mean())
    _, s, vt = np.linalg.svd(mat, full_matrices=False)
    by_item = r.groupby("item_id")["rating"]
    y = np.c_[vt[:FACTORS].T * s[:FACTORS], np.log(by_item.size().loc[items].to_numpy()),
              by_item.mean().loc[items].to_numpy()]
    return (y - y.mean(0)) / y.std(0)


def base_features(table: pd.DataFrame) -> np.ndarray:
    """Genres (multi-hot) and the release year and its square."""
    genres = sorted({g for row in table["genres"] for g in row})
    multi = np.array([[g in set(row) for g in genres] for row in table["genres"]], np.float64)
    year = table["release_year"].astype("float64")
    z = ((year - year.mean()) / year.std()).fillna(0.0).to_numpy()
    return np.c_[multi, z, z ** 2]


def _standard(x: np.ndarray) -> np.ndarray:
    """Columns scaled to mean 0, std 1 (constant columns left at 0): one penalty means the
    same for every column."""
    sd = x.std(0)
    return np.where(sd > 0, (x - x.mean(0)) / np.where(sd > 0, sd, 1.0), 0.0)


def _predict(x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, pen: np.ndarray
             ) -> np.ndarray:
    """Ridge with a penalty per column (``pen``) and an unpenalised intercept, fitted on rows
    ``tr``, predicting rows ``te``."""
    xt = np.c_[x[tr], np.ones(tr.sum())]
    w = np.linalg.solve(xt.T @ xt + np.diag(np.r_[pen, 0.0]), xt.T @ y[tr])
    return np.c_[x[te], np.ones(te.sum())] @ w


def _penalty_vector(columns: int, n_base: int, lb: float, lt: float | None) -> np.ndarray:
    """One penalty per column: ``lb`` for the first ``n_base`` (genres + year), ``lt`` for
    the title columns after them (None: there are none)."""
    return np.r_[np.full(n_base, lb), np.full(columns - n_base, lt or 0.0)]


def _penalties(x: np.ndarray, y: np.ndarray, n_base: int, rows: np.ndarray,
               rng: np.random.Generator) -> tuple[float, float | None]:
    """The (genres + year, title) penalties of the grid with the least squared error over an
    INNER-fold split of ``rows`` (the outer fold's training items only)."""
    inner = rng.integers(0, INNER, rows.sum())
    text = TEXT_PENALTIES if x.shape[1] > n_base else (None,)
    best, choice = np.inf, (PENALTIES[0], None)
    for lb in PENALTIES:
        for lt in text:
            pen = _penalty_vector(x.shape[1], n_base, lb, lt)
            sse = 0.0
            for f in range(INNER):
                tr, te = rows.copy(), rows.copy()
                tr[rows] = inner != f
                te[rows] = inner == f
                sse += float(((y[te] - _predict(x, y, tr, te, pen)) ** 2).sum())
            if sse < best:
                best, choice = sse, (lb, lt)
    return choice


def nested_r2(x: np.ndarray, y: np.ndarray, n_base: int, fold: np.ndarray
              ) -> tuple[np.ndarray, list[tuple[float, float | None]]]:
    """Held-out R^2 per target column, each outer fold's penalties chosen inside its
    training items (:func:`_penalties`), and those choices."""
    pred, chosen = np.zeros_like(y), []
    rng = np.random.default_rng(SEED + 1)
    for f in range(FOLDS):
        tr, te = fold != f, fold == f
        lb, lt = _penalties(x, y, n_base, tr, rng)
        chosen.append((lb, lt))
        pen = _penalty_vector(x.shape[1], n_base, lb, lt)
        pred[te] = _predict(x, y, tr, te, pen)
    return 1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0), chosen


def compare(items: pd.DataFrame, ratings: pd.DataFrame, dim: int, seed: int, min_ratings: int
            ) -> dict[str, Any]:
    """Held-out R^2 per feature set for the factors (mean), log count, mean rating."""
    counts = ratings.groupby("item_id").size()
    keep = pd.Index(sorted(counts.index[counts >= min_ratings]))
    table = items.set_index("item_id").loc[keep]
    y = targets(ratings, keep)
    fold = np.random.default_rng(SEED).integers(0, FOLDS, len(keep))
    base = _standard(base_features(table))
    sets = {"genres+year": base}
    for d in (dim, 4 * dim):
        title = _standard(hashed_ngrams(table["title"].fillna(""), d, seed))
        sets[f"genres+year+title{d}"] = np.c_[base, title]
    rows = []
    for name, x in sets.items():
        r2, chosen = nested_r2(x, y, base.shape[1], fold)
        rows.append({"features": name, "columns": int(x.shape[1]),
                     "penalties": [[lb, lt] for lb, lt in chosen],
                     "r2_factors": round(float(r2[:FACTORS].mean()), 4),
                     "r2_log_count": round(float(r2[FACTORS]), 4),
                     "r2_mean_rating": round(float(r2[FACTORS + 1]), 4)})
    return {"items": len(keep), "min_ratings": min_ratings, "folds": FOLDS,
            "inner_folds": INNER, "factors": FACTORS, "penalties": list(PENALTIES),
            "text_penalties": list(TEXT_PENALTIES), "rows": rows}


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--min-ratings", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    p = load_params(args.params)
    with tempfile.TemporaryDirectory(prefix="metarec-text-signal-") as tmp:
        root = Path(tmp)
        ingest.run(p.ingest, root / "canonical")
        validate.run(p.validate, root / "canonical", root / "validated", root / "quarantine",
                     root / "report")
        items = pd.read_parquet(root / "validated" / "items.parquet")
        ratings = pd.read_parquet(root / "validated" / "interactions.parquet")
    report = {"dataset": p.ingest.source, "encoder": "hashed",
              **compare(items, ratings, p.episodes.text_dim, p.episodes.seed,
                         args.min_ratings)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['items']} items with >= {args.min_ratings} ratings, {FOLDS}-fold held-out "
          f"R^2 (penalties chosen by {INNER}-fold CV inside each training fold):")
    for r in report["rows"]:
        print(f"  {r['features']:<26} factors {r['r2_factors']:+.3f}  log count "
              f"{r['r2_log_count']:+.3f}  mean rating {r['r2_mean_rating']:+.3f}")
    return report


if __name__ == "__main__":
    main()
