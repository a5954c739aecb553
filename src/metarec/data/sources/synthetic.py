"""``synthetic``: a seeded generator with planted latent structure (tests, benchmarks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from metarec.config import SyntheticSource
from metarec.data.encoding import list_series
from metarec.data.sources.common import (
    RawData,
)


def _ids(prefix: str, n: int) -> np.ndarray:
    """'u0', 'u1', ... built with numpy string ops (no Python loop)."""
    return np.char.add(prefix, np.arange(n).astype(str)).astype(object)


def synthesize(spec: SyntheticSource) -> RawData:
    """Latent-factor users and items, features correlated with the factors, users arriving
    over time, optional taste drift. Vectorised; 10M interactions take seconds."""
    rng = np.random.default_rng(spec.seed)
    n_u, n_i, f = spec.users, spec.items, spec.factors
    U = rng.normal(0, 1, (n_u, f)) / np.sqrt(f)                   # (users, f)
    V = rng.normal(0, 1, (n_i, f)) / np.sqrt(f)                   # (items, f)
    drift_dir = rng.normal(0, 1, (n_u, f)) / np.sqrt(f)
    b_u = rng.normal(0, 0.3, n_u)
    b_i = rng.normal(0, 0.4, n_i)
    day = 86_400
    t0 = 883_612_800                                              # 1998-01-01 UTC
    signup = t0 + np.sort(rng.uniform(0, spec.days * day, n_u)).astype(np.int64)
    activity = rng.lognormal(0.0, 1.0, n_u)
    popularity = rng.lognormal(0.0, 1.0, n_i)
    pairs = np.empty(0, dtype=np.int64)
    for _ in range(8):                     # a few rounds: repeated (user, item) pairs redrawn
        m = int((spec.interactions - len(pairs)) * 1.3) + 100
        u = rng.choice(n_u, size=m, p=activity / activity.sum())
        i = rng.choice(n_i, size=m, p=popularity / popularity.sum())
        pairs = pd.unique(np.concatenate([pairs, u * n_i + i]))
        if len(pairs) >= spec.interactions:
            break
    pairs = pairs[: spec.interactions]
    users, items, n = pairs // n_i, pairs % n_i, len(pairs)
    delay = rng.exponential(3 * day, n) * rng.uniform(0.2, 3.0, n_u)[users]
    ts = np.minimum(signup[users] + delay.astype(np.int64), t0 + (spec.days + 30) * day)
    years = (ts - signup[users]) / (365 * day)
    taste = U[users] + spec.drift * years[:, None] * drift_dir[users]
    score = 3.6 + b_u[users] + b_i[items] + 2.0 * np.einsum("nf,nf->n", taste, V[items])
    rating = np.clip(np.rint(score + rng.normal(0, spec.noise, n)), 1, 5)
    frame = pd.DataFrame({"u": users, "i": items, "r": rating, "t": ts})
    inter = pd.DataFrame({
        "user_id": _ids("u", n_u)[frame["u"].to_numpy()],
        "item_id": _ids("i", n_i)[frame["i"].to_numpy()],
        "rating": frame["r"].to_numpy(np.float64),
        "timestamp": frame["t"].to_numpy(np.int64),
        "source_row": np.arange(1, len(frame) + 1, dtype=np.int64),
    }).astype({"user_id": "string", "item_id": "string", "timestamp": "Int64"})
    # features correlated with the planted factors
    age = np.clip(35 + 12 * U[:, 0] * np.sqrt(f) + rng.normal(0, 5, n_u), 12, 80).round()
    gender = np.where(U[:, 1] + rng.normal(0, 0.2, n_u) > 0, "M", "F")
    occupation = np.char.add("occ", (np.argmax(U[:, :4], axis=1)).astype(str))
    proj = V @ rng.normal(0, 1, (f, spec.genres))                 # (items, genres)
    top2 = np.argsort(-proj, axis=1)[:, :2]
    genre_names = np.asarray([f"g{g}" for g in range(spec.genres)], dtype=object)
    genres = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n_i + 1, 2, dtype=np.int32)),
                                      pa.array(genre_names[top2.ravel()], type=pa.string()))
    users_df = pd.DataFrame({"user_id": _ids("u", n_u),
                             "age": age, "gender": gender.astype(str),
                             "occupation": occupation.astype(str)})
    users_df = users_df.astype({"gender": "string", "occupation": "string"})
    items_df = pd.DataFrame({"item_id": _ids("i", n_i),
                             "genres": list_series(genres, pd.RangeIndex(n_i)),
                             "release_year": 1950 + np.floor(70 * rng.uniform(0, 1, n_i))})
    return RawData(
        dataset="synthetic", interactions=inter, users=users_df, items=items_df,
        user_features={"age": {"kind": "numeric"},
                       "gender": {"kind": "categorical", "vocabulary": ["F", "M"]},
                       "occupation": {"kind": "categorical"}},
        item_features={"genres": {"kind": "multicategorical", "vocabulary": list(genre_names)},
                       "release_year": {"kind": "numeric"}},
        rating={"kind": "explicit", "min": 1.0, "max": 5.0},
        source_files={"interactions": "synthetic", "users": "synthetic", "items": "synthetic"},
    )


