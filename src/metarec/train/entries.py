"""The registry's side of an episodic algorithm: how its learner is built, fitted and loaded.

An algorithm module (``metarec.algorithms.<name>``) registers a :class:`LearnerAlgorithm`
subclass that names its learner class (:mod:`metarec.meta.learner`), declares what it can do
(``capabilities``) and says which of its ``train.<name>`` params its learner takes
(:meth:`LearnerAlgorithm.config_from`). Everything else is shared here: building the learner
from params and data (warm start, sampler), meta-training it with the outer loop
(:func:`metarec.train.fit.fit_meta`), wrapping it as a predictor, rebuilding it from a
checkpoint. The learner itself knows nothing of params, the registry or checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from metarec.config import ModelParams, TrainParams, to_dict
from metarec.data.tasks import EpisodeData
from metarec.meta.features import FeatureStore
from metarec.meta.gradient import GradientLearner
from metarec.meta.learner import Learner
from metarec.meta.predictor import AdaptivePredictor
from metarec.meta.warm_start import svd_start
from metarec.models.base import Algorithm, Capabilities, FitContext
from metarec.models.network import build_network, network_kwargs
from metarec.train.fit import FitResult, fit_meta

# what the gradient meta-learners declare (second order unless they say otherwise)
SECOND_ORDER = Capabilities(tunable_steps=True, gradient=True, second_order=True,
                            uses_draws=True, unused_parameters=True)
FIRST_ORDER = Capabilities(tunable_steps=True, gradient=True, second_order=False,
                           uses_draws=True, unused_parameters=True)


class LearnerAlgorithm(Algorithm):
    """An algorithm whose model is a :class:`Learner` trained on episodes by the outer loop."""

    kind = "meta"
    learner: ClassVar[type[Learner]] = GradientLearner
    capabilities = SECOND_ORDER

    @classmethod
    def config_from(cls, model: ModelParams, train: TrainParams,
                    data: EpisodeData | None = None) -> dict[str, Any]:
        """The learner's constructor arguments (besides the network) from params and data."""
        explicit = data is None or data.explicit
        config = {"adapt": model.adapt, "objective": to_dict(train.objective),
                  "fold_in": model.fold_in, "explicit": explicit,
                  "relevance": data.relevance_threshold if data is not None else 4.0}
        if issubclass(cls.learner, GradientLearner):
            config.update(inner_lr=train.inner_lr, inner_steps=train.inner_steps)
        return config

    @classmethod
    def outer_lr(cls, train: TrainParams) -> float:
        return train.outer_lr

    @classmethod
    def ddp_refusal(cls, train: TrainParams) -> str | None:
        if cls.capabilities.second_order:
            return ("its meta-gradient is second order (it differentiates through the inner "
                    "loop's gradients), which PyTorch's DistributedDataParallel does not "
                    "support; use fomaml or reptile")
        return None

    @classmethod
    def build(cls, network: Any, config: dict[str, Any]) -> Learner:
        """The learner around ``network`` with checkpoint-style ``config``."""
        return cls.learner(network, **config)

    @classmethod
    def create(cls, data: EpisodeData, model: ModelParams, train: TrainParams) -> Learner:
        """A freshly initialised learner (the outer loop calls this after seeding)."""
        kwargs = network_kwargs(data.items, data.users, data.rating_range, model)
        learner = cls.build(build_network(kwargs), cls.config_from(model, train, data))
        learner.network_kwargs = kwargs
        learner.set_popularity(data, train.objective.popularity_power)
        if model.warm_start == "svd":
            svd_start(learner.model, data)
        return learner

    @classmethod
    def predictor(cls, learner: Learner, data: EpisodeData,
                  fit_metrics: dict[str, Any]) -> AdaptivePredictor:
        return AdaptivePredictor(cls.name, learner, FeatureStore(data.users, data.items),
                                 fit_metrics=fit_metrics,
                                 adapts=cls.capabilities.tunable_steps)

    @classmethod
    def meta_train(cls, data: EpisodeData, model: ModelParams, train: TrainParams,
                   log_dir: str | Path, draw: str | None = None) -> FitResult:
        """A fresh learner meta-trained by the outer loop (``train.seed`` seeds it)."""
        return fit_meta(cls, lambda: cls.create(data, model, train), cls.outer_lr(train),
                        data=data, train=train, log_dir=log_dir, draw=draw)

    @classmethod
    def fit(cls, ctx: FitContext) -> AdaptivePredictor:
        result = cls.meta_train(ctx.data, ctx.model, ctx.train, ctx.log_dir, ctx.draw)
        return cls.predictor(result.learner, ctx.data, result.metrics())

    @classmethod
    def load(cls, state: dict[str, Any], data: EpisodeData) -> AdaptivePredictor:
        learner = cls.build(build_network(state["network_kwargs"]), state["config"])
        learner.network_kwargs = state["network_kwargs"]
        weights = dict(state["state_dict"])
        # a checkpoint from before the cross-platform trust: weight 1, as it was then
        weights.setdefault("cross_trust", learner.cross_trust.detach().clone())
        learner.load_state_dict(weights)
        return cls.predictor(learner, data, state.get("fit", {}))
