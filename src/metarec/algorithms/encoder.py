"""``encoder``: the amortised meta-learner, an encoder that reads the support set directly.

The network is meta-trained on episodes shaped like the test tasks (a user's support of K
interactions, its next ones as the query) with no inner loop (a plain
:class:`~metarec.meta.learner.Learner`): the user vector is read from the support by the
fold-in, never fitted by a gradient step. Every gradient meta-learner is this network plus an
inner loop; ``metrics/eval.json: zero_step`` measures what that inner loop adds.
"""

from __future__ import annotations

from metarec.algorithms import register
from metarec.meta.learner import Learner
from metarec.models.base import Capabilities
from metarec.train.entries import LearnerAlgorithm


@register
class Encoder(LearnerAlgorithm):
    name = "encoder"
    learner = Learner
    capabilities = Capabilities(gradient=True, uses_draws=True, unused_parameters=True)
