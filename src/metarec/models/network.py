"""MeLU-style preference network: feature embeddings -> user/item vectors -> rating.

The network never stores a user's features: they arrive as a dict of tensors gathered from a
:class:`~metarec.data.encoding.FeatureTable` (keys ``cat``, ``multi``, ``num``, ``id``), so a user
unseen in training is scored from its features alone. New items map to id 0 (unknown) and share
its embedding and bias.

Parameter groups (``adapt``) say what a meta-learner changes per task in its inner loop:

- ``head``: the output layer ``out``;
- ``decision``: the decision MLP and ``out`` (MeLU); with ``interaction="dot"`` there is no MLP,
  so this equals ``head``;
- ``user``: ``user_proj`` + ``user_bias`` + the decision layers: small, per-user state, no
  embedding table is copied per task;
- ``all``: every parameter (embedding tables included: memory grows with the task count).

A dict that already holds ``x`` (and for items ``bias``) is taken as pre-computed embeddings:
meta-learners compute them once per meta-batch when no embedding is adapted. An item dict
holding ``v`` (projected item vectors, ``item_vectors``) skips the item side altogether: the
catalogue is embedded once per run and every user scores it through the same forward.
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
ADAPT_GROUPS = ("decision", "all", "head", "user")


class PreferenceNet(nn.Module):
    """Rating model r(u, i) in ``rating_range``; no BatchNorm, safe under ``vmap``."""

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
    ) -> None:
        super().__init__()
        if interaction not in ("mlp", "dot"):
            raise ValueError(f"interaction must be mlp or dot, got {interaction!r}")
        if interaction == "mlp" and not hidden:
            raise ValueError("interaction='mlp' needs at least one hidden layer")
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
            self.hidden_width = int(hidden[0])
        else:
            self.decision = nn.ModuleList()
            self.out = nn.Linear(d, 1)  # weighted dot product; starts as a scaled plain dot
            nn.init.constant_(self.out.weight, 1.0 / math.sqrt(d))
            nn.init.zeros_(self.out.bias)
            self.hidden_width = d
        self.item_bias = nn.Embedding(n_item_ids, 1)
        nn.init.zeros_(self.item_bias.weight)
        self.user_bias = nn.Parameter(torch.zeros(1))
        self.global_bias = nn.Parameter(torch.zeros(1))

    # ---------------------------------------------------------------------------------------
    # parameter groups

    def adapted_names(self, group: str) -> list[str]:
        """Names of the parameters a meta-learner adapts per task for ``group``."""
        if group not in ADAPT_GROUPS:
            raise ValueError(f"adapt must be one of {ADAPT_GROUPS}, got {group!r}")
        names = [n for n, _ in self.named_parameters()]
        if group == "all":
            return names
        prefixes = {"head": ("out.",),
                    "decision": ("decision.", "out."),
                    "user": ("user_proj.", "user_bias", "decision.", "out.")}[group]
        return [n for n in names if n.startswith(prefixes)]

    @staticmethod
    def embeds_users(names: Sequence[str]) -> bool:
        """True if any of ``names`` is used by :meth:`embed_users` (then it cannot be hoisted)."""
        return any(n.startswith(("user_cat.", "user_multi.", "user_num.")) for n in names)

    @staticmethod
    def embeds_items(names: Sequence[str]) -> bool:
        return any(n.startswith(("item_cat.", "item_multi.", "item_num.", "item_id.",
                                 "item_bias.")) for n in names)

    @staticmethod
    def projects_items(names: Sequence[str]) -> bool:
        """True if any of ``names`` is used by :meth:`item_vectors` (embedding or projection)."""
        return PreferenceNet.embeds_items(names) or any(n.startswith("item_proj.")
                                                        for n in names)

    # ---------------------------------------------------------------------------------------
    # forward

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

    def embed_items(self, items: Feats) -> tuple[Tensor, Tensor]:
        """(..., item_width) item feature embeddings and (...,) item-id bias."""
        x = self._fields(items, self.item_cat, self.item_multi, self.item_num, self.item_id)
        return x, self.item_bias(items["id"]).squeeze(-1)

    def item_vectors(self, items: Feats) -> tuple[Tensor, Tensor]:
        """(..., C, d) projected item vectors and (..., C) item biases."""
        if "v" in items:
            return items["v"], items["bias"]
        if "x" in items:
            xi, ib = items["x"], items["bias"]                            # (..., C, Di), (..., C)
        else:
            xi, ib = self.embed_items(items)
        return self.item_proj(xi), ib                                     # (..., C, d)

    def to_rating(self, raw: Tensor) -> Tensor:
        """The rating scale from the pre-sigmoid score (the ranking score)."""
        return self.rating_min + (self.rating_max - self.rating_min) * torch.sigmoid(raw)

    def forward(self, user: Feats, items: Feats, perturb: Perturb | None = None,
                output: Literal["rating", "logit"] = "rating") -> Tensor:
        """Ratings (or pre-sigmoid scores) (..., C) of items (..., C, ·) for users (..., ·).

        ``perturb`` (Meta-Dropout) multiplies the hidden interaction features; ``None`` = off.
        """
        xu = user["x"] if "x" in user else self.embed_users(user)        # (..., Du)
        i, ib = self.item_vectors(items)                                  # (..., C, d), (..., C)
        u = self.user_proj(xu).unsqueeze(-2)                              # (..., 1, d)
        if self.interaction == "dot":
            h = u * i                                                     # (..., C, d)
            if perturb is not None:
                h = perturb(h)
        else:
            h = torch.cat([u.expand_as(i), i], dim=-1)                    # (..., C, 2d)
            for k, layer in enumerate(self.decision):
                h = F.relu(layer(h))                                      # (..., C, h_k)
                if k == 0 and perturb is not None:
                    h = perturb(h)
        raw = self.out(h).squeeze(-1) + ib + self.user_bias + self.global_bias  # (..., C)
        return raw if output == "logit" else self.to_rating(raw)


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
            "item_id_embedding": params.item_id_embedding}


def build_network(kwargs: dict[str, Any]) -> PreferenceNet:
    """A network from :func:`network_kwargs` (as saved in a checkpoint)."""
    return PreferenceNet(**{**kwargs, "rating_range": tuple(kwargs["rating_range"]),
                            "hidden": tuple(kwargs["hidden"])})
