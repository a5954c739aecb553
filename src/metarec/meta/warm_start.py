"""Warm starts of the network's item side from the training history (``model.warm_start``).

``svd``: item vectors and context vectors from a truncated SVD of the degree-normalised binary
(users x items) history, ranking biases from log popularity, the item projection reading the
id block and the fold-in open. At step 0 a user's ranking scores are then a popularity prior
plus the similarity of each item to the mean of the support items: an item-item fold-in that
meta-training starts from instead of from noise. The rating head starts at the shrunk item
means (global and item biases on the logit scale), so an inner step on the user bias starts
where the item + user bias baseline is.
"""

from __future__ import annotations

import torch

from metarec.data.tasks import EpisodeData
from metarec.models.network import PreferenceNet
from metarec.models.statistical import interaction_matrix, training_ratings

WARM_STARTS = ("none", "svd")


def svd_start(net: PreferenceNet, data: EpisodeData) -> None:
    """Initialise ``net``'s item side in place (seeded by the caller's global RNG)."""
    if net.item_id is None:
        raise ValueError("model.warm_start svd needs model.item_id_embedding: true")
    d = net.item_id.embedding_dim
    x = interaction_matrix(data).to_dense().double()                      # (U, n_ids)
    counts = x.sum(0)                                                     # (n_ids,)
    xn = x / x.sum(1, keepdim=True).clamp_min(1.0).sqrt() / counts.clamp_min(1.0).sqrt()
    q = min(d, min(xn.shape) - 1)
    _, s, v = torch.svd_lowrank(xn, q=q, niter=6)                         # (n_ids, q)
    vec = torch.zeros(x.shape[1], d, dtype=torch.float64)
    vec[:, :q] = v * s.sqrt()
    vec = vec / vec.norm(dim=1).mean().clamp_min(1e-12)                   # mean norm 1
    dtype = net.global_bias.dtype
    with torch.no_grad():
        net.item_id.weight.copy_(vec.to(dtype))
        net.item_context.weight.copy_(vec.to(dtype))
        net.item_proj.weight.zero_()
        net.item_proj.weight[:, -d:] = torch.eye(d, dtype=dtype)       # the id block comes last
        net.item_proj.bias.zero_()
        net.pool_proj.weight.copy_(torch.eye(d, dtype=dtype) * d ** 0.5)
        net.pool_proj.bias.zero_()
        pop = (counts + 1.0).log()
        net.item_rank_bias.weight[:, 0] = (pop - pop.mean()).to(dtype)
        mu, item = _item_means(data, x.shape[1])
        lo, span = net.rating_min, net.rating_max - net.rating_min
        logit = lambda r: torch.logit(((r - lo) / span).clamp(0.02, 0.98))  # noqa: E731
        g = logit(torch.tensor(mu, dtype=torch.float64))
        net.global_bias.fill_(float(g))
        net.item_bias.weight[:, 0] = (logit(item) - g).to(dtype)
        net.out.weight.mul_(0.1)        # the interaction starts small next to the biases


def _item_means(data: EpisodeData, n_ids: int, shrinkage: float = 5.0
                ) -> tuple[float, torch.Tensor]:
    """The history's mean rating and each item code's mean shrunk toward it (n_ids,)."""
    users, items, ratings = training_ratings(data)
    codes = data.items.id_code.long()[items]
    mu = float(ratings.mean())
    total = torch.zeros(n_ids, dtype=torch.float64).index_add_(0, codes, ratings - mu)
    count = torch.zeros(n_ids, dtype=torch.float64).index_add_(0, codes,
                                                               torch.ones_like(ratings))
    return mu, mu + total / (count + shrinkage)
