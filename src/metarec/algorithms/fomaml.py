"""``fomaml``: MAML with the inner-loop gradients treated as constants (first order), which
makes it cheap and trainable data-parallel (DDP)."""

from __future__ import annotations

from metarec.algorithms import register
from metarec.meta.gradient import GradientLearner
from metarec.train.entries import FIRST_ORDER, LearnerAlgorithm


class FirstOrderLearner(GradientLearner):
    first_order = True


@register
class FOMAML(LearnerAlgorithm):
    name = "fomaml"
    learner = FirstOrderLearner
    capabilities = FIRST_ORDER
