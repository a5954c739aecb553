"""Tiny in-memory episode data for the meta-learning and training tests.

Ratings have planted structure: a user's taste comes from its (categorical) features plus a
personal offset only its support set reveals, so both feature learning and adaptation help.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from metarec import algorithms
from metarec.checkpoint import save_model
from metarec.config import ModelParams, TrainParams
from metarec.data.encoding import FeatureTable
from metarec.data.tasks import EpisodeData, TaskBatch, to_batch
from metarec.meta.features import FeatureStore
from metarec.meta.learner import Learner
from metarec.meta.predictor import AdaptivePredictor
from metarec.models.network import PreferenceNet, build_network, network_kwargs
from metarec.train.fit import FitResult


def feature_tables(n_users: int, n_items: int, rng: np.random.Generator
                   ) -> tuple[FeatureTable, FeatureTable]:
    """Users: 2 categorical + 1 numeric; items: 1 categorical, 1 multi-valued, 1 numeric."""
    users = FeatureTable(
        ids=[f"u{i}" for i in range(n_users)],
        id_code=torch.arange(n_users),
        categorical=torch.from_numpy(np.stack([rng.integers(1, 3, n_users),
                                               rng.integers(0, 5, n_users)], 1)),
        multi=torch.zeros((n_users, 0, 1), dtype=torch.long),
        numeric=torch.from_numpy(rng.normal(size=(n_users, 1)).astype(np.float32)),
        n_ids=n_users, cat_names=["gender", "occupation"], cat_cardinalities=[3, 5],
        multi_names=[], multi_cardinalities=[], num_names=["age"])
    multi = np.zeros((n_items, 1, 3), dtype=np.int64)
    for i in range(n_items):
        k = rng.integers(1, 4)
        multi[i, 0, :k] = rng.choice(np.arange(1, 7), size=k, replace=False)
    items = FeatureTable(
        ids=[f"i{i}" for i in range(n_items)],
        id_code=torch.arange(n_items),  # index 0 doubles as "unknown" in this fixture
        categorical=torch.from_numpy(rng.integers(0, 4, (n_items, 1))),
        multi=torch.from_numpy(multi),
        numeric=torch.from_numpy(rng.normal(size=(n_items, 1)).astype(np.float32)),
        n_ids=n_items, cat_names=["decade"], cat_cardinalities=[4],
        multi_names=["genres"], multi_cardinalities=[7], num_names=["year"])
    return users, items


def episode_data(n_users: int = 60, n_items: int = 40, k: int = 5, q: int = 5,
                 seed: int = 0, val_fraction: float = 0.3) -> EpisodeData:
    """One task per user (support k, query q); the last ``val_fraction`` of users validate."""
    rng = np.random.default_rng(seed)
    users, items = feature_tables(n_users, n_items, rng)
    genre_taste = rng.normal(size=(3, 7))                   # gender x genre
    item_quality = rng.normal(scale=0.7, size=n_items)
    offsets = rng.normal(scale=0.8, size=n_users)           # personal, seen only via support
    rows = []
    n_val = int(round(n_users * val_fraction))
    for u in range(n_users):
        split = "val" if u >= n_users - n_val else "train"
        chosen = rng.choice(n_items, size=k + q, replace=False)
        g = int(users.categorical[u, 0])
        for pos, i in enumerate(chosen):
            genres = items.multi[i, 0][items.multi[i, 0] > 0].numpy()
            score = 3.0 + item_quality[i] + genre_taste[g, genres].mean() + offsets[u]
            rating = float(np.clip(np.round(score + rng.normal(scale=0.3)), 1, 5))
            rows.append({"task_id": u, "user_id": f"u{u}", "split": split,
                         "scenario": "train" if split == "train" else "user_cold", "k": k,
                         "role": "support" if pos < k else "query", "item_id": f"i{i}",
                         "rating": rating, "timestamp": 1_000 * u + pos,
                         "user_idx": u, "item_idx": int(i)})
    tasks = pd.DataFrame(rows)
    vocab = {"rating": {"min": 1.0, "max": 5.0, "relevant": 4.0}, "users": {"ids": users.ids},
             "items": {"ids": items.ids},
             "draws": {"support_sizes": [k], "query_size": q, "train_draw": "temporal"}}
    train = tasks[tasks["split"] == "train"]
    history = train[["user_id", "item_id", "rating", "timestamp", "user_idx", "item_idx"]]
    return EpisodeData(tasks=tasks, users=users, items=items, vocab=vocab,
                       history=history.reset_index(drop=True))


def train_batch(data: EpisodeData, n: int | None = None) -> TaskBatch:
    """The first ``n`` meta-train tasks as one batch, with ragged supports (masks matter)."""
    frame = data.select("train")
    if n is not None:
        frame = frame[frame["task_id"] < n]
    # drop some support rows so tasks have different support sizes
    drop = (frame["role"] == "support") & (frame["task_id"] % 3 == 1) & (
        frame["timestamp"] % 1_000 == 0)
    return to_batch(frame[~drop])


def tiny_model(data: EpisodeData, interaction: str) -> PreferenceNet:
    """A float64 network small enough for exact gradient comparisons."""
    torch.manual_seed(0)
    u, i = data.users, data.items
    return PreferenceNet(
        user_cat_cardinalities=u.cat_cardinalities, user_multi_cardinalities=[],
        user_numeric=1, item_cat_cardinalities=i.cat_cardinalities,
        item_multi_cardinalities=i.multi_cardinalities, item_numeric=1, n_item_ids=i.n_ids,
        rating_range=(1.0, 5.0), embedding_dim=4, hidden=(6, 5), interaction=interaction,
    ).double()


def build_algorithm(name: str, model: PreferenceNet, config: dict) -> Learner:
    """The learner of registered algorithm ``name`` around ``model`` (``config`` as in
    checkpoints); it remembers its algorithm's name (``learner.name``)."""
    entry = algorithms.get(name)
    if not entry.capabilities.tunable_steps:    # no inner loop: no step size or count
        config = {k: v for k, v in config.items() if k not in ("inner_lr", "inner_steps")}
    learner = entry.build(model, config)
    learner.name = name
    return learner


def fit_algorithm(name: str, data: EpisodeData, model: ModelParams, train: TrainParams,
                  log_dir: Path, draw: str | None = None) -> FitResult:
    """Meta-train the registered episodic algorithm ``name`` from the params."""
    return algorithms.get(name).meta_train(data, model, train, log_dir, draw)


def network_for(data: EpisodeData, model: ModelParams) -> tuple[dict, PreferenceNet]:
    kw = network_kwargs(data.items, data.users, data.rating_range, model)
    return kw, build_network(kw)


def save_algorithm(learner: Learner, kwargs: dict, data: EpisodeData, path: Path,
                   params: dict | None = None, name: str | None = None) -> Path:
    """Checkpoint ``learner`` (of algorithm ``name``, default ``learner.name``) as the train
    stage would."""
    learner.network_kwargs = kwargs
    store = FeatureStore(data.users, data.items)
    return save_model(path, AdaptivePredictor(name or learner.name, learner, store),
                      params or {}, data.vocab)
