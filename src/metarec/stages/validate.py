"""validate stage: check the canonical tables, then quarantine bad rows or fail.

Reads ``<in>/{interactions,users,items}.parquet`` + ``schema.json`` (written by ingest) and
writes ``<out>/`` (same files, bad rows removed), ``<quarantine>/<table>.parquet`` (the removed
rows + ``reason``; always written, possibly empty, so DVC outs exist) and
``<report>/summary.json`` + ``report.md``. Each folder is written whole into a temporary folder
beside it and swapped in: a failure leaves the previous complete folders (under policy fail
only the report is replaced: it explains the failure).

Row rules are decided by vectorised pandas masks (10M rows in seconds) and verified by Great
Expectations on the same frames; a disagreement between the two is a bug and stops the stage.
Whole-column problems (a missing column, a wrong type) cannot be quarantined row by row and
raise DataError under either policy. Feature tables are checked first: users/items set aside
cascade to the interactions that point at them. The interaction log is checked and written
``validate.batch_rows`` rows at a time (:mod:`metarec.data.log_check`): every row goes
through GX, memory follows the batch plus a few integers per row, and the outputs are the
same bytes for any batch size.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metarec.config import ValidateParams
from metarec.data import validation as v
from metarec.data.gx import GXRunner
from metarec.data.log_check import RESTORE, check_log, log_parts, quarantine_bits, reason_text
from metarec.data.tally import Tally, add_batch
from metarec.errors import DataError
from metarec.io import (
    atomic_dir,
    read_tracked,
    write_json,
    write_parquet,
    write_parquet_stream,
    write_text,
)

# Feature tables first: their quarantine cascades into interactions; also the fail order.
ORDER = ("users", "items", "interactions")
FEATURES = ("users", "items")


def run(params: ValidateParams, inp: str | Path, out: str | Path, quarantine: str | Path,
        report: str | Path) -> dict[str, Any]:
    """Validate ``inp``; return the summary written to ``<report>/summary.json``."""
    inp, out, quarantine, report = Path(inp), Path(out), Path(quarantine), Path(report)
    schema_text, schema = _read_schema(inp)
    sources = schema.get("source_files") or {}
    paths = {t: inp / f"{t}.parquet" for t in v.TABLES}

    log_path = str(paths["interactions"])
    log_file = read_tracked(log_path, RESTORE, pq.ParquetFile)
    v.check_structure("interactions", log_file.schema_arrow, schema, log_path)
    arrow: dict[str, pa.Table] = {}
    for table in FEATURES:
        arrow[table] = read_tracked(paths[table], RESTORE, pq.read_table)
        v.check_structure(table, arrow[table].schema, schema, str(paths[table]))
    dfs = {t: arrow[t].to_pandas() for t in FEATURES}
    index_col = {t: "source_row" if "source_row" in dfs[t].columns else "row" for t in FEATURES}
    for t in FEATURES:
        if index_col[t] == "row":  # no source rows: name the row of the canonical table
            dfs[t]["row"] = np.arange(1, len(dfs[t]) + 1, dtype=np.int64)

    min_ts = v.timestamp_bound(params.min_timestamp, "min_timestamp")
    max_ts = (int(time.time()) if params.max_timestamp is None
              else v.timestamp_bound(params.max_timestamp, "max_timestamp"))

    # -- feature tables first (their quarantine cascades), then the log batch by batch -----
    runner = GXRunner(params.examples)
    tallies: list[Tally] = []
    bits: dict[str, np.ndarray] = {}
    for t in FEATURES:
        df = dfs[t]
        rules, frames = v.feature_rules(df, t, schema.get(t) or {}, index_col[t])
        bits[t] = quarantine_bits(rules, len(df))
        mine = [Tally.of(r) for r in rules]
        add_batch(mine, rules, {t: df, **frames}, df, index_col[t], runner, params.examples)
        tallies += mine
    context = {"rating": schema.get("rating") or {}, "min_ts": min_ts, "max_ts": max_ts,
               "min_label": params.min_timestamp, "max_label": params.max_timestamp or "now",
               "platforms": schema.get("platforms")}
    log = check_log(log_file, log_path, params, context, dfs,
                    {t: bits[t] != 0 for t in FEATURES}, runner)
    tallies += log.tallies
    bits["interactions"] = log.bits

    # -- the summary (written before any failure) ------------------------------------------
    expectations = [t.entry(params.examples, params.max_timestamp) for t in tallies]
    tables = {}
    for t in v.TABLES:
        n_in, n_q = len(bits[t]), int((bits[t] != 0).sum())
        tables[t] = {"file": sources.get(t) or str(paths[t]), "rows_in": n_in,
                     "rows_kept": n_in - n_q, "rows_quarantined": n_q, "policy": params.policy}
    summary = {
        "dataset": schema.get("dataset"), "policy": params.policy,
        "passed": not any(b.any() for b in bits.values()),
        "min_timestamp": params.min_timestamp, "max_timestamp": params.max_timestamp or "now",
        "tables": tables, "expectations": expectations,
    }
    with atomic_dir(report) as tmp:  # written before any failure: it explains the failure
        write_json(summary, tmp / "summary.json")
        write_text(_markdown(summary), tmp / "report.md")

    disagree = [e for e in expectations if e["agrees_with_gx"] is False]
    if disagree:
        raise RuntimeError("validation masks disagree with Great Expectations on: " + "; ".join(
            f"{e['frame']} {e['expectation_type']}({e['column']}): mask {e['mask_count']} rows"
            f" vs GX {e['unexpected_count']}" for e in disagree))

    reasons = {t: [e["reason"] for e in expectations if e["table"] == t] for t in v.TABLES}
    if params.policy == "fail" and not summary["passed"]:
        rows = {t: dfs[t][index_col[t]].to_numpy() for t in FEATURES} | {
            "interactions": log.source_row}
        named = {**index_col, "interactions": "source_row"}   # rows named by source row
        files = {t: (sources.get(t) or str(paths[t])) if named[t] == "source_row"
                 else str(paths[t]) for t in v.TABLES}
        _raise_first(bits, reasons, expectations, rows, files, report)

    # -- outputs: both folders complete, or the previous ones untouched --------------------
    with atomic_dir(out) as out_tmp, atomic_dir(quarantine) as q_tmp:
        for t in FEATURES:
            q = bits[t] != 0
            write_parquet(arrow[t].filter(pa.array(~q)), out_tmp / f"{t}.parquet")
            write_parquet(arrow[t].filter(pa.array(q)).append_column("reason", pa.array(
                reason_text(reasons[t], bits[t][q]), type=pa.string())), q_tmp / f"{t}.parquet")
        schema_ = log_file.schema_arrow
        write_parquet_stream(log_parts(log_file, log_path, params.batch_rows, log, False, []),
                             out_tmp / "interactions.parquet", schema_)
        write_parquet_stream(log_parts(log_file, log_path, params.batch_rows, log, True,
                                       reasons["interactions"]),
                             q_tmp / "interactions.parquet",
                             schema_.append(pa.field("reason", pa.string())))
        write_text(schema_text, out_tmp / "schema.json")
    return summary


def _read_schema(inp: Path) -> tuple[str, dict[str, Any]]:
    path = inp / "schema.json"
    text = read_tracked(path, "dvc repro ingest", lambda p: p.read_text(encoding="utf-8"))
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc}; run `dvc repro ingest` (or `dvc pull`) to "
                        "restore it", file=str(path)) from exc


def _raise_first(bits: dict[str, np.ndarray], reasons: dict[str, list[str]],
                 expectations: list[dict[str, Any]], rows: dict[str, np.ndarray],
                 files: dict[str, str], report: Path) -> None:
    """Policy fail: DataError at the first offending row (feature tables first), naming the
    first rule (in summary order) that sets it aside."""
    total = sum(int((b != 0).sum()) for b in bits.values())
    for t in ORDER:
        q = np.flatnonzero(bits[t])
        if not len(q):
            continue
        pos = int(q[0])
        j = (int(bits[t][pos]) & -int(bits[t][pos])).bit_length() - 1   # lowest set bit
        entry = [e for e in expectations if e["table"] == t][j]
        raise DataError(f"{reasons[t][j]} ({entry['expectation_type']}); {total} row(s) "
                        f"failed validation, see {report / 'summary.json'}", file=files[t],
                        row=int(rows[t][pos]), column=entry["column"])


def _markdown(summary: dict[str, Any]) -> str:
    """The summary for people: tables, every expectation, examples of failures."""
    verdict = "PASSED" if summary["passed"] else "FAILED"
    lines = [f"# Validation report: {summary['dataset']}", "",
             f"Policy: **{summary['policy']}**. Result: **{verdict}**. Plausible timestamps: "
             f"{summary['min_timestamp']} to {summary['max_timestamp']}.", "",
             "| table | source file | rows in | kept | quarantined |", "|---|---|---|---|---|"]
    for t, s in summary["tables"].items():
        lines.append(f"| {t} | {s['file']} | {s['rows_in']} | {s['rows_kept']} | "
                     f"{s['rows_quarantined']} |")
    lines += ["", "## Expectations", "",
              "| frame | column | expectation | ok | elements | unexpected | rule |",
              "|---|---|---|---|---|---|---|"]
    for e in summary["expectations"]:
        ok = "yes" if e["success"] else "**no**"
        lines.append(f"| {e['frame']} | {e['column']} | {e['expectation_type']} | {ok} | "
                     f"{e['element_count']} | {e['unexpected_count']} | {e['reason']} |")
    failed = [e for e in summary["expectations"] if not e["success"]]
    if failed:
        lines += ["", "## Offending rows (first examples)", ""]
        for e in failed:
            shown = ", ".join(json.dumps(x, sort_keys=True) for x in e["examples"])
            lines.append(f"- {e['frame']} / {e['reason']} ({e['unexpected_count']}): {shown}")
    return "\n".join(lines) + "\n"
