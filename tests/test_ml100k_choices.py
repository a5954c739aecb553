"""ML-100K: the cheap grids (issue #39) choose what the per-value fits chose before them.

The expected choices and validation scores are those the baselines made at commit 47ad617
(one dense inverse per EASE penalty, ItemKNN scored per neighbour count, ALS by per-rating
outer products), recorded by benchmarks/baseline_grids.py in
fixtures/ml100k_baseline_choices.json.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from metarec import algorithms
from metarec.config import IngestParams, ModelParams
from metarec.data.tasks import EpisodeData, load_episodes
from metarec.models.base import FitContext
from metarec.params import load_params

ROOT = Path(__file__).resolve().parents[1]
BEFORE = json.loads((Path(__file__).parent / "fixtures" / "ml100k_baseline_choices.json")
                    .read_text(encoding="utf-8"))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> EpisodeData:
    from metarec.stages import episodes, ingest, validate

    p = load_params(ROOT / "params.yaml")
    root = tmp_path_factory.mktemp("ml100k")
    ingest.run(IngestParams(cache_dir=str((ROOT / ".cache" / "metarec").resolve())),
               root / "canonical")
    validate.run(p.validate, root / "canonical", root / "validated", root / "q", root / "r")
    episodes.run(p.episodes, root / "validated", root / "episodes", root / "data.json")
    return load_episodes(root / "episodes")


def fit(name: str, data: EpisodeData) -> object:
    train = load_params(ROOT / "params.yaml").train
    ctx = FitContext(data=data, model=ModelParams(), train=replace(train, seed=0),
                     log_dir=Path("."))
    return algorithms.get(name).fit(ctx)


@pytest.mark.parametrize(("name", "axes"), [("ease", ("window", "lam")),
                                             ("itemknn", ("window", "neighbours"))])
def test_the_ranking_grids_choose_as_before(ml100k: EpisodeData, name: str,
                                            axes: tuple[str, str]) -> None:
    model, before = fit(name, ml100k), BEFORE[name]
    assert {a: model.tuning[a] for a in axes} == {a: before[a] for a in axes}
    np.testing.assert_allclose(model.tuning[", ".join(axes)]["val_ndcg@20"],
                               before["val_ndcg@20"], rtol=0, atol=1e-6)


def test_biased_mf_chooses_as_before(ml100k: EpisodeData) -> None:
    model, before = fit("biased_mf", ml100k), BEFORE["biased_mf"]
    assert (model.tuning["reg"], model.user_lambda) == (before["reg"], before["user_lambda"])
    np.testing.assert_allclose([r["val_mae"] for r in model.tuning["user_lambda"]],
                               before["val_mae"], rtol=0, atol=1e-6)
