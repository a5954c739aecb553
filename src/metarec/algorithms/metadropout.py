"""``metadropout`` (Lee et al., ICLR 2020): learned, input-dependent multiplicative noise.

In the inner loop the hidden interaction features are multiplied by ``softplus(z)``,
``z ~ N(mu_phi(h), 1)``; the query loss is noise-free and ``phi`` is learned in the outer loop
through the second-order meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from metarec.algorithms import register
from metarec.meta.gradient import GradientLearner
from metarec.models.network import PreferenceNet
from metarec.train.entries import LearnerAlgorithm


class MetaDropoutNoise(nn.Module):
    """Input-dependent multiplicative noise: h * softplus(mu_phi(h) + eps), eps ~ N(0, 1)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mu = nn.Linear(width, width)
        nn.init.zeros_(self.mu.weight)
        nn.init.zeros_(self.mu.bias)

    def perturb(self, eps: Tensor) -> Callable[[Tensor], Tensor]:
        """A hook for the network; ``eps`` must match the hidden features' shape."""
        def apply(h: Tensor) -> Tensor:
            return h * F.softplus(self.mu(h) + eps)
        return apply


class MetaDropoutLearner(GradientLearner):
    """A gradient learner that perturbs the hidden features while it adapts."""

    def __init__(self, model: PreferenceNet, adapt: str, inner_lr: float, inner_steps: int,
                 **common: Any) -> None:
        super().__init__(model, adapt, inner_lr, inner_steps, **common)
        self.noise = MetaDropoutNoise(model.hidden_width).to(model.global_bias.dtype)


@register
class MetaDropout(LearnerAlgorithm):
    name = "metadropout"
    learner = MetaDropoutLearner
