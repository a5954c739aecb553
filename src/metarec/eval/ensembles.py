"""Seed ensembles: one algorithm averaged over its seeds, and the best few averaged together."""

from __future__ import annotations

from typing import Any

import torch

from metarec.data.tasks import TaskBatch
from metarec.eval.metrics import per_task_mae
from metarec.eval.scoring import nanmean
from metarec.models.base import Predictor

ENSEMBLE_SEED = -1  # the "seed" of result rows that average every seed's model


class Ensemble(Predictor):
    """Averages the ratings and the ranking scores of adapted predictors (one algorithm over
    seeds, or several); each member adapts to the support on its own (with its
    validation-chosen inner steps)."""

    def __init__(self, name: str, members: list[Any]) -> None:
        super().__init__()
        self.name, self.members = name, members

    def adapt(self, batch: TaskBatch, chunk: int = 0) -> list[Any]:
        return [m.adapt(batch, chunk) for m in self.members]

    def rate(self, state: list[Any], items: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.rate(s, items) for m, s in zip(self.members, state,
                                                             strict=True)]).mean(0)

    def rank(self, state: list[Any]) -> torch.Tensor:
        return torch.stack([m.rank(s) for m, s in zip(self.members, state,
                                                      strict=True)]).mean(0)


def build_ensembles(all_models: dict[int, dict[str, Any]], meta: list[str], val: TaskBatch,
                    size: int) -> tuple[dict[str, Ensemble], dict[str, Any]]:
    """``<algo>-ens``: each meta-learner in ``meta`` averaged over the seeds; ``meta-ens``: the
    ``size`` seed-ensembles with the lowest validation MAE averaged (chosen on validation)."""
    seeds = list(all_models.values())
    if len(seeds) < 2 or size < 1:
        return {}, {}
    names = [n for n in meta if all(n in models for models in seeds)]
    out = {f"{n}-ens": Ensemble(f"{n}-ens", [models[n] for models in seeds]) for n in names}
    val_mae = {}
    for name, ens in out.items():
        pred = ens.predict(val, val.query_items)
        val_mae[name] = nanmean(per_task_mae(pred, val.query_ratings, val.query_mask))
    chosen = sorted(val_mae, key=lambda n: (val_mae[n], n))[:size]
    if len(chosen) > 1:
        out["meta-ens"] = Ensemble("meta-ens", [m for n in chosen for m in out[n].members])
    return out, {"val_mae": {n: round(v, 6) for n, v in val_mae.items()},
                 "meta-ens": chosen if len(chosen) > 1 else []}
