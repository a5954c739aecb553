"""The nightly batch serves what evaluation measured: the model, the seed and the test-time
inner steps evaluate chose on validation (metrics/selection.json), so a user's batch scores
are the scores evaluate's own predictor gives that user's support."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
import torch

from metarec.backtest import plan as bt_plan
from metarec.checkpoint import load_model
from metarec.data.tasks import TaskBatch, load_episodes
from metarec.scoring.world import day_end
from metarec.stages import score


@pytest.fixture(scope="module")
def served(synthetic_project: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root, params = synthetic_project["root"], synthetic_project["params"]
    night = dt.datetime.fromtimestamp(bt_plan.trained_until(root / "episodes"), dt.UTC).date()
    p = dataclasses.replace(params.score, model="maml", top_k=10)
    batch = score.run(p, params.validate, params.ingest, root / "validated", root / "models",
                      tmp_path_factory.mktemp("served"), night.isoformat(),
                      root / "selection.json")
    return {"root": root, "batch": batch, "night": night}


def test_the_manifest_names_the_evaluated_seed_and_steps(served: dict) -> None:
    selection = json.loads((served["root"] / "selection.json").read_text())
    manifest = json.loads((served["batch"] / "manifest.json").read_text())
    seed = selection["seeds"]["maml"]
    assert manifest["seed"] == seed
    assert manifest["model"].endswith(f"seed{seed}/maml.pt")
    assert manifest["inner_steps"] == selection["inner_steps"][str(seed)]["maml"]


def test_batch_scores_equal_evaluates_predictor_on_the_same_support(served: dict) -> None:
    root, batch = served["root"], served["batch"]
    selection = json.loads((root / "selection.json").read_text())
    seed = selection["seeds"]["maml"]
    steps = selection["inner_steps"][str(seed)]["maml"]
    data = load_episodes(root / "episodes")
    model = load_model(root / f"models/seed{seed}/maml.pt", data)   # as evaluate loads it
    model.set_steps(rate=steps["rate"], rank=steps["rank"])         # what evaluate set
    recs = pd.read_parquet(batch / "recommendations.parquet")
    log = pd.read_parquet(root / "validated/interactions.parquet")
    log = log[log["timestamp"] < day_end(served["night"])]
    cold = recs[recs["kind"] == "cold"]["user_id"].drop_duplicates().head(5)
    assert len(cold) >= 3
    checked = 0
    for user in cold:
        mine = log[log["user_id"] == user].sort_values(["timestamp"], kind="stable")
        if mine["timestamp"].duplicated().any():
            continue            # ties in time: the two orders may differ; skip such users
        items = torch.from_numpy(data.items.index_of(mine["item_id"]).astype(np.int64))
        one = TaskBatch(task_id=torch.tensor([0]),
                        user_idx=torch.from_numpy(data.users.index_of(
                            pd.Series([user], dtype="string")).astype(np.int64)),
                        support_items=items[None], support_ratings=torch.tensor(
                            mine["rating"].to_numpy(np.float32))[None],
                        support_mask=torch.ones(1, len(items), dtype=torch.bool),
                        query_items=torch.zeros(1, 1, dtype=torch.long),
                        query_ratings=torch.zeros(1, 1), query_mask=torch.zeros(
                            1, 1, dtype=torch.bool))
        scores = model.rank(model.adapt(one))[0]                     # (N,)
        picks = recs[recs["user_id"] == user]
        rows = data.items.index_of(picks["item_id"].astype("string"))
        np.testing.assert_allclose(scores[torch.from_numpy(rows.astype(np.int64))].numpy(),
                                   picks["score"].to_numpy(), rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked >= 2
