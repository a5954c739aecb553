"""What the episode protocols share: fast sorts, labelled task rows, first-K-next-Q draws.

Task rows carry integer id codes (user_id, item_id), rating, timestamp and the labels
split, scenario, k, draw, role as cheap ordered categoricals. Everything is vectorised.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from metarec.config import EpisodesParams

HISTORY_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


class Split(NamedTuple):
    """What a protocol returns (ids as integer codes)."""

    tasks: pd.DataFrame        # labelled task rows
    info: dict[str, Any]       # test_start, user and item counts, users with too few ratings
    train_users: pd.Series     # codes of the meta-train users (they shape the vocabularies)
    known_items: pd.Series     # codes of the items known in the training period
    history: pd.DataFrame      # every training-period interaction of the meta-train users


def history_of(rows: pd.DataFrame) -> pd.DataFrame:
    """The item-side training data: distinct rows, by user then time (HISTORY_COLUMNS)."""
    return sort_rows(rows[HISTORY_COLUMNS], ["user_id", "timestamp", "item_id"]
                     ).reset_index(drop=True)


SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
ROLE_ORDER = {"support": 0, "query": 1, "cross": 2}   # cross: another platform's history
SCENARIO_ORDER = {"train": 0, "val": 1, "warm": 2, "user_cold": 3, "item_cold": 4,
                  "user_item_cold": 5, "platform_cold": 6}


def _words(df: pd.DataFrame, keys: list[str]) -> list[np.ndarray]:
    """The keys packed (by their value ranges) into as few int64 words as fit, most
    significant first; one key column at a time (memory: the words and one column)."""
    words: list[np.ndarray] = []
    word, used = None, 0
    for k in keys:                            # most significant key first
        col = df[k].cat.codes if isinstance(df[k].dtype, pd.CategoricalDtype) else df[k]
        v = np.array(col, dtype=np.int64)
        lo = int(v.min()) if len(v) else 0
        bits = max(int(v.max() - lo).bit_length(), 1) if len(v) else 1
        v -= lo
        if word is None or used + bits > 63:
            if word is not None:
                words.append(word)
            word, used = v, bits
        else:
            word <<= bits
            word |= v
            used += bits
        del v
    if word is not None:
        words.append(word)
    return words


def sort_order(df: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Row positions of a stable multi-key sort, fast on tens of millions of rows.

    Keys are packed into as few int64 words as fit (:func:`_words`); one unstable argsort of
    the leading word orders the rows, and only the rows that tie on it are then ordered by
    the other words and their position (a stable sort's order, exactly): pandas' and numpy's
    multi-key sorts compare key by key and are several times slower.
    """
    words = _words(df, keys)
    if not words:
        return np.arange(len(df))
    order = np.argsort(words[0])
    lead = words[0][order]
    same = lead[1:] == lead[:-1]
    if same.any():                            # runs of rows tied on the leading word
        at = np.flatnonzero(np.r_[same, False] | np.r_[False, same])
        rows = order[at]
        run = np.cumsum(np.r_[True, lead[at][1:] != lead[at][:-1]])
        order[at] = rows[np.lexsort((rows, *[w[rows] for w in reversed(words[1:])], run))]
    return order


