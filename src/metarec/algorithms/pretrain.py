"""``pretrain``: the same network trained without episodes, the reference of every
meta-learner (STYLE rule 19).

Each meta-train user's whole training-period history is split at random into a context (the
network's fold-in reads it as it reads a support set) and targets (every other interaction),
as a denoising autoencoder is trained (:data:`metarec.data.draws.HISTORY`): no K-shot tasks,
no query of the next interactions, no inner loop. The best step is kept on the validation
tasks, as for every model. ``finetune`` starts from it.
"""

from __future__ import annotations

from metarec.algorithms import register
from metarec.data.draws import HISTORY
from metarec.meta.learner import Learner
from metarec.meta.predictor import AdaptivePredictor
from metarec.models.base import Capabilities, FitContext
from metarec.train.entries import LearnerAlgorithm


@register
class Pretrain(LearnerAlgorithm):
    name = "pretrain"
    kind = "baseline"
    learner = Learner
    # trained on whole histories: the draw of meta-train tasks does not apply
    capabilities = Capabilities(gradient=True, unused_parameters=True)

    @classmethod
    def fit(cls, ctx: FitContext) -> AdaptivePredictor:
        result = cls.meta_train(ctx.data, ctx.model, ctx.train, ctx.log_dir, HISTORY)
        return cls.predictor(result.learner, ctx.data, result.metrics())
