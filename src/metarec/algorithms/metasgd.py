"""``metasgd`` (Li et al., 2017): MAML with one learned inner learning rate per adapted
parameter entry, trained through the second-order meta-gradient."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metarec.algorithms import register
from metarec.meta.gradient import GradientLearner
from metarec.models.network import PreferenceNet
from metarec.train.entries import LearnerAlgorithm


def _key(name: str) -> str:
    return name.replace(".", "__")


class MetaSGDLearner(GradientLearner):
    """A gradient learner whose step size is a learned tensor per adapted parameter."""

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int,
                 **common: Any) -> None:
        super().__init__(model, adapt, inner_lr, inner_steps, **common)
        self.lrs = nn.ParameterDict({
            _key(n): nn.Parameter(torch.full_like(p, inner_lr))
            for n, p in self.meta_params().items()})

    def learning_rates(self) -> dict[str, Tensor | float]:
        return {n: self.lrs[_key(n)] for n in self.adapt_names}


@register
class MetaSGD(LearnerAlgorithm):
    name = "metasgd"
    learner = MetaSGDLearner
