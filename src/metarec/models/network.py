"""The preference network: feature embeddings -> user and item vectors -> a rating and a score.

The network never stores a user's features: they arrive as a dict of tensors gathered from a
:class:`~metarec.data.encoding.FeatureTable` (keys ``cat``, ``multi``, ``num``, ``id``), so a user
unseen in training is scored from its features alone. New items map to id 0 (unknown) and share
its embeddings and biases.

Two heads share the user vector ``u`` and the item vectors ``v``:

- the *rating* head: ``r = min + (max - min) * sigmoid(w . (u * v) + b_i + b_u + g)``, trained
  on squared error over rated items;
- the *ranking* head: ``s = w_r . (u * v) + beta_i``, trained with a softmax over the catalogue.
  Its item bias ``beta_i`` is separate from ``b_i``: an item rated 5 by its few raters has a
  high ``b_i`` but is rarely what a new user picks next, so it must not have a high ``beta_i``.

The user vector is ``u = user_proj(user features) + pool_proj(mean of the support items'
context vectors)`` when the user dict carries ``pool`` (:meth:`pool_support`): an amortised
fold-in, as ItemKNN and EASE read a user from their items, learned in the outer loop.

Parameter groups (``adapt``) say what a meta-learner changes per task in its inner loop:

- ``vector``: the user vector's offset (``user_proj.bias``) and the user bias: d + 1 numbers;
- ``head``: the output layers ``out`` and ``rank_out``;
- ``decision``: the decision MLP and the output layers (MeLU); equals ``head`` for ``dot``;
- ``user``: ``user_proj`` + ``user_bias`` + the decision and output layers;
- ``all``: every parameter (embedding tables included: memory grows with the task count).

An item dict that already holds ``x`` (embeddings) or ``v`` (projected vectors) with ``bias``
and ``rbias``, and a user dict that holds ``u`` (the user vector), are taken as pre-computed:
meta-learners compute them once per meta-batch (items: once per run for the whole catalogue)
when no adapted parameter touches that side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Feats = dict[str, Tensor]
Perturb = Callable[[Tensor], Tensor]
ADAPT_GROUPS = ("vector", "decision", "all", "head", "user")
OUTPUTS = ("rating", "logit", "rank")


class PreferenceNet(nn.Module):
    """Ratings in ``rating_range`` and ranking scores; no BatchNorm, safe under ``vmap``."""

    def __init__(
        self,
        *,
        user_cat_cardinalities: Sequence[int],
        user_multi_cardinalities: Sequence[int],
        user_numeric: int,
        item_cat_cardinalities: Sequence[int],
        item_multi_cardinalities: Sequence[int],
        item_numeric: int,
        n_item_ids: int,
        rating_range: tuple[float, float],
        embedding_dim: int = 32,
        hidden: Sequence[int] = (64, 64),
        interaction: Literal["mlp", "dot"] = "dot",
        item_id_embedding: bool = True,
        recent_days: int = 0,
        recent_step_days: int = 7,
    ) -> None:
        super().__init__()
        if interaction not in ("mlp", "dot"):
            raise ValueError(f"interaction must be mlp or dot, got {interaction!r}")
        if interaction == "mlp" and not hidden:
            raise ValueError("interaction='mlp' needs at least one hidden layer")
        if not all(math.isfinite(float(r)) for r in rating_range):
            raise ValueError(f"the rating range must be finite, got {tuple(rating_range)}")
        d = embedding_dim
        self.interaction = interaction
        self.rating_min, self.rating_max = float(rating_range[0]), float(rating_range[1])
        self.user_cat = nn.ModuleList(nn.Embedding(c, d) for c in user_cat_cardinalities)
        self.user_multi = nn.ModuleList(nn.Embedding(c, d) for c in user_multi_cardinalities)
        self.user_num = nn.Linear(user_numeric, d) if user_numeric else None
        self.item_cat = nn.ModuleList(nn.Embedding(c, d) for c in item_cat_cardinalities)
        self.item_multi = nn.ModuleList(nn.Embedding(c, d) for c in item_multi_cardinalities)
        self.item_num = nn.Linear(item_numeric, d) if item_numeric else None
        self.item_id = nn.Embedding(n_item_ids, d) if item_id_embedding else None
        for emb in [*self.user_cat, *self.user_multi, *self.item_cat, *self.item_multi]:
            nn.init.normal_(emb.weight, std=0.1)
        if self.item_id is not None:
            nn.init.normal_(self.item_id.weight, std=0.1)
        n_user_fields = len(user_cat_cardinalities) + len(user_multi_cardinalities) + (
            1 if user_numeric else 0)
        n_item_fields = len(item_cat_cardinalities) + len(item_multi_cardinalities) + (
            1 if item_numeric else 0) + (1 if item_id_embedding else 0)
        self.user_width = max(n_user_fields, 1) * d
        self.item_width = max(n_item_fields, 1) * d
        self.user_proj = nn.Linear(self.user_width, d)
        self.item_proj = nn.Linear(self.item_width, d)
        if interaction == "mlp":
            widths = [2 * d, *hidden]
            self.decision = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
            self.out = nn.Linear(widths[-1], 1)
            self.rank_out = nn.Linear(widths[-1], 1)
            self.hidden_width = int(hidden[0])
        else:
            self.decision = nn.ModuleList()
            self.out = nn.Linear(d, 1)       # weighted dot products; start as scaled plain dots
            self.rank_out = nn.Linear(d, 1)
            for head in (self.out, self.rank_out):
                nn.init.constant_(head.weight, 1.0 / math.sqrt(d))
                nn.init.zeros_(head.bias)
            self.hidden_width = d
        self.item_bias = nn.Embedding(n_item_ids, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.item_rank_bias = nn.Embedding(n_item_ids, 1)
        nn.init.zeros_(self.item_rank_bias.weight)
        self.item_context = nn.Embedding(n_item_ids, d)   # what a support item says of its user
        nn.init.normal_(self.item_context.weight, std=0.1)
        self.pool_proj = nn.Linear(d, d)
        nn.init.zeros_(self.pool_proj.weight)             # starts without the fold-in
        nn.init.zeros_(self.pool_proj.bias)
        self.user_bias = nn.Parameter(torch.zeros(1))
        self.global_bias = nn.Parameter(torch.zeros(1))
        # how much what is popular now counts in the ranking (metarec.data.recency); adapted
        # per user with the user vector: some follow the trend, some do not
        self.recent_days, self.recent_step_days = int(recent_days), int(recent_step_days)
        self.recency = self.recent_days > 0
        if self.recency:
            self.recent_weight = nn.Parameter(torch.zeros(1))

    # ---------------------------------------------------------------------------------------
    # parameter groups

    def adapted_names(self, group: str) -> list[str]:
        """Names of the parameters a meta-learner adapts per task for ``group``."""
        if group not in ADAPT_GROUPS:
            raise ValueError(f"adapt must be one of {ADAPT_GROUPS}, got {group!r}")
        names = [n for n, _ in self.named_parameters()]
        if group == "all":
            return names
        recent = ["recent_weight"] if self.recency else []
        if group == "vector":
            return ["user_proj.bias", "user_bias", *recent]
        heads = ("out.", "rank_out.")
        prefixes = {"head": heads, "decision": ("decision.", *heads),
                    "user": ("user_proj.", "user_bias", "recent_weight", "decision.",
                             *heads)}[group]
        return [n for n in names if n.startswith(prefixes)]

    @staticmethod
    def embeds_users(names: Sequence[str]) -> bool:
        """True if any of ``names`` is used by :meth:`embed_users` (then it cannot be hoisted)."""
        return any(n.startswith(("user_cat.", "user_multi.", "user_num.")) for n in names)

    @staticmethod
    def embeds_items(names: Sequence[str]) -> bool:
        return any(n.startswith(("item_cat.", "item_multi.", "item_num.", "item_id.",
                                 "item_bias.", "item_rank_bias.")) for n in names)

    @staticmethod
    def pools(names: Sequence[str]) -> bool:
        """True if any of ``names`` is used by :meth:`pool_support`."""
        return any(n.startswith("item_context.") for n in names)

    @staticmethod
    def projects_users(names: Sequence[str]) -> bool:
        """True if any of ``names`` is used by :meth:`user_vector` (embeddings, projections,
        the fold-in)."""
        return PreferenceNet.embeds_users(names) or PreferenceNet.pools(names) or any(
            n.startswith(("user_proj.", "pool_proj.")) for n in names)

    @staticmethod
    def projects_items(names: Sequence[str]) -> bool:
        """True if any of ``names`` is used by :meth:`item_vectors` (embedding or projection)."""
        return PreferenceNet.embeds_items(names) or any(n.startswith("item_proj.")
                                                        for n in names)

    # ---------------------------------------------------------------------------------------
    # embeddings

    def _fields(self, feats: Feats, cat: nn.ModuleList, multi: nn.ModuleList,
                num: nn.Linear | None, ident: nn.Embedding | None) -> Tensor:
        lead = feats["cat"].shape[:-1]
        parts = [emb(feats["cat"][..., j]) for j, emb in enumerate(cat)]  # each (..., d)
        for j, emb in enumerate(multi):
            tokens = feats["multi"][..., j, :]                          # (..., L)
            mask = (tokens > 0).unsqueeze(-1).to(emb.weight.dtype)      # (..., L, 1)
            total = (emb(tokens) * mask).sum(-2)                        # (..., d)
            parts.append(total / mask.sum(-2).clamp(min=1.0))           # masked mean
        if num is not None:
            parts.append(num(feats["num"]))                             # (..., d)
        if ident is not None:
            parts.append(ident(feats["id"]))                            # (..., d)
        if not parts:
            return feats["cat"].new_zeros((*lead, self.user_proj.out_features),
                                          dtype=self.global_bias.dtype)
        return torch.cat(parts, dim=-1)                                 # (..., F*d)

    def embed_users(self, user: Feats) -> Tensor:
        """(..., user_width) concatenated user feature embeddings."""
        return self._fields(user, self.user_cat, self.user_multi, self.user_num, None)

    def embed_items(self, items: Feats) -> Feats:
        """{"x": (..., item_width) embeddings, "bias": rating bias, "rbias": ranking bias}."""
        x = self._fields(items, self.item_cat, self.item_multi, self.item_num, self.item_id)
        return {"x": x, "bias": self.item_bias(items["id"]).squeeze(-1),
                "rbias": self.item_rank_bias(items["id"]).squeeze(-1), **_recent(items)}

    def item_vectors(self, items: Feats) -> Feats:
        """{"v": (..., C, d) projected item vectors, "bias", "rbias": (..., C)}."""
        if "v" in items:
            return items
        emb = items if "x" in items else self.embed_items(items)
        return {"v": self.item_proj(emb["x"]), "bias": emb["bias"], "rbias": emb["rbias"],
                **_recent(emb)}

    def pool_support(self, ids: Tensor, mask: Tensor) -> Tensor:
        """(T, d) mean context vector of each task's support items (ids (T, S), mask (T, S));
        zero for an empty support."""
        m = mask.to(self.item_context.weight.dtype).unsqueeze(-1)       # (T, S, 1)
        total = (self.item_context(ids) * m).sum(-2)                    # (T, d)
        return total / m.sum(-2).clamp(min=1.0)

    def user_vector(self, user: Feats) -> Tensor:
        """(..., d): the projected user features plus the fold-in of the support, if given
        (``u``: computed already)."""
        if "u" in user:
            return user["u"]
        xu = user["x"] if "x" in user else self.embed_users(user)        # (..., Du)
        u = self.user_proj(xu)                                            # (..., d)
        if "pool" in user:
            u = u + self.pool_proj(user["pool"])
        elif "pool_ids" in user:
            u = u + self.pool_proj(self.pool_support(user["pool_ids"], user["pool_mask"]))
        return u

    # ---------------------------------------------------------------------------------------
    # forward

    def linear_scores(self) -> bool:
        """True if the ``rank`` and ``logit`` scores are inner products of a user query with
        a vector per item (:meth:`query`, :meth:`item_keys`): the dot interaction."""
        return self.interaction == "dot"

    def query(self, user: Feats, output: str = "rank") -> Tensor:
        """(..., d + 2) per user, whose inner product with :meth:`item_keys` is the dot
        model's ``rank`` (or ``logit``) score: ``[u * w, 1, bias]`` against ``[v, b_i, 1]``.
        One GEMM then scores a whole catalogue for many users."""
        u = self.user_vector(user)                                        # (..., d)
        head = self.rank_out if output == "rank" else self.out
        const = head.bias if output == "rank" else (head.bias + self.user_bias
                                                    + self.global_bias)
        ones = u.new_ones((*u.shape[:-1], 1))
        return torch.cat([u * head.weight[0], ones, const.expand_as(ones)], dim=-1)

    @staticmethod
    def item_keys(table: Feats, output: str = "rank") -> Tensor:
        """(N, d + 2) ``[v, item bias, 1]`` of projected items (:meth:`item_vectors`)."""
        bias = table["rbias"] if output == "rank" else table["bias"]
        return torch.cat([table["v"], bias.unsqueeze(-1), torch.ones_like(bias).unsqueeze(-1)],
                         dim=-1)

    def recent_scores(self, user: Feats, items: Feats) -> Tensor | float:
        """(..., C) the ranking score's popular-now term, ``w * recency(item, user's
        moment)``: items carry ``recent`` (..., C, P) (every step's recency), the user its
        ``period`` (...,) (the step of its moment). 0 for a network without it or inputs
        without them."""
        if not self.recency or "recent" not in items or "period" not in user:
            return 0.0
        values, period = items["recent"], user["period"]                 # (..., C, P), (...,)
        index = period.reshape(*period.shape, *([1] * (values.dim() - period.dim())))
        picked = values.gather(-1, index.expand(*values.shape[:-1], 1)).squeeze(-1)
        return self.recent_weight * picked                                # (..., C)

    def to_rating(self, raw: Tensor) -> Tensor:
        """The rating scale from the rating head's pre-sigmoid score."""
        return self.rating_min + (self.rating_max - self.rating_min) * torch.sigmoid(raw)

    def forward(self, user: Feats, items: Feats, perturb: Perturb | None = None,
                output: Literal["rating", "logit", "rank"] = "rating") -> Tensor:
        """(..., C) for items (..., C, ·) and users (..., ·): ratings, the rating head's
        pre-sigmoid ``logit``, or the ranking head's score (``rank``).

        ``perturb`` (Meta-Dropout) multiplies the hidden interaction features; ``None`` = off.
        ``query`` / ``logit_query``: the user side of :meth:`query` (``items`` unused).
        """
        if output in ("query", "logit_query"):
            return self.query(user, "rank" if output == "query" else "logit")
        u = self.user_vector(user).unsqueeze(-2)                          # (..., 1, d)
        it = self.item_vectors(items)
        i = it["v"]                                                       # (..., C, d)
        head = self.rank_out if output == "rank" else self.out
        if self.interaction == "dot":
            if perturb is None:  # (u * w) . v as one product: cheap for a whole catalogue
                w = (u * head.weight[0]).transpose(-1, -2)                # (..., d, 1)
                raw = torch.matmul(i, w).squeeze(-1) + head.bias          # (..., C)
            else:
                raw = head(perturb(u * i)).squeeze(-1)                    # (..., C)
        else:
            h = torch.cat([u.expand_as(i), i], dim=-1)                    # (..., C, 2d)
            for k, layer in enumerate(self.decision):
                h = F.relu(layer(h))                                      # (..., C, h_k)
                if k == 0 and perturb is not None:
                    h = perturb(h)
            raw = head(h).squeeze(-1)                                     # (..., C)
        if output == "rank":
            return raw + it["rbias"] + self.recent_scores(user, it)
        raw = raw + it["bias"] + self.user_bias + self.global_bias        # (..., C)
        return raw if output == "logit" else self.to_rating(raw)


def _recent(items: Feats) -> Feats:
    """The popular-now values an item dict carries, passed along as it is projected."""
    return {"recent": items["recent"]} if "recent" in items else {}


def network_kwargs(items: Any, users: Any, rating_range: tuple[float, float],
                   params: Any) -> dict[str, Any]:
    """Constructor arguments of :class:`PreferenceNet` for these feature tables
    (:class:`~metarec.data.encoding.FeatureTable`) and ``model`` params; JSON-able."""
    return {"user_cat_cardinalities": list(users.cat_cardinalities),
            "user_multi_cardinalities": list(users.multi_cardinalities),
            "user_numeric": len(users.num_names),
            "item_cat_cardinalities": list(items.cat_cardinalities),
            "item_multi_cardinalities": list(items.multi_cardinalities),
            "item_numeric": len(items.num_names),
            "n_item_ids": int(items.n_ids),
            "rating_range": list(rating_range),
            "embedding_dim": params.embedding_dim,
            "hidden": list(params.hidden),
            "interaction": params.interaction,
            "item_id_embedding": params.item_id_embedding,
            "recent_days": params.recent_days,
            "recent_step_days": params.recent_step_days}


def build_network(kwargs: dict[str, Any]) -> PreferenceNet:
    """A network from :func:`network_kwargs` (as saved in a checkpoint)."""
    return PreferenceNet(**{**kwargs, "rating_range": tuple(kwargs["rating_range"]),
                            "hidden": tuple(kwargs["hidden"])})
