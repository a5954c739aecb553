"""``pretrain``: the plain network fitted to every rating of the meta-train tasks (support and
query); no adaptation. The non-meta reference of the network family, and finetune's start."""

from __future__ import annotations

from torch import Tensor

from metarec.algorithms import register
from metarec.meta.features import TaskSet
from metarec.meta.gradient import MetaAlgorithm, masked_mse, task_mean
from metarec.models.network import PreferenceNet


@register
class Pretrain(MetaAlgorithm):
    name = "pretrain"
    kind = "baseline"
    adapts = False        # no inner loop: test-time inner steps are not searched
    second_order = False

    def __init__(self, model: PreferenceNet, adapt: str = "head", inner_lr: float = 0.0,
                 inner_steps: int = 0) -> None:
        super().__init__(model, adapt, 0.0, 0)

    def outer_loss(self, support: TaskSet, query: TaskSet) -> tuple[Tensor, Tensor]:
        every = support.cat(query)
        pred = self.model(every.user, every.items)                       # (T, S + Q)
        loss = task_mean(masked_mse(pred, every.ratings, every.mask), every.mask)
        return loss, loss.detach()
