"""``synthetic``: a seeded generator with planted latent structure (tests, benchmarks)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from metarec.config import SyntheticSource
from metarec.data.encoding import list_series
from metarec.data.sources.common import InteractionLog, RawData
from metarec.data.sources.multilingual import GENRES, Catalogue

_ROWS = 1 << 20   # rows whose ratings are computed at once (bounds the (rows, f) tastes)
START = 883_612_800   # the timeline starts 1998-01-01 UTC


def _ids(prefix: str, n: int) -> np.ndarray:
    """'u0', 'u1', ... built with numpy string ops (no Python loop)."""
    return np.char.add(prefix, np.arange(n).astype(str)).astype(object)


def choice(rng: np.random.Generator, n: int, size: int, p: np.ndarray,
           buckets: int | None = None) -> np.ndarray:
    """``rng.choice(n, size, p=p)``, the same numbers and generator state, several times
    faster on large ``n``: numpy draws ``size`` uniforms and binary-searches each in the
    cumulative distribution, a cache miss per step; here a table of ``buckets`` starting
    points (a power of two; default about 4 per outcome, at most 2^22) leaves a step or two
    per draw."""
    if buckets is None:
        buckets = 1 << min(22, max(4 * n - 1, 1).bit_length())
    cdf = p.cumsum()
    cdf /= cdf[-1]
    u = rng.random(size)
    start = np.searchsorted(cdf, np.arange(buckets + 1) / buckets, side="right")
    idx = start[(u * buckets).astype(np.int64)]      # exact: buckets is a power of two
    todo = np.flatnonzero(cdf[np.minimum(idx, n - 1)] <= u)
    while len(todo):                                  # first idx with cdf[idx] > u
        idx[todo] += 1
        todo = todo[cdf[idx[todo]] <= u[todo]]
    return idx


def first_unique(values: np.ndarray) -> np.ndarray:
    """``pd.unique(values)`` (distinct values in order of first appearance) of non-negative
    integers, by one sort of (value, position) words: a third of the time and memory of a
    hash table of tens of millions of values."""
    n = len(values)
    bits = max(int(n - 1).bit_length(), 1)
    if n == 0 or int(values.min()) < 0 or int(values.max()).bit_length() + bits > 64:
        return pd.unique(values)
    key = (values.astype(np.uint64) << np.uint64(bits)) | np.arange(n, dtype=np.uint64)
    key.sort()
    value = key >> np.uint64(bits)
    first = np.r_[True, value[1:] != value[:-1]]      # lowest position of each value
    del value
    pos = (key[first] & np.uint64((1 << bits) - 1)).astype(np.int64)
    del key
    pos.sort()
    return values[pos]


def _log(users: np.ndarray, items: np.ndarray, rating: np.ndarray, ts: np.ndarray,
         n_u: int, n_i: int, platforms: tuple[np.ndarray, np.ndarray] | None
         ) -> InteractionLog:
    """The generated rows as a log of compact codes whose id strings are built per batch
    (``platforms``: each row's platform code and the platform names)."""
    names = {"user_id": pa.array(_ids("u", n_u), type=pa.large_string()),
             "item_id": pa.array(_ids("i", n_i), type=pa.large_string())}
    fields = [("user_id", pa.large_string()), ("item_id", pa.large_string()),
              ("rating", pa.float64()), ("timestamp", pa.int64()), ("source_row", pa.int64())]
    if platforms is not None:
        names["platform"] = pa.array(platforms[1], type=pa.large_string())
        fields.append(("platform", pa.large_string()))
    schema = pa.schema(fields)

    def take(a: int, b: int) -> pa.Table:
        cols = [names["user_id"].take(pa.array(users[a:b])),
                names["item_id"].take(pa.array(items[a:b])),
                pa.array(rating[a:b].astype(np.float64)), pa.array(ts[a:b]),
                pa.array(np.arange(a + 1, b + 1, dtype=np.int64))]
        if platforms is not None:
            cols.append(names["platform"].take(pa.array(platforms[0][a:b])))
        return pa.Table.from_arrays(cols, schema=schema)

    return InteractionLog(len(users), schema, take)


class Platforms:
    """Planted platforms: each user is active on its home platform and on each other one
    with probability ``platform_share``; a platform shifts every user's taste by its own
    vector (``platform_shift`` times a random unit-variance direction). Drawn from a stream
    of their own, so a log without platforms is the same bytes as before they existed."""

    def __init__(self, spec: SyntheticSource, n_users: int) -> None:
        self.rng = np.random.default_rng([spec.seed, 7])
        p, f = spec.platforms, spec.factors
        self.names = np.asarray([f"p{j}" for j in range(p)], dtype=object)
        home = self.rng.integers(0, p, n_users)
        self.active = self.rng.uniform(size=(n_users, p)) < spec.platform_share
        self.active[np.arange(n_users), home] = True
        self.shift = spec.platform_shift * self.rng.normal(0, 1, (p, f)) / np.sqrt(f)

    def draw(self, users: np.ndarray) -> np.ndarray:
        """(n,) platform index of each interaction: uniform over its user's platforms
        (Gumbel-max over the active set, vectorised)."""
        noise = self.rng.gumbel(size=(len(users), self.active.shape[1]))
        return np.argmax(np.where(self.active[users], noise, -np.inf), axis=1)


def _chosen_by_taste(rng: np.random.Generator, spec: SyntheticSource, U: np.ndarray,
                     V: np.ndarray, drift_dir: np.ndarray, signup: np.ndarray,
                     activity: np.ndarray, popularity: np.ndarray, target: int, end: int,
                     platforms: Platforms | None = None, cells: int = 1 << 22,
                     release: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(users, items, timestamps, platforms or None) where a user picks items by popularity
    and by its taste at that moment (drift and the platform's shift included): Gumbel-max
    over log popularity + choice * taste . V, among the items released by then
    (``release``: each item's first timestamp; None = all from the start). Repeated (user,
    item) pairs keep their first draw; rounds until ``target`` rows. Logits are built for
    about ``cells`` (draw, item) pairs at a time (memory), which draws the same numbers
    whatever the chunking."""
    n_u, day = len(U), 86_400
    chunk = max(1, cells // max(len(V), 1))
    speed = rng.uniform(0.2, 3.0, n_u)
    log_pop = np.log(popularity)
    codes, times = np.empty(0, np.int64), np.empty(0, np.int64)
    plats = np.empty(0, np.int64)
    for _ in range(8):
        m = int((target - len(codes)) * 1.3) + 100
        u = choice(rng, n_u, m, activity / activity.sum())
        t = np.minimum(signup[u] + (rng.exponential(spec.activity_days * day, m)
                                    * speed[u]).astype(np.int64), end)
        years = (t - signup[u]) / (365 * day)
        p = platforms.draw(u) if platforms is not None else None
        items = np.empty(m, np.int64)
        for a in range(0, m, chunk):                    # (chunk, items) logits at a time
            b = min(a + chunk, m)
            taste = U[u[a:b]] + spec.drift * years[a:b, None] * drift_dir[u[a:b]]
            if p is not None:
                taste = taste + platforms.shift[p[a:b]]
            logits = log_pop + spec.choice * 2.0 * taste @ V.T
            if release is not None:                     # not out yet: never picked
                logits[t[a:b, None] < release[None, :]] = -np.inf
            items[a:b] = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
        codes = np.concatenate([codes, u * len(V) + items])
        times = np.concatenate([times, t])
        if p is not None:
            plats = np.concatenate([plats, p])
        first = ~pd.Index(codes).duplicated()
        codes, times = codes[first], times[first]
        plats = plats[first] if p is not None else plats
        if len(codes) >= target:
            break
    codes, times = codes[:target], times[:target]
    return (codes // len(V), codes % len(V), times,
            plats[:target] if platforms is not None else None)


def synthesize(spec: SyntheticSource) -> RawData:
    """Latent-factor users and items, features correlated with the factors, users arriving
    over time and active for about ``activity_days`` (times a per-user factor), optional taste
    drift (each user's factor moves along its own direction, ``drift`` per year since signup)
    and seasonal item popularity (``season``: amplitude, ``season_days``: period, a phase per
    item). Items are picked by popularity, and with ``choice`` > 0 also by the user's taste at
    that moment, so a drifting taste shows in what the user does next, not only in its
    ratings. With ``platforms`` > 0 each interaction names a platform (:class:`Platforms`)
    whose taste shift enters both the choice and the rating. With ``label: count`` each row
    is a play count (implicit feedback), 1 + Poisson(exp(0.8 (score - 3.6))) of the same taste
    score, drawn from a stream of its own (the rest of the log is unchanged). Vectorised; 10M
    interactions take seconds."""
    rng = np.random.default_rng(spec.seed)
    n_u, n_i, f = spec.users, spec.items, spec.factors
    U = rng.normal(0, 1, (n_u, f)) / np.sqrt(f)                   # (users, f)
    V = rng.normal(0, 1, (n_i, f)) / np.sqrt(f)                   # (items, f)
    drift_dir = rng.normal(0, 1, (n_u, f)) / np.sqrt(f)
    b_u = rng.normal(0, 0.3, n_u)
    b_i = rng.normal(0, 0.4, n_i)
    day = 86_400
    t0 = START
    signup = t0 + np.sort(rng.uniform(0, spec.days * day, n_u)).astype(np.int64)
    activity = rng.lognormal(0.0, 1.0, n_u)
    popularity = rng.lognormal(0.0, 1.0, n_i)
    # seasonality thins a larger draw down to `interactions` rows (none drawn without it)
    target = spec.interactions if spec.season == 0 else int(spec.interactions
                                                           * (1 + spec.season) * 1.2) + 100
    end = t0 + (spec.days + 30) * day
    planted = Platforms(spec, n_u) if spec.platforms > 0 else None
    described = Catalogue(spec) if spec.text.languages else None
    release = None
    if described is not None:          # taste planted on the topics; new items come late
        V = described.factors
        release = t0 + (described.release_day * day).astype(np.int64)
    plat = None
    if spec.choice > 0:
        users, items, ts, plat = _chosen_by_taste(rng, spec, U, V, drift_dir, signup,
                                                  activity, popularity, target, end, planted,
                                                  release=release)
        n = len(users)
    else:
        pairs = np.empty(0, dtype=np.int64)
        for _ in range(8):             # a few rounds: repeated (user, item) pairs redrawn
            m = int((target - len(pairs)) * 1.3) + 100
            u = choice(rng, n_u, m, activity / activity.sum())
            i = choice(rng, n_i, m, popularity / popularity.sum())
            pairs = first_unique(np.concatenate([pairs, u * n_i + i]))
            if len(pairs) >= target:
                break
        pairs = pairs[:target]
        users, items, n = pairs // n_i, pairs % n_i, len(pairs)
        delay = rng.exponential(spec.activity_days * day, n) * rng.uniform(0.2, 3.0, n_u)[users]
        ts = np.minimum(signup[users] + delay.astype(np.int64), end)
    if planted is not None and plat is None:
        plat = planted.draw(users)
    if spec.season > 0:
        # item i is in season when sin(2 pi t / season_days + phase_i) is high: an interaction
        # is kept with probability (1 + a sin(...)) / (1 + a), then the first rows kept
        phase = rng.uniform(0, 2 * np.pi, n_i)
        angle = 2 * np.pi * (ts - t0) / (spec.season_days * day) + phase[items]
        kept = np.flatnonzero(rng.uniform(0, 1, n) * (1 + spec.season)
                              < 1 + spec.season * np.sin(angle))[: spec.interactions]
        users, items, ts, n = users[kept], items[kept], ts[kept], len(kept)
        plat = plat[kept] if plat is not None else None
    if n < spec.interactions:
        # taste-driven choice repeats (user, item) pairs, which are dropped; season thins rows
        logging.getLogger("metarec.ingest").warning(
            "synthetic: %d interactions drawn of the %d asked for (choice %g, season %g: "
            "repeated pairs dropped, out-of-season rows thinned)", n, spec.interactions,
            spec.choice, spec.season)
    users, items = users.astype(np.int32), items.astype(np.int32)     # compact codes
    counts = spec.label == "count"
    rating = np.empty(n, dtype=np.int32 if counts else np.int8)       # 1..5 or counts, exact
    plays = np.random.default_rng([spec.seed, 11])   # its own stream: ratings stay the same
    for a in range(0, n, _ROWS):          # (rows, f) tastes a chunk at a time (memory)
        b = min(a + _ROWS, n)
        u, i = users[a:b], items[a:b]
        taste = U[u]                       # (adding a zero drift would change no bit)
        if spec.drift:
            years = (ts[a:b] - signup[u]) / (365 * day)
            taste = taste + spec.drift * years[:, None] * drift_dir[u]
        if plat is not None:
            taste = taste + planted.shift[plat[a:b]]
        score = 3.6 + b_u[u] + b_i[i] + 2.0 * np.einsum("nf,nf->n", taste, V[i])
        rating[a:b] = np.clip(np.rint(score + rng.normal(0, spec.noise, b - a)), 1, 5)
        if counts:       # implicit feedback: plays grow with taste, every row a positive
            rating[a:b] = 1 + plays.poisson(np.exp(0.8 * (score - 3.6)))
    inter = _log(users, items, rating, ts, n_u, n_i,
                 None if plat is None else (plat.astype(np.int32), planted.names))
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
    item_features = {"genres": {"kind": "multicategorical", "vocabulary": list(genre_names)},
                     "release_year": {"kind": "numeric"}}
    if described is not None:          # the genre as planted; the topic in the text only
        one = pa.ListArray.from_arrays(pa.array(np.arange(n_i + 1, dtype=np.int32)),
                                       pa.array(np.asarray(GENRES)[described.genre]))
        items_df["genres"] = list_series(one, pd.RangeIndex(n_i))
        items_df["description"] = pd.array(described.description, dtype="string")
        item_features = {"genres": {"kind": "multicategorical", "vocabulary": list(GENRES)},
                         "release_year": {"kind": "numeric"},
                         "description": {"kind": "text"}}
    return RawData(
        dataset="synthetic", interactions=inter, users=users_df, items=items_df,
        user_features={"age": {"kind": "numeric"},
                       "gender": {"kind": "categorical", "vocabulary": ["F", "M"]},
                       "occupation": {"kind": "categorical"}},
        item_features=item_features,
        rating=({"kind": "count", "min": 0.0, "max": float("inf")} if counts
                else {"kind": "explicit", "min": 1.0, "max": 5.0}),
        source_files={"interactions": "synthetic", "users": "synthetic", "items": "synthetic"},
        platforms=list(planted.names) if planted is not None else None,
    )


def described_catalogue(spec: SyntheticSource) -> pd.DataFrame:
    """What ``ingest.synthetic.text`` planted in each item (topic, genre, language, new,
    described in a language unseen for its topic), by item id, rebuilt from the seed without
    the log: the truth the benchmarks judge the placement of new items by."""
    return Catalogue(spec).truth(_ids("i", spec.items))
