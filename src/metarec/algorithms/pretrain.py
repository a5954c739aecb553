"""``pretrain``: the network trained on the meta-train tasks without any adaptation.

The same network and objective as the meta-learners, with zero inner steps: each task's query
is predicted from the user's features and (the fold-in) the support items, never from a
gradient step. The non-meta reference of the network family, and finetune's start.
"""

from __future__ import annotations

from typing import Any

from metarec.algorithms import register
from metarec.meta.gradient import MetaAlgorithm
from metarec.models.network import PreferenceNet


@register
class Pretrain(MetaAlgorithm):
    name = "pretrain"
    kind = "baseline"
    adapts = False        # no inner loop: test-time inner steps are not searched
    second_order = False

    def __init__(self, model: PreferenceNet, adapt: str = "head", inner_lr: float = 0.0,
                 inner_steps: int = 0, **common: Any) -> None:
        super().__init__(model, adapt, 0.0, 0, **common)
