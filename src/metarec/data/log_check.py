"""The interaction log checked batch by batch: rules, Great Expectations, duplicates.

Each batch of ``validate.batch_rows`` rows is checked by the row rules, the reference rules
and the cascades (masks and GX on the batch's frame; counts add up over batches). What the log
must remember across batches is kept per row as integers: the user and item codes
(:class:`metarec.data.batches.IdCodes`), the timestamp, the source row and one bit per rule
that sets the row aside. Repeated (user, item, timestamp) keys are then found over the whole
log (:func:`metarec.data.validation.duplicates`), and GX checks every row for them in frames
that hold all copies of a key (each batch's rows plus the later copies of its keys; ids as
their integer codes, one per id).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from metarec.config import ValidateParams
from metarec.data import validation as v
from metarec.data.batches import FirstUse, IdCodes, batch_frame, nullable_ints, read_batches
from metarec.data.gx import GXRunner
from metarec.data.tally import ROW, Tally, add_batch

RESTORE = "dvc repro ingest"
KEY_SUITE = "interactions[user_id, item_id, timestamp]"   # GX frames of whole key groups


@dataclass
class LogVerdict:
    """What the checks decided, per row of the log and per rule."""

    rows: int
    bits: np.ndarray          # (rows,) bit j set: rule j of :attr:`tallies` sets the row aside
    source_row: np.ndarray    # (rows,) the row in the source file (names rows in errors)
    tallies: list[Tally]      # the interaction rules in summary order


@dataclass
class _Rows:
    """Per-row integer state of the whole log."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    ts_null: np.ndarray
    source_row: np.ndarray
    others: np.ndarray        # set aside by a rule that precedes the duplicate rule
    bits: np.ndarray

    @classmethod
    def empty(cls, n: int, source_row_nullable: bool) -> _Rows:
        return cls(np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int64),
                   np.empty(n, bool), np.empty(n, np.float64 if source_row_nullable
                                                else np.int64),
                   np.empty(n, bool), np.zeros(n, np.uint32))


@dataclass
class _Table:
    """What the log's checks need of a users/items table across batches."""

    codes: IdCodes           # the log's ids as codes (the table's ids first)
    first_use: FirstUse      # which ids earlier batches used
    lookup: pd.Series        # id -> id, for GX's look-up frame
    rejected: np.ndarray     # by code: the id is set aside under every row that holds it

    @classmethod
    def of(cls, table: pd.DataFrame, column: str, set_aside: np.ndarray) -> _Table:
        ids = table[column]
        codes = IdCodes(pa.array(ids, from_pandas=True))
        unique = ids.dropna().drop_duplicates()
        known = pd.Series(codes.known.to_numpy(zero_copy_only=False))
        rejected = known.isin(ids[set_aside].dropna()) & ~known.isin(ids[~set_aside].dropna())
        return cls(codes, FirstUse(), pd.Series(unique.to_numpy(), index=unique),
                   rejected.to_numpy())


def check_log(file: pq.ParquetFile, path: str, params: ValidateParams, context: dict[str, Any],
              refs: dict[str, pd.DataFrame], set_aside: dict[str, np.ndarray],
              runner: GXRunner) -> LogVerdict:
    """Check every batch of the log, then its duplicate keys.

    ``context``: rating scale, timestamp bounds and labels, platforms (the rules' settings);
    ``refs``: the users and items tables; ``set_aside``: their rows quarantined (the
    interactions of an id set aside there cascade)."""
    n = file.metadata.num_rows
    nullable = nullable_ints(file)
    state = _Rows.empty(n, "source_row" in nullable)
    tables = {t: _Table.of(ref, v.ID_COLUMN[t], set_aside[t]) for t, ref in refs.items()}
    tallies: list[Tally] = []
    dup_at = 0
    for start, batch in read_batches(file, params.batch_rows, path, RESTORE):
        codes = {t: tab.codes(batch.column(v.ID_COLUMN[t])) for t, tab in tables.items()}
        df = batch_frame(batch, nullable)
        rows = slice(start, start + len(df))
        rules = v.interaction_rules(df, context["rating"], context["min_ts"], context["max_ts"],
                                    context["min_label"], context["max_label"],
                                    context["platforms"])
        frames = {"interactions": df}
        for t, tab in tables.items():
            rule, frame = v.reference_rule(df, codes[t], len(tab.codes.known),
                                           tab.first_use(codes[t]), tab.lookup, t)
            frames[rule.frame] = frame
            rules.append(rule)
        dup_at = len(rules)           # the duplicate rule's slot, decided after the last batch
        rules += [v.cascade_rule(df, codes[t], tab.rejected, t) for t, tab in tables.items()]
        bits = quarantine_bits(rules[:dup_at] + [None] + rules[dup_at:], len(df))
        state.bits[rows] = bits
        state.others[rows] = (bits & np.uint32((1 << dup_at) - 1)) != 0
        _keep(state, rows, codes, batch)
        tallies = tallies or [Tally.of(r) for r in rules]
        add_batch(tallies, rules, frames, df, "source_row", runner, params.examples)
    dup = v.duplicates(state.user, state.item, state.ts, state.ts_null, state.others)
    rule = v.duplicate_rule(n, dup)
    tallies.insert(dup_at, Tally.of(rule))
    tallies[dup_at].add(rule, n, pd.DataFrame(), "source_row", params.examples)
    state.bits |= dup.quarantine.astype(np.uint32) << np.uint32(dup_at)
    names = {v.ID_COLUMN[t]: tab.codes.names() for t, tab in tables.items()}
    for frame in _key_frames(state, dup, params.batch_rows, nullable):
        for result in runner.run(KEY_SUITE, frame, [(dup_at, rule)],
                                 index=("source_row", ROW)).values():
            result["examples"] = [{k: _decode(x, names.get(k)) for k, x in row.items()}
                                  for row in result["examples"]]
            tallies[dup_at].add_gx(result)
    return LogVerdict(n, state.bits, state.source_row, tallies)


