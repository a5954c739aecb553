"""The catalogue side of the meta-learners: what a ranking loss ranks against, and scores of
the whole catalogue under each task's own parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, vmap

from metarec.data.tasks import EpisodeData
from metarec.meta.features import FeatureStore, TaskSet
from metarec.meta.losses import membership, ranking_loss
from metarec.models.network import Feats, PreferenceNet

Params = dict[str, Tensor]


class CatalogueRanking:
    """Mixed into :class:`~metarec.meta.learner.Learner` (which provides ``model``,
    ``objective``, ``adapt_names``, ``log_q``, ``prepare_user``, ``predict``, ``positives``)."""

    model: PreferenceNet
    objective: Any
    adapt_names: list[str]
    log_q: Tensor
    _catalogue: Feats | None
    rank_output: str

    def set_popularity(self, data: EpisodeData, power: float) -> None:
        """The sampler's q(item code) proportional to (interactions + 1)^power (history)."""
        n = self.log_q.shape[0]
        counts = torch.zeros(n, dtype=torch.float64)
        if data.history is not None and len(data.history):
            codes = data.items.id_code.long()[torch.from_numpy(
                data.history["item_idx"].to_numpy(np.int64).copy())]
            counts.index_add_(0, codes, torch.ones(codes.numel(), dtype=torch.float64))
        weight = (counts + 1.0) ** (power if self.objective.sampler == "popularity" else 0.0)
        with torch.no_grad():
            self.log_q.copy_((weight / weight.sum()).log().to(self.log_q.dtype))

    def use_catalogue(self, store: FeatureStore) -> None:
        """The items a ranking loss ranks against: every row of ``store``'s item table."""
        self._catalogue = store.items(torch.arange(store.n_items, device=store.device))

    # --- the whole catalogue -----------------------------------------------------------------

    def item_table(self, items: Feats) -> Feats:
        """Catalogue items (N, ·) prepared once for :meth:`catalogue_scores`: embedded and
        projected when no adapted parameter touches the item side, raw features otherwise."""
        if PreferenceNet.projects_items(self.adapt_names):
            return items
        return self.model.item_vectors(items)                            # v, bias, rbias

    def catalogue_scores(self, task_params: Params, user: Feats, table: Feats,
                         output: str | None = None) -> Tensor:
        """Scores (T, C) of the ``table`` items (shared by every task) under each task's own
        parameters: the ranking head's (or, for a rating-only model, the rating logit)."""
        out = output or self.rank_output

        def one(fast: Params, u: Feats) -> Tensor:
            return functional_call(self.model, fast, (u, table), {"output": out})

        return vmap(one)(task_params, self.prepare_user(user))           # (T, C)

    def catalogue_queries(self, task_params: Params, user: Feats, table: Feats,
                          output: str | None = None) -> Tensor | None:
        """(T, d + 2) query per task whose product with ``PreferenceNet.item_keys(table)``
        gives :meth:`catalogue_scores` (up to rounding), or None when the scores are not such
        products (an MLP, or an item side adapted per task)."""
        if not self.model.linear_scores() or "v" not in table:
            return None
        out = "query" if (output or self.rank_output) == "rank" else "logit_query"

        def one(fast: Params, u: Feats) -> Tensor:
            return functional_call(self.model, fast, (u, table), {"output": out})

        return vmap(one)(task_params, self.prepare_user(user))           # (T, d + 2)

    def candidates(self, t: int, generator: torch.Generator | None = None
                   ) -> tuple[Feats, Tensor, Tensor | None]:
        """What a ranking loss ranks positives against: (item table (C, ·), catalogue rows
        (C,), their sampling log-probabilities (C,) or None for the whole catalogue)."""
        if self._catalogue is None:
            raise RuntimeError("use_catalogue(store) must be called before a ranking loss")
        cat = self._catalogue
        n = cat["id"].shape[0]
        if self.objective.loss == "softmax":
            return self.item_table(cat), torch.arange(n, device=cat["id"].device), None
        log_q = self.log_q[cat["id"]]                                    # (N,) per row
        rows = torch.multinomial(log_q.exp(), self.objective.negatives, replacement=True,
                                 generator=generator)                    # (M,)
        table = self.item_table({k: v[rows] for k, v in cat.items()})
        return table, rows, log_q[rows] + torch.log(torch.tensor(float(rows.numel())))

    def row_logq(self, rows: Tensor) -> Tensor:
        """The sampler's log-probability of catalogue rows (any shape)."""
        if self._catalogue is None:
            raise RuntimeError("use_catalogue(store) must be called before a ranking loss")
        return self.log_q[self._catalogue["id"][rows]]

    def _ranking_loss(self, task_params: Params, query: TaskSet, support: TaskSet | None,
                      generator: torch.Generator | None) -> Tensor:
        t = len(query)
        table, rows, cand_logq = self.candidates(t, generator)
        n = self._catalogue["id"].shape[0] if self._catalogue is not None else 0
        seen = (membership(support.rows, support.mask, n) if support is not None
                and support.rows is not None else torch.zeros(t, n, dtype=torch.bool))
        pos_w = self.positives(query)                                             # (T, Q)
        if query.rows is not None:   # a query item also in the support is no positive
            pos_w = pos_w * ~seen.gather(1, query.rows)
        if cand_logq is not None and query.rows is not None:  # never the task's own items
            seen = seen | membership(query.rows, query.mask, n)
        valid = ~seen[:, rows]                                                    # (T, C)
        pos = self.predict(task_params, query, "rank")                            # (T, Q)
        cand = self.catalogue_scores(task_params, query.user, table, "rank")      # (T, C)
        pos_logq = self.row_logq(query.rows) if cand_logq is not None else None
        per = ranking_loss(self.objective.loss, pos, pos_w, cand, valid, pos_logq,
                           cand_logq)                                             # (T,)
        # mean over all tasks (none without a positive adds anything): the same denominator
        # on every DDP process, so averaging processes averages the meta-batch
        return per.sum() / max(t, 1)

