"""Great Expectations: the independent verdict on the rules of :mod:`metarec.data.validation`.

Every rule is also run as a GX expectation in an ephemeral context; the validate stage checks
that GX counts the same offending rows as its own vectorised masks.
"""


from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd

from metarec.data.validation import Rule


def run_gx(frames: dict[str, pd.DataFrame], rules: list[Rule], examples: int
           ) -> dict[int, dict[str, Any]]:
    """Run each frame's expectations in an ephemeral GX context.

    Returns, per rule index, success / element_count / unexpected_count and GX's first
    ``examples`` offending rows (with source_row, or row for tables that have none).
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    classes = {
        "expect_column_values_to_not_be_null": gxe.ExpectColumnValuesToNotBeNull,
        "expect_column_values_to_not_be_in_set": gxe.ExpectColumnValuesToNotBeInSet,
        "expect_column_values_to_be_between": gxe.ExpectColumnValuesToBeBetween,
        "expect_column_values_to_be_in_set": gxe.ExpectColumnValuesToBeInSet,
        "expect_column_values_to_be_unique": gxe.ExpectColumnValuesToBeUnique,
        "expect_compound_columns_to_be_unique": gxe.ExpectCompoundColumnsToBeUnique,
    }
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("metarec")
    out: dict[int, dict[str, Any]] = {}
    for frame_name, frame in frames.items():
        mine = [(i, r) for i, r in enumerate(rules)
                if r.frame == frame_name and r.expectation is not None]
        if not mine:
            continue
        batch = source.add_dataframe_asset(frame_name).add_batch_definition_whole_dataframe(
            frame_name)
        suite = context.suites.add(gx.ExpectationSuite(name=frame_name))
        for _, rule in mine:
            etype, kwargs = rule.expectation  # type: ignore[misc]
            kw = {k: v for k, v in kwargs.items() if v is not None}
            suite.add_expectation(classes[etype](**kw))
        vd = context.validation_definitions.add(
            gx.ValidationDefinition(name=frame_name, data=batch, suite=suite))
        index_col = "source_row" if "source_row" in frame.columns else "row"
        result = vd.run(batch_parameters={"dataframe": frame}, result_format={
            "result_format": "SUMMARY", "partial_unexpected_count": max(examples, 1),
            "unexpected_index_column_names": [index_col]})
        if len(result.results) != len(mine):
            raise RuntimeError(f"GX returned {len(result.results)} results for {len(mine)} "
                               f"expectations on {frame_name}")
        # GX keeps suite order; match on type + column as a guard.
        for (i, rule), res in zip(mine, result.results, strict=True):
            cfg = res.expectation_config
            if cfg.type != rule.expectation[0]:  # type: ignore[index]
                raise RuntimeError(f"GX result order changed on {frame_name}: {cfg.type}")
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise RuntimeError(f"GX failed on {frame_name} {cfg.type}: "
                                   f"{res.exception_info.get('exception_message')}")
            info = res.result
            rows = info.get("partial_unexpected_index_list") or []
            out[i] = {
                "success": bool(res.success),
                "element_count": int(info.get("element_count", len(frame))),
                "unexpected_count": int(info.get("unexpected_count", 0)),
                "examples": [{k: jsonable(v) for k, v in row.items()}
                             for row in rows[:examples]],
            }
    return out


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
