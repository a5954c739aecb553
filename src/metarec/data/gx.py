"""Great Expectations: the independent verdict on the rules of :mod:`metarec.data.validation`.

Every rule is also run as a GX expectation in an ephemeral context; the validate stage checks
that GX counts the same offending rows as its own vectorised masks. A log is checked batch by
batch: each suite is set up once and run on every batch, and the stage adds up the counts.
"""


from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from metarec.data.validation import Rule


class GXRunner:
    """Runs each suite's expectations on frame after frame (batches of a log) in one
    ephemeral GX context, set up once per suite.

    A suite is named by the caller (one per physical frame); each of its rules is known by its
    index in the stage's rule list, which the results are keyed by."""

    def __init__(self, examples: int) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx, self.examples = gx, examples
        self.classes = {
            "expect_column_values_to_not_be_null": gxe.ExpectColumnValuesToNotBeNull,
            "expect_column_values_to_not_be_in_set": gxe.ExpectColumnValuesToNotBeInSet,
            "expect_column_values_to_be_between": gxe.ExpectColumnValuesToBeBetween,
            "expect_column_values_to_be_in_set": gxe.ExpectColumnValuesToBeInSet,
            "expect_column_values_to_be_unique": gxe.ExpectColumnValuesToBeUnique,
            "expect_compound_columns_to_be_unique": gxe.ExpectCompoundColumnsToBeUnique,
        }
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_pandas("metarec")
        self.suites: dict[str, tuple[Any, list[tuple[int, Rule]]]] = {}

    def _suite(self, name: str, rules: list[tuple[int, Rule]]) -> Any:
        if name not in self.suites:
            batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(
                name)
            suite = self.context.suites.add(self.gx.ExpectationSuite(name=name))
            for _, rule in rules:
                etype, kwargs = rule.expectation  # type: ignore[misc]
                suite.add_expectation(self.classes[etype](
                    **{k: v for k, v in kwargs.items() if v is not None}))
            vd = self.context.validation_definitions.add(
                self.gx.ValidationDefinition(name=name, data=batch, suite=suite))
            self.suites[name] = (vd, rules)
        return self.suites[name][0]

    def run(self, name: str, frame: pd.DataFrame, rules: list[tuple[int, Rule]],
            index: tuple[str, ...] | None = None) -> dict[int, dict[str, Any]]:
        """The GX verdict of ``rules`` (index, rule; every one with an expectation) on
        ``frame``: per rule index, success / element_count / unexpected_count and GX's first
        ``examples`` offending rows named by the ``index`` columns (default: source_row, or
        row for tables that have none)."""
        vd = self._suite(name, rules)
        if index is None:
            index = ("source_row" if "source_row" in frame.columns else "row",)
        with _no_fingerprint():
            result = vd.run(batch_parameters={"dataframe": frame}, result_format={
                "result_format": "SUMMARY", "partial_unexpected_count": max(self.examples, 1),
                "unexpected_index_column_names": list(index)})
        if len(result.results) != len(rules):
            raise RuntimeError(f"GX returned {len(result.results)} results for {len(rules)} "
                               f"expectations on {name}")
        out: dict[int, dict[str, Any]] = {}
        # GX keeps suite order; match on type + column as a guard.
        for (i, rule), res in zip(rules, result.results, strict=True):
            cfg = res.expectation_config
            if cfg.type != rule.expectation[0]:  # type: ignore[index]
                raise RuntimeError(f"GX result order changed on {name}: {cfg.type}")
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise RuntimeError(f"GX failed on {name} {cfg.type}: "
                                   f"{res.exception_info.get('exception_message')}")
            info = res.result
            rows = info.get("partial_unexpected_index_list") or []
            out[i] = {
                "success": bool(res.success),
                "element_count": int(info.get("element_count", len(frame))),
                "unexpected_count": int(info.get("unexpected_count", 0)),
                "examples": [{k: jsonable(v) for k, v in row.items()}
                             for row in rows[:self.examples]],
            }
        return out


@contextlib.contextmanager
def _no_fingerprint() -> Iterator[None]:
    """GX's pandas engine labels every batch under 1 GB with a fingerprint, the md5 of pandas'
    hashes of every cell, kept in its own result metadata, which the stage never reads; on a
    log of 50M rows and 1M user ids it cost a third of the stage (hashing strings). Turned off
    while GX runs (the verdicts do not use it)."""
    import great_expectations.execution_engine.pandas_execution_engine as engine

    threshold = engine.HASH_THRESHOLD
    engine.HASH_THRESHOLD = 0
    try:
        yield
    finally:
        engine.HASH_THRESHOLD = threshold


def jsonable(v: Any) -> Any:
    """A cell value as strict JSON (NaN/inf as strings, NA as null, arrays as lists)."""
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, (np.ndarray, list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v
