"""Data rules of the validate stage: structural checks, row masks and their GX twins.

Each :class:`Rule` is one data rule stated twice: as a vectorised pandas mask (which rows
break it; this decides the quarantine) and as a Great Expectations expectation run on the same
frame (the independent verdict written to the report). The stage checks that both flag the same
number of rows, so a rule cannot silently drift from its report.

GX is imported lazily (~4 s) and never handed a huge ``value_set``: GX copies an expectation's
kwargs many times per run (pydantic), so a 100k-id set costs tens of seconds. Referential
integrity is therefore checked in GX on a derived frame (the id looked up in the other table
with ``Series.map``: null = not found), while the mask uses the ids' integer codes: two code
paths.

The interaction rules run on one batch of the log at a time; what spans batches (an id's
first use, a key repeated anywhere) is decided from integer codes per row kept for the whole
log (:mod:`metarec.data.batches`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from metarec.errors import DataError

TABLES = ("interactions", "users", "items")
ID_COLUMN = {"users": "user_id", "items": "item_id"}
INTERACTION_KEY = ["user_id", "item_id", "timestamp"]
CODE_LIMIT = 2**62  # combined duplicate-key codes stay below this (int64)


# --------------------------------------------------------------------------------------------
# structure: whole columns that no row-wise quarantine can repair


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_str_list(t: pa.DataType) -> bool:
    return ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t))
            and _is_str(t.value_type))


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t)


_KIND_TYPES = {
    "categorical": (_is_str, "string"),
    "text": (_is_str, "string"),
    "multicategorical": (_is_str_list, "list<string>"),
    "numeric": (_is_number, "float64"),
}

INTERACTION_COLUMNS = {
    "user_id": (_is_str, "string"),
    "item_id": (_is_str, "string"),
    "rating": (pa.types.is_floating, "float64"),
    "timestamp": (pa.types.is_integer, "int64 seconds"),
    "source_row": (pa.types.is_integer, "int64"),
}


def required_columns(table: str, schema: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """Column -> (type predicate, expected type name) for one canonical table."""
    if table == "interactions":
        cols = dict(INTERACTION_COLUMNS)
        if schema.get("platforms") is not None:
            cols["platform"] = (_is_str, "string")
        return cols
    cols = {ID_COLUMN[table]: (_is_str, "string")}
    for name, spec in (schema.get(table) or {}).items():
        kind = spec.get("kind")
        if kind not in _KIND_TYPES:
            raise DataError(f"schema.json declares unknown feature kind {kind!r}",
                            file="schema.json", column=name)
        cols[name] = _KIND_TYPES[kind]
    return cols


def check_structure(table: str, arrow: pa.Schema, schema: dict[str, Any], path: str) -> None:
    """Raise DataError for a missing required column or a column of the wrong type
    (``arrow``: the table's arrow schema)."""
    for name, (ok, expected) in required_columns(table, schema).items():
        if name not in arrow.names:
            raise DataError(f"required column missing (have: {', '.join(arrow.names)})",
                            file=path, column=name)
        found = arrow.field(name).type
        if not ok(found):
            raise DataError(f"column has type {found}, expected {expected}",
                            file=path, column=name)


# --------------------------------------------------------------------------------------------
# rules


@dataclass
class Rule:
    """One data rule: a pandas mask over a frame plus the GX expectation that checks it.

    ``frame_mask`` is indexed by row position in ``table`` (an exploded frame repeats
    positions); a frame of distinct ids sets ``gx_count``/``gx_elements`` instead.
    ``quarantine`` is the row mask of the rows set aside, usually the same rows; duplicates
    keep their first copy. ``expectation`` is None for derived rules (cascades).
    """

    table: str
    frame: str
    column: str
    reason: str
    frame_mask: pd.Series
    expectation: tuple[str, dict[str, Any]] | None
    quarantine: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    gx_count: int | None = None  # what GX should count, where its frame is not per row
    gx_elements: int | None = None

    def row_mask(self, n: int) -> np.ndarray:
        """(n,) bool: the table rows with at least one flagged element."""
        mask = np.zeros(n, dtype=bool)
        mask[self.frame_mask.index[self.frame_mask.to_numpy(dtype=bool)]] = True
        return mask


def timestamp_bound(value: str, key: str) -> int:
    """A params date/time (naive = UTC) as epoch seconds (the rule params load checks)."""
    from metarec.schema import instant

    return instant(value, f"validate.{key}")


def _fmt(x: float) -> str:
    return f"{x:g}"


def interaction_rules(df: pd.DataFrame, rating: dict[str, Any], min_ts: int, max_ts: int,
                      min_label: str, max_label: str, platforms: list[str] | None = None
                      ) -> list[Rule]:
    """Row rules on interactions that need no other table; with ``platforms`` (the schema's
    platform vocabulary) every row names one of them."""
    r = df["rating"]
    ts = df["timestamp"]
    lo, hi = rating.get("min"), rating.get("max")
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    finite = np.isfinite(r.to_numpy(dtype=float, na_value=np.nan))
    scale = f"[{_fmt(lo)}, {_fmt(hi)}]"
    rules = [
        Rule("interactions", "interactions", "user_id", "user_id missing", df["user_id"].isna(),
             ("expect_column_values_to_not_be_null", {"column": "user_id"})),
        Rule("interactions", "interactions", "item_id", "item_id missing", df["item_id"].isna(),
             ("expect_column_values_to_not_be_null", {"column": "item_id"})),
        Rule("interactions", "interactions", "rating", "rating missing (NaN)", r.isna(),
             ("expect_column_values_to_not_be_null", {"column": "rating"})),
        Rule("interactions", "interactions", "rating", "rating not finite",
             pd.Series(r.notna().to_numpy() & ~finite, index=df.index),
             ("expect_column_values_to_not_be_in_set",
              {"column": "rating", "value_set": [math.inf, -math.inf]})),
        Rule("interactions", "interactions", "rating", f"rating out of scale {scale}",
             r.notna() & ((r < lo) | (r > hi)),
             ("expect_column_values_to_be_between",
              {"column": "rating", "min_value": None if math.isinf(lo) else lo,
               "max_value": None if math.isinf(hi) else hi})),
        Rule("interactions", "interactions", "timestamp", "timestamp missing or unparseable",
             ts.isna(), ("expect_column_values_to_not_be_null", {"column": "timestamp"})),
        Rule("interactions", "interactions", "timestamp", f"timestamp before {min_label}",
             (ts < min_ts).fillna(False).astype(bool),
             ("expect_column_values_to_be_between", {"column": "timestamp",
                                                     "min_value": min_ts})),
        Rule("interactions", "interactions", "timestamp", f"timestamp after {max_label}",
             (ts > max_ts).fillna(False).astype(bool),
             ("expect_column_values_to_be_between", {"column": "timestamp",
                                                     "max_value": max_ts})),
    ]
    if platforms is not None:
        vocab = [str(p) for p in platforms]
        plat = df["platform"]
        rules += [
            Rule("interactions", "interactions", "platform", "platform missing", plat.isna(),
                 ("expect_column_values_to_not_be_null", {"column": "platform"})),
            Rule("interactions", "interactions", "platform",
                 f"platform not one of {', '.join(vocab)}",
                 (plat.notna() & ~plat.isin(vocab)).astype(bool),
                 ("expect_column_values_to_be_in_set", {"column": "platform",
                                                        "value_set": vocab})),
        ]
    return rules


def _key_codes(df: pd.DataFrame) -> np.ndarray:
    """(n,) int64: one code per distinct (user, item, timestamp), nulls equal to each other
    (as in ``DataFrame.duplicated``), built by factorising column by column: several times
    faster than ``duplicated`` on three columns of 10M strings."""
    codes = np.zeros(len(df), dtype=np.int64)
    bound = 1  # codes < bound
    for col in INTERACTION_KEY:
        c, uniques = pd.factorize(df[col])  # NA -> -1
        width = len(uniques) + 1
        if bound * width >= CODE_LIMIT:  # re-number densely (codes < n) so the product fits
            codes, seen = pd.factorize(codes)
            codes, bound = codes.astype(np.int64), len(seen)
        codes = codes * width + (c.astype(np.int64) + 1)
        bound *= width
    return codes


class Duplicates(NamedTuple):
    """The duplicate-key verdict on a whole log (row positions)."""

    flagged: np.ndarray      # (n,) bool: every copy of a repeated key (an all-missing key: no)
    quarantine: np.ndarray   # (n,) bool: the copies set aside
    rows: np.ndarray         # positions of the rows whose key may repeat (hash candidates)
    first: np.ndarray        # position of the first copy of each of those rows' keys


def duplicates(user: np.ndarray, item: np.ndarray, ts: np.ndarray, ts_null: np.ndarray,
               others: np.ndarray) -> Duplicates:
    """(user, item, timestamp) repeated anywhere in the log, from integer codes per row
    (user/item code -1 = missing; ``ts_null`` = missing timestamp). GX flags every copy; we
    quarantine all but the first copy among rows that pass the other rules (``others``: rows
    they set aside), so a bad first copy does not doom a good one.

    A 64-bit hash of each key finds the rows whose hash repeats (one sort); only those are
    compared exactly (:func:`_key_codes`), so a hash collision costs time, never a verdict."""
    n = len(user)
    pair = (user.astype(np.int64) << 32) | (item.astype(np.int64) & 0xFFFFFFFF)
    stamp = np.where(ts_null, 0, ts).astype(np.int64)      # any value under a missing one
    h = pd.util.hash_array(pd.util.hash_array(pair) ^ stamp.view(np.uint64))
    s = np.sort(h)
    repeated = np.unique(s[1:][s[1:] == s[:-1]])
    rows = (np.flatnonzero(pd.Index(repeated).get_indexer(h) >= 0) if len(repeated)
            else np.zeros(0, np.int64))
    del h, s, stamp
    key = pd.Series(_key_codes(pd.DataFrame({
        "user_id": user[rows], "item_id": item[rows],
        "timestamp": pd.Series(ts[rows], dtype="Int64").mask(ts_null[rows])})))
    all_missing = (user[rows] < 0) & (item[rows] < 0) & ts_null[rows]
    copies = key.duplicated(keep=False).to_numpy() & ~all_missing
    later = key.duplicated(keep="first").to_numpy()
    bad = others[rows]
    q = np.zeros(len(rows), dtype=bool)
    q[~bad] = key[~bad].duplicated(keep="first").to_numpy()
    q |= bad & later & copies
    flagged, quarantine = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    flagged[rows], quarantine[rows] = copies, q
    group = pd.factorize(key)[0]                  # groups numbered in order of first copy
    return Duplicates(flagged, quarantine, rows, rows[np.flatnonzero(~later)][group])


def duplicate_rule(n: int, dup: Duplicates) -> Rule:
    """The rule of :func:`duplicates` on ``n`` rows (its GX frames are built by the stage)."""
    return Rule("interactions", "interactions", ", ".join(INTERACTION_KEY),
                "duplicate (user_id, item_id, timestamp)", pd.Series(dup.flagged),
                ("expect_compound_columns_to_be_unique", {"column_list": INTERACTION_KEY}),
                quarantine=dup.quarantine)


def reference_rule(df: pd.DataFrame, codes: np.ndarray, known: int, first_use: np.ndarray,
                   lookup: pd.Series, table: str) -> tuple[Rule, pd.DataFrame]:
    """Every interaction's user/item id is present in the users/items table.

    ``codes``: the ids of this batch of the log, coded so that the table's ids are the codes
    below ``known`` (:class:`metarec.data.batches.IdCodes`); ``first_use``: the rows where an
    id is used for the first time in the log. Returns the rule and the derived GX frame: one
    row per id at its first use (with that row's source_row), the id looked up (map) in the
    table (``lookup``: id -> id), null where absent. GX thus counts distinct missing ids
    (``gx_count``) over all batches, while the mask flags every row.
    """
    col = ID_COLUMN[table]
    mask = pd.Series(codes >= known, index=df.index)
    looked_up = f"{table}_{col}"
    sub = df.iloc[first_use][[col, "source_row"]]
    frame = sub.assign(**{looked_up: sub[col].map(lookup)})
    rule = Rule("interactions", f"interactions->{table}", col, f"{col} not in {table} table",
                mask, ("expect_column_values_to_not_be_null", {"column": looked_up}),
                gx_count=int((codes[first_use] >= known).sum()), gx_elements=len(frame))
    return rule, frame


def cascade_rule(df: pd.DataFrame, codes: np.ndarray, rejected: np.ndarray, table: str
                 ) -> Rule:
    """Interactions whose user/item row was quarantined from its own table (derived, no GX):
    ``rejected[c]`` says whether the table's id of code ``c`` was set aside under every row
    that holds it."""
    col = ID_COLUMN[table]
    inside = (codes >= 0) & (codes < len(rejected))
    mask = np.zeros(len(codes), dtype=bool)
    mask[inside] = rejected[codes[inside]]
    return Rule("interactions", "interactions", col,
                f"{col} quarantined from {table} table", pd.Series(mask, index=df.index), None)


def feature_rules(df: pd.DataFrame, table: str, features: dict[str, Any], index_col: str
                  ) -> tuple[list[Rule], dict[str, pd.DataFrame]]:
    """Id rules and vocabulary rules of a users/items table, plus derived (exploded) frames.

    ``index_col`` (source_row, or row = 1-based position) names offending rows in the report.
    """
    col = ID_COLUMN[table]
    ids = df[col]
    rules = [
        Rule(table, table, col, f"{col} missing", ids.isna(),
             ("expect_column_values_to_not_be_null", {"column": col})),
        Rule(table, table, col, f"duplicate {col}", ids.notna() & ids.duplicated(keep=False),
             ("expect_column_values_to_be_unique", {"column": col})),
    ]
    frames: dict[str, pd.DataFrame] = {}
    for name, spec in features.items():
        vocab = spec.get("vocabulary")
        if vocab is None:
            continue
        vocab = [str(v) for v in vocab]
        expectation = ("expect_column_values_to_be_in_set",
                       {"column": name, "value_set": vocab})
        reason = f"{name} value outside vocabulary"
        if spec["kind"] == "multicategorical":
            key = f"{table}.{name}[]"
            exploded = df[[name, index_col]].explode(name)
            values = exploded[name]
            frames[key] = exploded
            mask = values.notna() & ~values.isin(vocab)
            rules.append(Rule(table, key, name, reason, mask.astype(bool), expectation))
        else:
            values = df[name]
            rules.append(Rule(table, table, name, reason,
                              values.notna() & ~values.isin(vocab), expectation))
    return rules, frames