def sort_rows(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``df`` in the order of :func:`sort_order` (a copy; none when already in order)."""
    if is_sorted(df, keys):
        return df.copy(deep=False)
    return df.take(sort_order(df, keys))


def is_sorted(df: pd.DataFrame, keys: list[str]) -> bool:
    """Whether the rows are already in ``keys`` order (one pass, no sort)."""
    if len(df) < 2:
        return True
    later = np.zeros(len(df) - 1, dtype=bool)      # rows after their predecessor in order
    tied = np.ones(len(df) - 1, dtype=bool)
    for w in _words(df, keys):
        later |= tied & (w[1:] > w[:-1])
        tied &= w[1:] == w[:-1]
    return bool((later | tied).all())


def cumcount(groups: np.ndarray) -> np.ndarray:
    """Position of each row within its run of equal ``groups`` values (runs contiguous)."""
    n = len(groups)
    start = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if n else np.zeros(0, int)
    return np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Interactions sorted by user then time (ties by item), with each row's position ``pos``
    within its user and the user's count ``n``; no copy of a log already in that order."""
    out = sort_rows(df, ["user_id", "timestamp", "item_id"]).reset_index(drop=True)
    users = out["user_id"].to_numpy()
    pos = cumcount(users)
    count = np.diff(np.append(np.flatnonzero(pos == 0), len(out)))
    return out.assign(pos=pos.astype(np.int32),
                      n=np.repeat(count, count).astype(np.int32))


def const(value: str, order: dict[str, int], n: int) -> pd.Categorical:
    """A column holding one label, as a cheap ordered categorical (no per-row strings)."""
    return pd.Categorical.from_codes(np.full(n, order[value], dtype=np.int8),
                                     categories=list(order), ordered=True)


def label(frame: pd.DataFrame, split: str, scenario: str, k: int, draw: int = 0
           ) -> pd.DataFrame:
    n = len(frame)
    return frame.assign(split=const(split, SPLIT_ORDER, n),
                        scenario=const(scenario, SCENARIO_ORDER, n), k=k, draw=draw)


class TaskRows:
    """Task rows as positions into one ordered log (:func:`ordered`): a support and a query
    per labelled frame, gathered into one frame of values once, at the end (compact: a
    position per row until then)."""

    def __init__(self, data: pd.DataFrame) -> None:
        self.data = data
        self.user = data["user_id"].to_numpy()
        self.parts: list[tuple[np.ndarray, np.ndarray, tuple[str, str, int, int]]] = []

    def add(self, sup: np.ndarray, query: np.ndarray, split: str, scenario: str, k: int,
            draw: int = 0) -> None:
        rows = np.concatenate([sup, query]).astype(self.index)
        role = np.repeat(np.array([ROLE_ORDER["support"], ROLE_ORDER["query"]], np.int8),
                         [len(sup), len(query)])
        self.parts.append((rows, role, (split, scenario, k, draw)))

    @property
    def index(self) -> type:
        return np.int32 if len(self.data) < 2**31 else np.int64

    def frame(self) -> pd.DataFrame:
        """HISTORY_COLUMNS of every row plus its labels: role, split, scenario (ordered
        categoricals), k, draw. Gathered a column at a time; the positions are let go."""
        sizes = [len(p[0]) for p in self.parts]
        labels = [p[2] for p in self.parts]
        rows = np.concatenate([p[0] for p in self.parts] or [np.zeros(0, self.index)])
        role = np.concatenate([p[1] for p in self.parts] or [np.zeros(0, np.int8)])
        self.parts = []

        def per_row(values: list[int], dtype: type) -> np.ndarray:
            return np.repeat(np.asarray(values, dtype=dtype), sizes)

        def cat(codes: np.ndarray, order: dict[str, int]) -> pd.Categorical:
            return pd.Categorical.from_codes(codes, categories=list(order), ordered=True)

        out = pd.DataFrame({c: self.data[c].to_numpy()[rows] for c in HISTORY_COLUMNS},
                           copy=False)
        del rows
        out["role"] = cat(role, ROLE_ORDER)
        out["split"] = cat(per_row([SPLIT_ORDER[x[0]] for x in labels], np.int8), SPLIT_ORDER)
        out["scenario"] = cat(per_row([SCENARIO_ORDER[x[1]] for x in labels], np.int8),
                              SCENARIO_ORDER)
        out["k"] = per_row([x[2] for x in labels], np.int16)
        out["draw"] = per_row([x[3] for x in labels], np.int32)
        return out


def runs(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The values of the runs of equal ``groups`` (grouped, ascending: distinct values) and
    their lengths."""
    if len(groups) == 0:
        return groups, np.zeros(0, dtype=np.int64)
    start = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return groups[start], np.diff(np.r_[start, len(groups)])


def member(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is one of ``keys`` (sorted, distinct): a binary search, fast
    on sorted values and free of hash tables."""
    if len(keys) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
    return keys[at] == values


def first_k_next_q(user: np.ndarray, rows: np.ndarray, pos: np.ndarray, k: int, q: int,
                   later: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Support = the rows at positions < k; query = the first q later rows (those where
    ``later`` holds, when given: the others are not eligible). ``rows`` (positions into the
    log whose user codes are ``user``) are grouped by user in ascending order, ``pos`` is each
    row's position within its user.

    Returns the support rows and the query rows of the users that have k support rows and
    at least one query row, and the number of the other users.
    """
    is_sup = pos < k
    if later is None:                 # the next q rows: positions k .. k + q - 1
        query = rows[~is_sup & (pos < k + q)]
    else:
        eligible = rows[~is_sup & later]
        query = eligible[cumcount(user[eligible]) < q]
    return support_and_query(user, rows[is_sup], query, k, len(runs(user[rows])[0]))


def support_and_query(user: np.ndarray, sup: np.ndarray, query: np.ndarray, k: int,
                      users: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The tasks of the users with exactly k ``sup`` rows and at least one ``query`` row,
    and how many of the ``users`` the rows were drawn from have none. Rows are positions into
    the log whose user codes are ``user``, grouped by user in ascending order."""
    with_sup, n_sup = runs(user[sup])
    full = with_sup[n_sup == k]
    ok = full[member(full, runs(user[query])[0])]
    return sup[member(user[sup], ok)], query[member(user[query], ok)], users - len(ok)


def shuffled(user: np.ndarray, rows: np.ndarray, key: np.ndarray) -> np.ndarray:
    """``rows`` (grouped by user) ordered within each user by ``key`` (distinct values)."""
    u = user[rows].astype(np.int64)
    lo, bits = (int(u.min()), int(key.max()).bit_length()) if len(u) else (0, 0)
    if len(u) and (int(u.max()) - lo).bit_length() + bits <= 62:   # one word: any sort
        return rows[np.argsort(((u - lo) << bits) | key)]
    return rows[sort_order(pd.DataFrame({"u": u, "key": key}), ["u", "key"])]


def train_draws(tasks: TaskRows, rows: np.ndarray, p: EpisodesParams,
                rng: np.random.Generator) -> dict[str, int]:
    """Meta-train tasks of the history ``rows`` (positions into the ordered log, by user then
    time): ``train_draws`` per user, K cycling through ``support_sizes``; a random draw orders
    each user's rows by a fresh permutation first."""
    too_few = {}
    user = tasks.user
    pos = cumcount(user[rows])        # the same for any order of the rows within each user
    for draw in range(p.train_draws):
        k = p.support_sizes[draw % len(p.support_sizes)]
        h = rows
        if p.train_draw == "random":  # a random order within each user (integer keys)
            h = shuffled(user, rows, rng.permutation(len(rows)).astype(np.int64))
        sup, query, lacking = first_k_next_q(user, h, pos, k, p.query_size)
        too_few[f"draw{draw}_k{k}"] = lacking
        tasks.add(sup, query, "train", "train", k, draw)
    return too_few
