"""What is popular now: each item's interactions in the weeks before a moment, as an input.

A user who arrives today picks what is popular today, and a warm user's next items follow the
catalogue's current trend more than its all-time counts (the network's learned item biases).
Time is cut into steps of ``step_days`` (aligned to the Unix epoch, so every data set and
every night cut them alike); an item's *recency* at a moment in step ``b`` is
``log1p(interactions in steps b - window .. b - 1)``: the last ``window`` whole steps, never the
moment's own step (which may hold the very interactions being predicted).

:class:`Recency` holds the value of every item at every step of a log (columns), and maps a
task's moment (:attr:`~metarec.data.tasks.TaskBatch.now`) to its column. A moment after the
log's last step reads the last column: the latest window the log knows. The training stages
build it from the meta-train history; the nightly batch from the log up to the night.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DAY_S = 86_400


@dataclass(frozen=True)
class Recency:
    """``values`` (N items, P steps) float32: the recency of item n in step ``first + p``."""

    first: int            # the epoch step of column 0
    step_s: int           # seconds per step
    values: Tensor        # (N, P)

    def periods(self, now: Tensor) -> Tensor:
        """The column (T,) long of each moment ``now`` (T,) (seconds since the epoch)."""
        step = torch.div(now.long(), self.step_s, rounding_mode="floor") - self.first
        return step.clamp(0, self.values.shape[1] - 1)

    def to(self, device: torch.device | str) -> Recency:
        return Recency(self.first, self.step_s, self.values.to(device))


def recency(item_rows: np.ndarray, timestamps: np.ndarray, n_items: int, window: int,
            step_days: int, at: int | None = None) -> Recency:
    """The recency of ``n_items`` items from interactions (item row, timestamp in seconds),
    counted over ``window`` steps of ``step_days`` days. Columns: every step from the log's
    first to the one after its last (or only the step of the moment ``at``, as the nightly
    batch asks). Vectorised: one bincount, one cumulative sum."""
    if window < 1 or step_days < 1:
        raise ValueError(f"window and step_days must be at least 1, got {window}, {step_days}")
    step_s = int(step_days) * DAY_S
    steps = np.floor_divide(np.asarray(timestamps, dtype=np.int64), step_s)
    rows = np.asarray(item_rows, dtype=np.int64)
    if at is not None:
        first = last = int(at) // step_s
    elif len(steps):
        first, last = int(steps.min()), int(steps.max()) + 1
    else:
        first = last = 0
    lo = first - window                           # the earliest step any column reads
    keep = (steps >= lo) & (steps < last)
    width = last - lo
    counts = np.bincount((steps[keep] - lo) * n_items + rows[keep],
                         minlength=width * n_items).reshape(width, n_items)
    before = np.vstack([np.zeros((1, n_items), np.int64), np.cumsum(counts, axis=0)])
    # column of step b (b = first..last): interactions in steps b - window .. b - 1
    cols = np.arange(first, last + 1) - lo
    window_counts = before[cols] - before[cols - window]              # (P, N)
    values = torch.from_numpy(np.log1p(window_counts.T.astype(np.float32)).copy())
    return Recency(first=first, step_s=step_s, values=values)


def window_steps(days: int, step_days: int) -> int:
    """``days`` as whole steps of ``step_days`` (rounded up, at least one)."""
    return max(1, -(-int(days) // int(step_days)))


def window_bounds(at: int, window: int, step_days: int) -> tuple[int, int]:
    """[lo, hi) in seconds: the ``window`` whole steps before the step of the moment ``at``,
    what :func:`recency` counts for it."""
    step_s = int(step_days) * DAY_S
    step = int(at) // step_s
    return (step - window) * step_s, step * step_s


def recency_at(counts: np.ndarray, at: int, step_days: int) -> Recency:
    """A one-column :class:`Recency` of the moment ``at`` from each item's interactions in
    :func:`window_bounds` (counted elsewhere: the nightly batch asks its log's engine)."""
    step_s = int(step_days) * DAY_S
    values = torch.from_numpy(np.log1p(np.asarray(counts, np.float32))[:, None].copy())
    return Recency(first=int(at) // step_s, step_s=step_s, values=values)
