"""The paired comparisons eval.json reports: a model against a reference network and against
its own zero-step self, computed from hand-made per-user values."""

from __future__ import annotations

import pytest
import torch

from metarec.config import EvaluateParams
from metarec.eval.compare import compare_references, compare_zero_step

PARAMS = EvaluateParams(bootstrap_samples=200)


def _users(*values: float) -> dict[str, torch.Tensor]:
    return {"ndcg@20": torch.tensor(values, dtype=torch.float64)}


def test_references_compare_every_meta_learner_with_every_trained_reference() -> None:
    per_user = {
        ("maml", "user_cold", 1): [_users(0.5, 0.2, float("nan"), 0.4),
                                   _users(0.3, 0.2, 0.1, 0.4)],     # two seeds
        ("pretrain", "user_cold", 1): [_users(0.1, 0.1, 0.1, 0.1)],
        ("ease", "user_cold", 3): [_users(0.1, 0.1, 0.1, 0.1)],     # another K: no pair
        ("most_popular", "user_cold", 1): [_users(0.6, 0.6, 0.6, 0.6)],
    }
    rows = compare_references(per_user, ["maml"], ["pretrain", "ease", "most_popular"],
                              "ndcg@20", PARAMS)
    assert [(r["model"], r["reference"]) for r in rows] == [("maml", "pretrain"),
                                                           ("maml", "most_popular")]
    # seed means per user: .4, .2, NaN (dropped), .4 -> mean .3333; the reference .1 / .6
    vs_pretrain, vs_popular = rows
    assert vs_pretrain["users"] == 3
    assert vs_pretrain["value_with"] == pytest.approx(1 / 3, abs=1e-6)
    assert vs_pretrain["value_without"] == pytest.approx(0.1)
    assert vs_pretrain["diff"] == pytest.approx(1 / 3 - 0.1, abs=1e-6)
    assert vs_pretrain["ci_low"] > 0
    assert vs_popular["diff"] == pytest.approx(1 / 3 - 0.6, abs=1e-6)
    assert vs_popular["ci_high"] < 0


def test_a_baseline_is_never_compared_as_a_model() -> None:
    per_user = {("pretrain", "warm", 5): [_users(0.2, 0.3)],
                ("ease", "warm", 5): [_users(0.1, 0.1)]}
    assert compare_references(per_user, ["maml"], ["ease"], "ndcg@20", PARAMS) == []


def test_zero_step_is_the_adapted_model_minus_itself_unadapted() -> None:
    adapted = {("metasgd", "user_cold", 5): [_users(0.4, 0.5, 0.6)]}
    zero = {("metasgd", "user_cold", 5): [_users(0.4, 0.4, 0.4)]}
    (row,) = compare_zero_step(adapted, zero, ["ndcg@20"], PARAMS)
    assert (row["model"], row["scenario"], row["k"]) == ("metasgd", "user_cold", 5)
    assert row["diff"] == pytest.approx(0.1, abs=1e-6)
    assert row["value_without"] == pytest.approx(0.4)