def _decode(value: Any, names: pa.Array | None) -> Any:
    """An example's id code as its id (other values, and missing ids, as they are)."""
    if names is None or not isinstance(value, (int, float)):
        return value
    return names[int(value)].as_py()


def quarantine_bits(rules: list[v.Rule | None], n: int) -> np.ndarray:
    """(n,) uint32: bit j set where rule j sets the row aside (None: a rule decided later);
    fills each rule's default quarantine mask."""
    if len(rules) > 32:
        raise RuntimeError(f"{len(rules)} rules on one table: more than the 32 bits kept per row")
    bits = np.zeros(n, dtype=np.uint32)
    for j, rule in enumerate(rules):
        if rule is None:
            continue
        if len(rule.quarantine) != n:
            rule.quarantine = rule.row_mask(n)
        bits |= rule.quarantine.astype(np.uint32) << np.uint32(j)
    return bits


def _keep(state: _Rows, rows: slice, codes: dict[str, np.ndarray], batch: pa.Table) -> None:
    """The batch's per-row integers, for the checks that span the log."""
    state.user[rows], state.item[rows] = codes["users"], codes["items"]
    ts = batch.column("timestamp")
    state.ts[rows] = pc.fill_null(ts, 0).to_numpy()
    state.ts_null[rows] = pc.is_null(ts).to_numpy(zero_copy_only=False)
    source = batch.column("source_row")
    state.source_row[rows] = (source.to_numpy(zero_copy_only=False)
                              if state.source_row.dtype == np.float64
                              else pc.fill_null(source, 0).to_numpy())


def _key_frames(state: _Rows, dup: v.Duplicates, size: int, nullable: set[str]
                ) -> Iterator[pd.DataFrame]:
    """Frames of (user_id, item_id, timestamp, source_row, position) covering every row once,
    each holding all copies of its keys: batch j's rows, less the copies whose key first
    appeared in an earlier batch, plus those of later batches whose key first appeared in j;
    rows in log order. Built from the integer state: ids as their codes (one code per id,
    null where missing), which GX compares twice as fast as strings."""
    n = len(state.user)
    dest = dup.first // size
    away = dest != dup.rows // size
    moved, moved_to = dup.rows[away], dest[away]
    for j, start in enumerate(range(0, max(n, 1), size)):
        rows = np.arange(start, min(start + size, n))
        if len(moved):
            rows = np.union1d(np.setdiff1d(rows, moved, assume_unique=True),
                              moved[moved_to == j])
        table = pa.table({
            "user_id": pa.array(state.user[rows], mask=state.user[rows] < 0),
            "item_id": pa.array(state.item[rows], mask=state.item[rows] < 0),
            "timestamp": pa.array(state.ts[rows], mask=state.ts_null[rows]),
            "source_row": pa.array(state.source_row[rows],
                                   from_pandas=state.source_row.dtype == np.float64),
            ROW: pa.array(rows, type=pa.int64())})
        yield batch_frame(table, nullable)


def log_parts(file: pq.ParquetFile, path: str, size: int, verdict: LogVerdict,
              quarantined: bool, reasons: list[str]) -> Iterator[pa.Table]:
    """The log's kept rows (``quarantined`` False) or its quarantined rows with their
    ``reason`` column, batch by batch, for :func:`metarec.io.write_parquet_stream`."""
    for start, batch in read_batches(file, size, path, RESTORE):
        q = verdict.bits[start:start + batch.num_rows] != 0
        if not quarantined:
            yield batch.filter(pa.array(~q))
            continue
        text = reason_text(reasons, verdict.bits[start:start + batch.num_rows][q])
        yield batch.filter(pa.array(q)).append_column("reason", pa.array(text, type=pa.string()))


def reason_text(reasons: list[str], bits: np.ndarray) -> np.ndarray:
    """One '; '-joined reason per row, in rule order (bit j: ``reasons[j]``), vectorised."""
    acc = np.full(len(bits), "", dtype=object)
    for j, reason in enumerate(reasons):
        hit = (bits >> np.uint32(j)) & np.uint32(1) == 1
        acc = acc + np.where(hit, reason + "; ", "").astype(object)
    return pd.Series(acc, dtype=object).str[:-2].to_numpy(dtype=object)
