"""The one predict interface shared by meta-learners and baselines."""

from __future__ import annotations

from typing import Protocol

import torch

from metarec.data.tasks import TaskBatch


class ColdStartPredictor(Protocol):
    """Adapts to each task's support set, then scores candidate items for that task's user."""

    name: str

    def predict(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings (T, C) for candidate item indices ``items`` (T, C).

        Only ``batch.user_idx`` and the support tensors may be used; the query ratings never.
        """
        ...
