"""``maml`` (Finn et al., 2017): a meta-learned initialisation, second-order meta-gradient
through every inner step of every task (batched, :mod:`metarec.meta.gradient`)."""

from __future__ import annotations

from metarec.algorithms import register
from metarec.train.entries import LearnerAlgorithm


@register
class MAML(LearnerAlgorithm):
    name = "maml"
