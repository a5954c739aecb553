"""Each metric against a hand-computed value on a tiny fixture (padding, ties, no relevant)."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_normalized_dcg, retrieval_recall

from metarec.metrics import (
    CatalogueMetrics,
    catalogue_metrics,
    catalogue_targets,
    mae,
    per_task_mae,
    per_task_rmse,
    query_ndcg,
    rmse,
)

L3 = math.log2(3)


def test_mae_rmse_pooled_and_per_task_ignore_padding() -> None:
    pred = torch.tensor([[4.0, 2.0, 9.0], [3.0, 0.0, 0.0]])
    target = torch.tensor([[5.0, 2.0, 1.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert mae(pred, target, mask) == pytest.approx((1 + 0 + 2) / 3)
    assert rmse(pred, target, mask) == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    torch.testing.assert_close(per_task_mae(pred, target, mask), torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(per_task_rmse(pred, target, mask),
                               torch.tensor([math.sqrt(0.5), 2.0]))


def test_mismatched_shapes_are_rejected_naming_each_shape() -> None:
    with pytest.raises(ValueError, match=r"pred \(1, 2\), target \(1, 3\) and mask \(1, 2\) "
                                         r"must be the same \(T, Q\) shape"):
        mae(torch.ones(1, 2), torch.ones(1, 3), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        mae(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2))


def test_nan_prediction_is_rejected() -> None:
    pred = torch.tensor([[float("nan"), 1.0]])
    with pytest.raises(ValueError, match="NaN"):
        mae(pred, torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool))


def _query_fixture() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pred = torch.tensor([[3.0, 2.0, 1.0, 0.0],     # no ties
                         [2.0, 2.0, 1.0, 7.0],     # tie at the top, last slot padded
                         [1.0, 0.0, 0.0, 0.0],     # a single query item
                         [1.0, 2.0, 0.0, 0.0]])    # every gain 0
    ratings = torch.tensor([[1.0, 3.0, 2.0, 0.0],
                            [5.0, 1.0, 3.0, 5.0],
                            [4.0, 0.0, 0.0, 0.0],
                            [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False],
                         [True, True, True, False],
                         [True, False, False, False],
                         [True, True, False, False]])
    return pred, ratings, mask


def test_query_ndcg_hand_computed_with_ties() -> None:
    pred, ratings, mask = _query_fixture()
    # task 0: gains in predicted order 1, 7, 3; ideal 7, 3, 1
    dcg0 = 1 + 7 / L3 + 3 / 2
    idcg0 = 7 + 3 / L3 + 1 / 2
    # task 1: gains 31 and 1 tie at ranks 1-2 -> each counts their mean 16; then 7
    dcg1 = 16 * (1 + 1 / L3) + 7 / 2
    idcg1 = 31 + 7 / L3 + 1 / 2
    n1 = query_ndcg(pred, ratings, mask, k=1)
    n3 = query_ndcg(pred, ratings, mask, k=3)
    torch.testing.assert_close(n1[:3], torch.tensor([1 / 7, 16 / 31, 1.0]))
    torch.testing.assert_close(n3[:3], torch.tensor([dcg0 / idcg0, dcg1 / idcg1, 1.0]))
    assert torch.isnan(n1[3]) and torch.isnan(n3[3])       # nothing to rank for: undefined


def test_query_ndcg_matches_torchmetrics_tie_averaging() -> None:
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (20, 8), generator=gen).float()     # many ties
    ratings = torch.randint(1, 6, (20, 8), generator=gen).float()
    mask = torch.ones(20, 8, dtype=torch.bool)
    for k in (1, 3, 5):
        ours = query_ndcg(pred, ratings, mask, k)
        ref = torch.stack([retrieval_normalized_dcg(pred[t], (2 ** ratings[t] - 1).long(),
                                                    top_k=k) for t in range(20)])
        torch.testing.assert_close(ours, ref)


def test_query_ndcg_independent_of_storage_order_under_ties() -> None:
    pred, ratings, mask = _query_fixture()
    perm = torch.tensor([2, 0, 1, 3])
    a = query_ndcg(pred[:2], ratings[:2], mask[:2], 3)
    b = query_ndcg(pred[:2, perm], ratings[:2, perm], mask[:2, perm], 3)
    torch.testing.assert_close(a, b)


def _catalogue_fixture() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    support_items = torch.tensor([[0, 0], [5, 0]])         # task 1: slot 2 is padding (item 0)
    support_mask = torch.tensor([[True, False], [True, False]])
    query_items = torch.tensor([[1, 2, 3], [1, 2, 0]])
    query_ratings = torch.tensor([[5.0, 3.0, 4.0], [3.0, 2.0, 0.0]])
    query_mask = torch.tensor([[True, True, True], [True, True, False]])
    cand, rel = catalogue_targets(support_items, support_mask, query_items, query_ratings,
                                  query_mask, n_items=6, threshold=4.0)
    scores = torch.tensor([[9.0, 1.0, 5.0, 3.0, 3.0, 0.0],
                           [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    return scores, cand, rel


def test_catalogue_targets_exclude_support_and_threshold() -> None:
    _, cand, rel = _catalogue_fixture()
    assert cand.tolist() == [[False, True, True, True, True, True],
                             [True, True, True, True, True, False]]   # padded item 0 stays
    assert rel.tolist() == [[False, True, False, True, False, False], [False] * 6]


def test_catalogue_metrics_hand_computed_ties_and_skipped_user() -> None:
    scores, cand, rel = _catalogue_fixture()
    # task 0 ranking: item2 (5) | items 3,4 tied (3) | item1 (1) | item5; relevant {1, 3}
    m2 = catalogue_metrics(scores, cand, rel, k=2)
    assert m2.recall[0].item() == pytest.approx(0.5 / 2)              # half of item 3 expected
    assert m2.ndcg[0].item() == pytest.approx((0.5 / L3) / (1 + 1 / L3))
    assert m2.hit_rate[0].item() == pytest.approx(0.5)                # 1 of 2 tied slots
    m3 = catalogue_metrics(scores, cand, rel, k=3)
    assert m3.recall[0].item() == pytest.approx(0.5)
    assert m3.ndcg[0].item() == pytest.approx((0.5 / L3 + 0.5 / 2) / (1 + 1 / L3))
    assert m3.hit_rate[0].item() == pytest.approx(1.0)
    m5 = catalogue_metrics(scores, cand, rel, k=5)
    assert m5.recall[0].item() == pytest.approx(1.0)
    assert m5.ndcg[0].item() == pytest.approx((0.5 / L3 + 0.5 / 2 + 1 / math.log2(5))
                                              / (1 + 1 / L3))
    for m in (m2, m3, m5):
        assert m.evaluated.tolist() == [True, False]
        assert int((~m.evaluated).sum()) == 1 and torch.isnan(m.recall[1])
        assert m.means()["recall"] == pytest.approx(m.recall[0].item())


def test_catalogue_hit_rate_hypergeometric_on_a_constant_predictor() -> None:
    # 10 tied candidates, 2 relevant, k = 3: P(hit) = 1 - C(8,3)/C(10,3)
    scores = torch.zeros(1, 10)
    cand = torch.ones(1, 10, dtype=torch.bool)
    rel = torch.zeros(1, 10, dtype=torch.bool)
    rel[0, [4, 7]] = True
    m = catalogue_metrics(scores, cand, rel, k=3)
    assert m.hit_rate.item() == pytest.approx(1 - math.comb(8, 3) / math.comb(10, 3))
    assert m.recall.item() == pytest.approx(3 / 10)


def test_catalogue_matches_torchmetrics_without_ties() -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(12, 30, generator=gen)
    rel = torch.rand(12, 30, generator=gen) < 0.2
    rel[:, 0] = True
    cand = torch.ones(12, 30, dtype=torch.bool)
    m = catalogue_metrics(scores, cand, rel, k=5)
    ref_recall = torch.stack([retrieval_recall(scores[t], rel[t], top_k=5) for t in range(12)])
    ref_ndcg = torch.stack([retrieval_normalized_dcg(scores[t], rel[t].long(), top_k=5)
                            for t in range(12)])
    torch.testing.assert_close(m.recall, ref_recall)
    torch.testing.assert_close(m.ndcg, ref_ndcg)
    top = scores.topk(5, dim=1).indices
    torch.testing.assert_close(m.hit_rate, rel.gather(1, top).any(1).float())


def test_means_average_evaluated_tasks_only_and_count_the_skipped() -> None:
    nan = float("nan")
    m = CatalogueMetrics(recall=torch.tensor([0.5, nan, 1.0, 0.0]),
                         ndcg=torch.tensor([0.25, nan, 0.75, 0.2]),
                         hit_rate=torch.tensor([1.0, nan, 0.5, 0.0]),
                         evaluated=torch.tensor([True, False, True, True]))
    assert int((~m.evaluated).sum()) == 1
    got = m.means()
    assert set(got) == {"recall", "ndcg", "hit_rate"}
    assert got["recall"] == pytest.approx(0.5)          # (0.5 + 1 + 0) / 3, the NaN left out
    assert got["ndcg"] == pytest.approx(0.4)
    assert got["hit_rate"] == pytest.approx(0.5)
    none = CatalogueMetrics(recall=torch.full((2,), nan), ndcg=torch.full((2,), nan),
                            hit_rate=torch.full((2,), nan), evaluated=torch.zeros(2, dtype=bool))
    assert int((~none.evaluated).sum()) == 2
    assert all(math.isnan(v) for v in none.means().values()) and len(none.means()) == 3


def test_means_without_an_evaluated_task_are_nan_under_the_same_names() -> None:
    """A group where no task has a relevant item reports NaN for every metric, under the
    names the evaluated case uses (the report and the JSON read them by name)."""
    from metarec.metrics import CatalogueMetrics

    two = torch.tensor([0.5, 1.0])
    some = CatalogueMetrics(recall=two, ndcg=two, hit_rate=two,
                            evaluated=torch.tensor([True, False]))
    none = CatalogueMetrics(recall=two, ndcg=two, hit_rate=two,
                            evaluated=torch.tensor([False, False]))
    assert some.means() == {"recall": 0.5, "ndcg": 0.5, "hit_rate": 0.5}
    empty = none.means()
    assert empty.keys() == some.means().keys()
    assert all(v != v for v in empty.values())
    assert int((~none.evaluated).sum()) == 2 and int((~some.evaluated).sum()) == 1


def test_the_catalogue_cut_off_is_20_unless_given() -> None:
    """Default k = 20: a relevant item ranked 21st of 25 is not a hit, ranked 20th it is."""
    from metarec.metrics import catalogue_metrics

    scores = torch.arange(25, 0, -1, dtype=torch.float32)[None, :]     # item j ranks j + 1
    cands = torch.ones(1, 25, dtype=torch.bool)
    for pos, hit in ((20, 0.0), (19, 1.0)):
        rel = torch.zeros(1, 25, dtype=torch.bool)
        rel[0, pos] = True
        assert catalogue_metrics(scores, cands, rel).means()["hit_rate"] == hit
        assert catalogue_metrics(scores, cands, rel, k=21).means()["hit_rate"] == 1.0
