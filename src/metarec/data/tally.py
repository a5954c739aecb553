"""One data rule's verdict summed over the batches of its table, as a summary entry.

A rule is evaluated on each batch of a log (its masks) and by Great Expectations on each
batch's frame; the counts add up, and the first examples in row order are those of the whole
table, so the summary is the same whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from metarec.data.gx import GXRunner, jsonable
from metarec.data.validation import Rule

ROW = "__row"   # position in the log, carried in GX examples where frames are not in row order


@dataclass
class Tally:
    """Counts and examples of one rule over every batch (``gx``: None until GX ran it)."""

    table: str
    frame: str
    column: str
    reason: str
    expectation: tuple[str, dict[str, Any]] | None
    mask_count: int = 0
    quarantined: int = 0
    want_unexpected: int = 0     # what GX should count: the mask's rows or the rule's gx_count
    want_elements: int = 0       # ... and the frame's rows or the rule's gx_elements
    examples: list[dict[str, Any]] = field(default_factory=list)
    gx: dict[str, Any] | None = None

    @classmethod
    def of(cls, rule: Rule) -> Tally:
        return cls(rule.table, rule.frame, rule.column, rule.reason, rule.expectation)

    def add(self, rule: Rule, frame_rows: int, df: pd.DataFrame, index_col: str,
            examples: int) -> None:
        """One batch of the rule: its masks over ``df`` (the batch; ``frame_rows``: the rows
        of the rule's frame) and, for a derived rule, its first flagged rows as examples."""
        mask_count = int(rule.frame_mask.sum())
        self.mask_count += mask_count
        self.quarantined += int(rule.quarantine.sum())
        self.want_unexpected += mask_count if rule.gx_count is None else rule.gx_count
        self.want_elements += frame_rows if rule.gx_elements is None else rule.gx_elements
        if rule.expectation is None and mask_count and len(self.examples) < examples:
            flagged = df.loc[rule.row_mask(len(df)), [index_col, rule.column]]
            self.examples += [{k: jsonable(x) for k, x in row.items()}
                              for row in flagged.head(examples).to_dict("records")]
            del self.examples[examples:]

    def add_gx(self, result: dict[str, Any]) -> None:
        """GX's verdict on one batch's frame."""
        if self.gx is None:
            self.gx = {"success": True, "element_count": 0, "unexpected_count": 0,
                       "examples": []}
        self.gx["success"] = self.gx["success"] and result["success"]
        self.gx["element_count"] += result["element_count"]
        self.gx["unexpected_count"] += result["unexpected_count"]
        self.gx["examples"] = self.gx["examples"] + result["examples"]

    def entry(self, examples: int, max_timestamp: str | None) -> dict[str, Any]:
        """The summary line: GX's verdict (or the mask's, for derived rules) and examples.
        Examples that carry their position (:data:`ROW`) are put in row order first."""
        entry: dict[str, Any] = {
            "table": self.table, "frame": self.frame, "column": self.column,
            "reason": self.reason, "mask_count": self.mask_count,
            "rows_quarantined": self.quarantined,
        }
        if self.expectation is None or self.gx is None:
            entry.update({
                "expectation_type": "derived", "kwargs": {}, "success": self.mask_count == 0,
                "element_count": self.want_elements, "unexpected_count": self.mask_count,
                "agrees_with_gx": None, "examples": self.examples[:examples]})
            return entry
        etype, kwargs = self.expectation
        kwargs = dict(kwargs)
        if "max_value" in kwargs and self.column == "timestamp" and max_timestamp is None:
            kwargs["max_value"] = "now"  # the resolved clock time would make reruns differ
        gx = self.gx
        shown = sorted(gx["examples"], key=lambda x: x.get(ROW, 0))[:examples]
        entry.update({
            "expectation_type": etype, "kwargs": {k: jsonable(x) for k, x in kwargs.items()},
            "success": gx["success"], "element_count": gx["element_count"],
            "unexpected_count": gx["unexpected_count"],
            "agrees_with_gx": gx["unexpected_count"] == self.want_unexpected
            and gx["element_count"] == self.want_elements,
            "examples": [{k: x for k, x in row.items() if k != ROW} for row in shown],
        })
        return entry


def add_batch(tallies: list[Tally], rules: list[Rule], frames: dict[str, pd.DataFrame],
              df: pd.DataFrame, index_col: str, runner: GXRunner, examples: int) -> None:
    """One batch of a table: each rule's masks into its tally (``tallies[j]`` for
    ``rules[j]``), and GX's verdict on each of the batch's frames."""
    for j, rule in enumerate(rules):
        tallies[j].add(rule, len(frames[rule.frame]), df, index_col, examples)
    for name, frame in frames.items():
        mine = [(j, r) for j, r in enumerate(rules)
                if r.frame == name and r.expectation is not None]
        for j, result in runner.run(name, frame, mine).items():
            tallies[j].add_gx(result)
