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
cascade to the interactions that point at them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metarec.config import ValidateParams
from metarec.data import validation as v
from metarec.data.gx import jsonable, run_gx
from metarec.errors import DataError
from metarec.io import atomic_dir, read_tracked, write_json, write_parquet, write_text

# Feature tables first: their quarantine cascades into interactions; also the fail order.
ORDER = ("users", "items", "interactions")


def run(params: ValidateParams, inp: str | Path, out: str | Path, quarantine: str | Path,
        report: str | Path) -> dict[str, Any]:
    """Validate ``inp``; return the summary written to ``<report>/summary.json``."""
    inp, out, quarantine, report = Path(inp), Path(out), Path(quarantine), Path(report)
    schema_text, schema = _read_schema(inp)
    sources = schema.get("source_files") or {}
    paths = {t: inp / f"{t}.parquet" for t in v.TABLES}

    arrow: dict[str, pa.Table] = {}
    for table in v.TABLES:
        arrow[table] = read_tracked(paths[table], "dvc repro ingest", pq.read_table)
        v.check_structure(table, arrow[table], schema, str(paths[table]))
    dfs = {t: arrow[t].to_pandas() for t in v.TABLES}
    index_col = {t: "source_row" if "source_row" in dfs[t].columns else "row" for t in v.TABLES}
    for t in ("users", "items"):
        if index_col[t] == "row":  # no source rows: name the row of the canonical table
            dfs[t]["row"] = np.arange(1, len(dfs[t]) + 1, dtype=np.int64)

    min_ts = v.timestamp_bound(params.min_timestamp, "min_timestamp")
    max_ts = (int(time.time()) if params.max_timestamp is None
              else v.timestamp_bound(params.max_timestamp, "max_timestamp"))

    # -- rules, feature tables first (their quarantine cascades) --------------------------
    rules: list[v.Rule] = []
    frames: dict[str, pd.DataFrame] = {}
    q_masks: dict[str, np.ndarray] = {}
    for t in ("users", "items"):
        df = dfs[t]
        t_rules, t_frames = v.feature_rules(df, t, schema.get(t) or {}, index_col[t])
        frames[t] = df
        frames.update(t_frames)
        rules += t_rules
        q_masks[t] = _quarantine_mask(t_rules, len(df))

    inter = dfs["interactions"]
    frames["interactions"] = inter
    base = v.interaction_rules(inter, schema.get("rating") or {}, min_ts, max_ts,
                               params.min_timestamp, params.max_timestamp or "now",
                               schema.get("platforms"))
    for t in ("users", "items"):
        rule, frame = v.reference_rule(inter, dfs[t], t)
        frames[rule.frame] = frame
        base.append(rule)
    others = _quarantine_mask(base, len(inter))
    base.append(v.duplicate_rule(inter, others))
    for t in ("users", "items"):
        ids = dfs[t][v.ID_COLUMN[t]]
        base.append(v.cascade_rule(inter, ids[~q_masks[t]], ids[q_masks[t]], t))
    rules += base
    q_masks["interactions"] = _quarantine_mask(base, len(inter))

    # -- GX verdict, then the summary (written before any failure) -------------------------
    gx = run_gx(frames, rules, params.examples)
    expectations = [_entry(i, r, gx.get(i), frames[r.frame], dfs[r.table], index_col[r.table],
                           params) for i, r in enumerate(rules)]
    tables = {}
    for t in v.TABLES:
        n_in, n_q = len(dfs[t]), int(q_masks[t].sum())
        tables[t] = {"file": sources.get(t) or str(paths[t]), "rows_in": n_in,
                     "rows_kept": n_in - n_q, "rows_quarantined": n_q, "policy": params.policy}
        if tables[t]["rows_kept"] + tables[t]["rows_quarantined"] != tables[t]["rows_in"]:
            raise RuntimeError(f"{t}: rows in != rows kept + rows quarantined")
    summary = {
        "dataset": schema.get("dataset"), "policy": params.policy,
        "passed": not any(q.any() for q in q_masks.values()),
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

    if params.policy == "fail" and not summary["passed"]:
        _raise_first(rules, q_masks, dfs, index_col, sources, paths, report)

    # -- outputs: both folders complete, or the previous ones untouched --------------------
    with atomic_dir(out) as out_tmp, atomic_dir(quarantine) as q_tmp:
        for t in v.TABLES:
            q = q_masks[t]
            write_parquet(arrow[t].filter(pa.array(~q)), out_tmp / f"{t}.parquet")
            reasons = _reasons([r for r in rules if r.table == t], q)
            write_parquet(arrow[t].filter(pa.array(q)).append_column(
                "reason", pa.array(reasons, type=pa.string())), q_tmp / f"{t}.parquet")
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


def _quarantine_mask(rules: list[v.Rule], n: int) -> np.ndarray:
    """(n,) bool: rows set aside by any rule; fills each rule's default quarantine mask."""
    mask = np.zeros(n, dtype=bool)
    for rule in rules:
        if len(rule.quarantine) != n:
            rule.quarantine = rule.row_mask(n)
        mask |= rule.quarantine
    return mask


def _reasons(rules: list[v.Rule], q: np.ndarray) -> np.ndarray:
    """One '; '-joined reason string per quarantined row, in rule order (vectorised)."""
    acc = np.full(int(q.sum()), "", dtype=object)
    for rule in rules:
        hit = rule.quarantine[q]
        acc = acc + np.where(hit, rule.reason + "; ", "").astype(object)
    return np.array([s[:-2] for s in acc], dtype=object) if len(acc) else acc


def _entry(i: int, rule: v.Rule, gx: dict[str, Any] | None, frame: pd.DataFrame,
           df: pd.DataFrame, index_col: str, params: ValidateParams) -> dict[str, Any]:
    """One summary line: GX's verdict (or the mask's, for derived rules) and examples."""
    mask_count = int(rule.frame_mask.sum())
    entry: dict[str, Any] = {
        "table": rule.table, "frame": rule.frame, "column": rule.column, "reason": rule.reason,
        "mask_count": mask_count, "rows_quarantined": int(rule.quarantine.sum()),
    }
    if rule.expectation is None or gx is None:
        flagged = df.loc[rule.row_mask(len(df)), [index_col, rule.column]].head(params.examples)
        entry.update({
            "expectation_type": "derived", "kwargs": {}, "success": mask_count == 0,
            "element_count": len(frame), "unexpected_count": mask_count,
            "agrees_with_gx": None,
            "examples": [{k: jsonable(x) for k, x in row.items()}
                         for row in flagged.to_dict("records")],
        })
        return entry
    etype, kwargs = rule.expectation
    kwargs = dict(kwargs)
    if "max_value" in kwargs and rule.column == "timestamp" and params.max_timestamp is None:
        kwargs["max_value"] = "now"  # the resolved clock time would make reruns differ
    entry.update({
        "expectation_type": etype, "kwargs": {k: jsonable(x) for k, x in kwargs.items()},
        "success": gx["success"], "element_count": gx["element_count"],
        "unexpected_count": gx["unexpected_count"],
        "agrees_with_gx": gx["unexpected_count"] == _default(rule.gx_count, mask_count)
        and gx["element_count"] == _default(rule.gx_elements, len(frame)),
        "examples": gx["examples"],
    })
    return entry


def _default(value: int | None, fallback: int) -> int:
    return fallback if value is None else value


def _raise_first(rules: list[v.Rule], q_masks: dict[str, np.ndarray],
                 dfs: dict[str, pd.DataFrame], index_col: dict[str, str],
                 sources: dict[str, Any], paths: dict[str, Path], report: Path) -> None:
    """Policy fail: DataError at the first offending row (feature tables first)."""
    total = sum(int(q.sum()) for q in q_masks.values())
    for t in ORDER:
        q = q_masks[t]
        if not q.any():
            continue
        pos = int(np.flatnonzero(q)[0])
        rule = next(r for r in rules if r.table == t and r.quarantine[pos])
        etype = rule.expectation[0] if rule.expectation else "derived"
        if index_col[t] == "source_row":
            file, row = sources.get(t) or str(paths[t]), int(dfs[t]["source_row"].iloc[pos])
        else:
            file, row = str(paths[t]), pos + 1
        raise DataError(f"{rule.reason} ({etype}); {total} row(s) failed validation, "
                        f"see {report / 'summary.json'}", file=file, row=row,
                        column=rule.column)


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
