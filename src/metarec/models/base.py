"""The two contracts every algorithm keeps: how it is fitted and how it predicts.

An *algorithm* is a registered class (:func:`metarec.algorithms.register`). Class level, for
the train stage: its ``name``, ``kind`` ("meta": a meta-learner; "baseline": anything else),
the dataclass of its ``train.<name>`` params section (``Params``), the algorithms it is fitted
on top of (``requires``), what it can do (``capabilities``, declared: the rest of the code
reads them and never probes a class), whether it can be trained data-parallel
(:meth:`ddp_refusal`), and ``fit(ctx) -> Predictor`` / ``load(state, data) -> Predictor``.

A *predictor* is a fitted model, for evaluation and the nightly batch:

- ``adapt(batch, chunk)`` reads each task's support set (never its query) and returns
  per-task state;
- ``rate(state, items)``: predicted ratings (T, C) of catalogue rows ``items`` (T, C);
- ``rank(state)``: ranking scores (T, N) of every catalogue row, higher first
  (``rank_blocks``: the same scores a block of columns at a time);
- ``state()``: plain tensors, numbers, lists and dicts (``torch.load(weights_only=True)``).

Items are rows of the bound data's item table; fitted tensors are indexed by vocabulary code
(:attr:`FeatureTable.id_code`), so a model scores a catalogue that gained items since it was
trained (new items share code 0, "unknown").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from metarec.config import ModelParams, TrainParams
from metarec.data.recency import Recency
from metarec.data.tasks import EpisodeData, TaskBatch


@dataclass(frozen=True)
class Capabilities:
    """What an algorithm can do, declared once on its registry entry.

    - ``tunable_steps``: it adapts to a task by an inner loop whose test-time steps evaluation
      chooses on validation (and the inner-steps curve shows);
    - ``gradient``: it is trained on episodes by the outer loop (a Lightning fit: the costly
      fits, scheduled first);
    - ``second_order``: its meta-gradient differentiates through inner-loop gradients, which
      PyTorch's DistributedDataParallel does not support;
    - ``uses_draws``: it is trained on meta-train tasks, so how they are drawn matters;
    - ``seeded``: its fit reads the seed (False: one fit serves every seed);
    - ``unused_parameters``: some network parameters get no gradient (DDP must look for them);
    - ``dense_items``: its fit solves dense items x items systems, whose time grows with the
      cube of the catalogue: on a large one (more items than
      ``train.objective.sampled_above``, the size rule of the loss) it is the costliest fit,
      scheduled first.
    """

    tunable_steps: bool = False
    gradient: bool = False
    second_order: bool = False
    uses_draws: bool = False
    seeded: bool = True
    unused_parameters: bool = False
    dense_items: bool = False


@dataclass
class FitContext:
    """What fitting one algorithm for one seed may use (the train stage builds it)."""

    data: EpisodeData
    model: ModelParams
    train: TrainParams                       # ``train.seed`` is this run's seed
    log_dir: Path
    fitted: dict[str, Predictor] = field(default_factory=dict)   # this seed's earlier fits
    draw: str | None = None   # how meta-train tasks are drawn each epoch (None: fixed draws)

    @property
    def seed(self) -> int:
        return self.train.seed


class Predictor:
    """A fitted model behind the one interface evaluation and scoring use."""

    name: str = ""
    predicts_ratings: bool = True
    adapts: bool = False      # an inner loop whose test-time steps can be set (set_steps)

    def __init__(self) -> None:
        self.tuning: dict[str, Any] = {}     # validation record of the choices made in fit

    @property
    def n_items(self) -> int:
        raise NotImplementedError

    def adapt(self, batch: TaskBatch, chunk: int = 0) -> Any:
        """Per-task state from each task's support; ``chunk`` offsets any random stream
        (Meta-Dropout's noise), so the tasks of chunk c always draw the same numbers."""
        raise NotImplementedError

    def rate(self, state: Any, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rank(self, state: Any) -> torch.Tensor:
        """Scores (T, N) of every catalogue row; by default the predicted ratings."""
        t = self._tasks(state)
        return self.rate(state, torch.arange(self.n_items).expand(t, self.n_items))

    def rank_blocks(self, state: Any, cells: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first column, scores (T, B)) of consecutive blocks of catalogue columns, about
        ``cells`` task x item scores each: what the nightly top-K streams through, so that no
        more than one block of a chunk's scores needs to exist at once. By default the blocks
        of :meth:`rank` (a model whose whole ranking is cheap); a model with per-item vectors
        computes each block on its own. A block may be overwritten by the next one: read it
        (or copy it) before asking for the next."""
        full = self.rank(state)
        step = max(1, cells // max(full.shape[0], 1))
        for c0 in range(0, full.shape[1], step):
            yield c0, full[:, c0:c0 + step]

    def recency_window(self) -> tuple[int, int] | None:
        """(steps, days per step) of the popular-now input the model reads
        (:mod:`metarec.data.recency`); None: it reads none."""
        return None

    def use_recency(self, recency: Recency) -> None:
        """Score the next batches with ``recency`` (rows: the catalogue) as what is popular:
        the nightly batch's, counted from its own log. A model without the input ignores it."""

    def explain(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor | None:
        """For each recommended item row (T, k), the support position (T, k) that contributed
        most to its score (-1: none), or None when the model has no such notion."""
        return None

    @staticmethod
    def _argmax_support(contrib: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(T, k) index into the support of the largest contribution (T, S, k); -1 if none."""
        c = contrib.masked_fill(~mask[..., None], float("-inf"))          # (T, S, k)
        best = c.argmax(1)                                                # (T, k)
        return torch.where(mask.any(1, keepdim=True), best, torch.full_like(best, -1))

    def predict(self, batch: TaskBatch, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings (T, C) after reading each task's support: adapt, then rate."""
        return self.rate(self.adapt(batch), items)

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _tasks(self, state: Any) -> int:
        raise NotImplementedError


class Algorithm:
    """Class-level contract of a registered algorithm (see the module docstring)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "baseline"
    Params: ClassVar[type | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[Capabilities] = Capabilities()

    @classmethod
    def params_of(cls, train: TrainParams) -> Any:
        """This algorithm's section of ``train`` (its defaults when params.yaml has none)."""
        return train.section(cls.name, cls.Params() if cls.Params is not None else None)

    @classmethod
    def ddp_refusal(cls, train: TrainParams) -> str | None:
        """Why this algorithm cannot be trained data-parallel, or None if it can (or is not
        trained by gradient descent at all, so every process fits it identically)."""
        return None

    @classmethod
    def fit(cls, ctx: FitContext) -> Predictor:
        raise NotImplementedError

    @classmethod
    def load(cls, state: dict[str, Any], data: EpisodeData) -> Predictor:
        raise NotImplementedError
