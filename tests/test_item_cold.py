"""New items: item-cold scenarios rank the new items, and item-id dropout teaches the network
to place an item whose id it does not know."""

from __future__ import annotations

from dataclasses import replace

import lightning as L
import pytest
import torch
from meta_fixtures import episode_data, fit_algorithm

from metarec import algorithms
from metarec.config import EvaluateParams, ModelParams, ObjectiveParams, TrainParams
from metarec.data.tasks import TaskBatch
from metarec.eval.scoring import eligible_items, score_batch
from metarec.meta.features import FeatureStore
from metarec.models.base import Predictor

ID_TABLES = ("item_id.weight", "item_bias.weight", "item_rank_bias.weight",
             "item_context.weight")


class FixedScores(Predictor):
    """The same ranking scores for every task; no ratings."""

    predicts_ratings = False

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = torch.tensor(scores)

    @property
    def n_items(self) -> int:
        return int(self.scores.numel())

    def adapt(self, batch: TaskBatch, chunk: int = 0) -> int:
        return len(batch)

    def rank(self, state: int) -> torch.Tensor:
        return self.scores.expand(state, -1).clone()


def one_task(support: list[int], query: list[int], ratings: list[float]) -> TaskBatch:
    def row(x, dtype):
        return torch.tensor([x], dtype=dtype)

    return TaskBatch(task_id=torch.tensor([0]), user_idx=torch.tensor([0]),
                     support_items=row(support, torch.long),
                     support_ratings=torch.ones(1, len(support)),
                     support_mask=torch.ones(1, len(support), dtype=torch.bool),
                     query_items=row(query, torch.long), query_ratings=row(ratings, torch.float),
                     query_mask=torch.ones(1, len(query), dtype=torch.bool))


def test_item_cold_scenarios_rank_only_the_items_training_never_saw():
    codes = torch.tensor([1, 2, 3, 4, 0, 0])           # rows 4 and 5 are new (unknown id)
    ev = EvaluateParams(catalogue_k=2, query_ndcg_ks=(1,))
    assert eligible_items("user_cold", ev, codes) is None
    assert eligible_items("warm", ev, codes) is None
    assert eligible_items("item_cold", ev, codes).tolist() == [False] * 4 + [True] * 2
    assert eligible_items("user_item_cold", ev, codes).tolist() == [False] * 4 + [True] * 2
    assert eligible_items("item_cold", replace(ev, item_cold_catalogue="all"), codes) is None
    # warm favourites first, then the two new items, the relevant new one (5) above row 4
    model = FixedScores([9.0, 8.0, 7.0, 6.0, 1.0, 2.0])
    batch = one_task(support=[0], query=[4, 5], ratings=[1.0, 5.0])
    whole = score_batch(model, batch, ev, threshold=4.0, explicit=True)
    new = score_batch(model, batch, ev, threshold=4.0, explicit=True,
                      eligible=eligible_items("item_cold", ev, codes))
    assert whole["ndcg@2"].item() == 0.0 and whole["hit@2"].item() == 0.0
    assert new["ndcg@2"].item() == pytest.approx(1.0)
    assert new["recall@2"].item() == pytest.approx(1.0)
    # the query-set metric ranks the query items among themselves either way
    assert whole["ndcg@1"].item() == new["ndcg@1"].item() == pytest.approx(1.0)


def test_a_relevant_item_outside_the_eligible_items_is_not_counted():
    ev = EvaluateParams(catalogue_k=1, query_ndcg_ks=(1,))
    model = FixedScores([5.0, 1.0, 2.0])
    batch = one_task(support=[2], query=[0, 1], ratings=[5.0, 5.0])
    eligible = torch.tensor([False, True, True])
    vals = score_batch(model, batch, ev, 4.0, True, eligible)
    # one relevant candidate (row 1), the only one left once the support (row 2) is out
    assert vals["recall@1"].item() == pytest.approx(1.0)
    assert vals["ndcg@1"].item() == pytest.approx(1.0)


def test_the_store_view_hides_only_the_dropped_ids_and_shares_the_rest():
    data = episode_data(n_users=10, n_items=12)
    store = FeatureStore(data.users, data.items)
    drop = torch.zeros(12, dtype=torch.bool)
    drop[[1, 3, 7]] = True
    view = store.without_ids(drop)
    rows = torch.arange(12)
    ids = view.items(rows)["id"]
    assert ids.tolist() == [0, 0, 2, 0, 4, 5, 6, 0, 8, 9, 10, 11]
    assert store.items(rows)["id"].tolist() == list(range(12))         # the store is intact
    assert all(view._items[k] is store._items[k] for k in ("cat", "multi", "num"))
    assert view._users is store._users
    batch = one_task(support=[1, 2], query=[3, 4], ratings=[4.0, 2.0])
    assert view.user_context(batch)["pool_ids"].tolist() == [[0, 2]]


MODEL = ModelParams(interaction="dot", embedding_dim=8, hidden=(16,), adapt="user",
                    fold_in=True, warm_start="none")
TRAIN = TrainParams(max_steps=12, val_every=6, meta_batch=16, outer_lr=0.01, inner_lr=0.1,
                    inner_steps=2, patience=0, objective=ObjectiveParams(), resample=False)


def _start(data) -> dict[str, torch.Tensor]:
    """The weights fit_algorithm starts from (same seed, same construction)."""
    L.seed_everything(TRAIN.seed, workers=True, verbose=False)
    algo = algorithms.get("fomaml").create(data, MODEL, TRAIN)
    return {k: v.detach().clone() for k, v in algo.model.state_dict().items()}


def _trained(data, tmp_path, p: float, run: int = 0) -> dict[str, torch.Tensor]:
    fit = fit_algorithm("fomaml", data, MODEL, replace(TRAIN, item_id_dropout=p),
                        tmp_path / f"run{run}-{p}")
    assert fit.best_step > 0, "training kept its start: nothing to compare"
    cat = fit.learner._catalogue
    assert cat is not None and cat["id"].tolist() == data.items.id_code.tolist(), \
        "the catalogue must be the whole store again after each dropped step"
    return {k: v.detach().clone() for k, v in fit.learner.model.state_dict().items()}


@pytest.fixture(scope="module")
def data():
    return episode_data(n_users=80, n_items=40)


@pytest.mark.slow
def test_with_every_id_dropped_no_item_id_row_but_unknown_learns(data, tmp_path):
    start, end = _start(data), _trained(data, tmp_path, 1.0)
    for name in ID_TABLES:
        assert torch.equal(end[name][1:], start[name][1:]), f"{name}: a hidden id was trained"
        assert not torch.equal(end[name][0], start[name][0]), f"{name}: unknown never trained"
    assert not torch.equal(end["item_proj.weight"], start["item_proj.weight"])


@pytest.mark.slow
def test_without_dropout_the_item_id_rows_learn_and_dropout_changes_the_weights(data,
                                                                                tmp_path):
    start, plain = _start(data), _trained(data, tmp_path, 0.0)
    moved = (plain["item_id.weight"][1:] != start["item_id.weight"][1:]).any(1)
    assert moved.float().mean() > 0.5
    half = _trained(data, tmp_path, 0.5)
    assert not torch.equal(half["item_id.weight"], plain["item_id.weight"])
    again = _trained(data, tmp_path, 0.5, run=1)
    assert all(torch.equal(half[k], again[k]) for k in half), "dropout must be repeatable"
