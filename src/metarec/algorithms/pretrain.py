"""``pretrain``: the network trained on the meta-train tasks without any adaptation.

The same network and objective as the meta-learners, with no inner loop (a plain
:class:`~metarec.meta.learner.Learner`): each task's query is predicted from the user's
features and (the fold-in) the support items, never from a gradient step. The non-adapting
reference of the network family, and finetune's start.
"""

from __future__ import annotations

from metarec.algorithms import register
from metarec.meta.learner import Learner
from metarec.models.base import Capabilities
from metarec.train.entries import LearnerAlgorithm


@register
class Pretrain(LearnerAlgorithm):
    name = "pretrain"
    kind = "baseline"
    learner = Learner
    capabilities = Capabilities(gradient=True, uses_draws=True, unused_parameters=True)
