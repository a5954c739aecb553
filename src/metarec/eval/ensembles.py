"""Seed ensembles: one algorithm averaged over its seeds, and the best few averaged together."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from metarec.data.tasks import TaskBatch
from metarec.metrics import finite_or
from metarec.models.base import Predictor

ENSEMBLE_SEED = -1  # the "seed" of result rows that average every seed's model
Adapt = Callable[[Predictor, TaskBatch, int], Any]   # (member, batch, chunk) -> its state


def adapt_member(model: Predictor, batch: TaskBatch, chunk: int = 0) -> Any:
    return model.adapt(batch, chunk)


class Ensemble(Predictor):
    """Averages the ratings and the ranking scores of adapted predictors (one algorithm over
    seeds, or several); each member adapts to the support on its own (with its
    validation-chosen inner steps), through ``adapt``: the evaluation passes a cache, as it
    has adapted every member to the same batches already."""

    def __init__(self, name: str, members: list[Any], adapt: Adapt = adapt_member) -> None:
        super().__init__()
        self.name, self.members, self._adapt = name, members, adapt

    def adapt(self, batch: TaskBatch, chunk: int = 0) -> list[Any]:
        return [self._adapt(m, batch, chunk) for m in self.members]

    def rate(self, state: list[Any], items: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.rate(s, items) for m, s in zip(self.members, state,
                                                             strict=True)]).mean(0)

    def rank(self, state: list[Any]) -> torch.Tensor:
        return torch.stack([m.rank(s) for m, s in zip(self.members, state,
                                                      strict=True)]).mean(0)

    def rank_blocks(self, state: list[Any], cells: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Members' blocks averaged (every member cuts the catalogue at the same columns)."""
        streams = [m.rank_blocks(s, cells) for m, s in zip(self.members, state, strict=True)]
        for blocks in zip(*streams, strict=True):
            yield blocks[0][0], torch.stack([b for _, b in blocks]).mean(0)


def build_ensembles(all_models: dict[int, dict[str, Any]], meta: list[str], size: int,
                    val_score: Callable[[Predictor], float], adapt: Adapt = adapt_member
                    ) -> tuple[dict[str, Ensemble], dict[str, Any]]:
    """``<algo>-ens``: each meta-learner in ``meta`` averaged over the seeds; ``meta-ens``: the
    ``size`` seed-ensembles with the highest ``val_score`` (validation catalogue nDCG)
    averaged together (chosen on validation). Members adapt through ``adapt``."""
    seeds = list(all_models.values())
    if len(seeds) < 2 or size < 1:
        return {}, {}
    names = [n for n in meta if all(n in models for models in seeds)]
    out = {f"{n}-ens": Ensemble(f"{n}-ens", [models[n] for models in seeds], adapt)
           for n in names}
    scores = {name: val_score(ens) for name, ens in out.items()}
    chosen = sorted(scores, key=lambda n: (-finite_or(scores[n]), n))[:size]
    if len(chosen) > 1:
        out["meta-ens"] = Ensemble("meta-ens", [m for n in chosen for m in out[n].members],
                                   adapt)
    return out, {"val_score": {n: round(v, 6) for n, v in scores.items()},
                 "meta-ens": chosen if len(chosen) > 1 else []}
