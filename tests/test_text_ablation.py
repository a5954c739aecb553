"""train.text_ablation: every meta-learner fitted again without the item text vectors
(``<name>~notext``), loaded through the same view wherever it is read, and compared with
itself with text in metrics/eval.json (``text``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from metarec import fitting
from metarec.checkpoint import load_model, read_checkpoint
from metarec.config import TrainParams
from metarec.data import views
from metarec.data.encoding import encode_entity
from metarec.data.tasks import EpisodeData, load_episodes
from metarec.errors import ParamsError
from metarec.params import parse
from metarec.stages import episodes, evaluate, ingest, train, validate

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def titled_log(root: Path, users: int = 160, items: int = 48, seed: int = 0) -> dict:
    """Two tastes (even / odd items) whose titles say which: 'alpha ...' or 'beta ...'."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        taste = u % 2
        picked = rng.choice(items, size=int(rng.integers(12, 24)), replace=False)
        for j, i in enumerate(picked):
            rating = 5 if i % 2 == taste else int(rng.integers(1, 3))
            rows.append((f"u{u}", f"i{i}", rating, 86_400 * (u + j)))
    pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).to_csv(root / "log.csv",
                                                                          index=False)
    words = ("alpha saga", "beta story")
    pd.DataFrame({"item": [f"i{i}" for i in range(items)],
                  "title": [f"{words[i % 2]} {i}" for i in range(items)]}
                 ).to_csv(root / "items.csv", index=False)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ingest"].update(source="table", table={
        **raw["ingest"]["table"], "interactions": str(root / "log.csv"), "user_col": "user",
        "item_col": "item", "rating_col": "rating", "timestamp_col": "ts",
        "items": str(root / "items.csv"), "item_features": {"title": "text"}})
    raw["validate"]["min_timestamp"] = "1969-12-01"
    raw["episodes"].update(support_sizes=[3, 5], train_draws=2, text_encoder="hashed",
                           text_dim=8, text_cache=None)
    raw["train"].update(algorithms=["maml"], baselines=["item_mean"], seeds=[0, 1],
                        max_steps=20, val_every=10, draws=["temporal"], workers=1,
                        text_ablation=True)
    raw["evaluate"].update(bootstrap_samples=50, inner_steps_grid=[0, 2], curve_k=3,
                           workers=1)
    return raw


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("text_ablation")
    p = parse(titled_log(root))
    ingest.run(p.ingest, root / "canonical")
    validate.run(p.validate, root / "canonical", root / "validated", root / "q", root / "r")
    episodes.run(p.episodes, root / "validated", root / "episodes", root / "data.json")
    metrics = train.run(p.model, p.train, root / "episodes", root / "models",
                        root / "train.json")
    result = evaluate.run(p.evaluate, root / "episodes", root / "models", root / "eval.json",
                          root / "report", root / "selection.json")
    return {"root": root, "train": metrics, "eval": result}


def test_the_view_is_the_encoding_without_text(project: dict) -> None:
    """without_text gives the item table the episodes stage makes with no encoder."""
    data = load_episodes(project["root"] / "episodes")
    assert views.text_features(data) == ["title"]
    assert sum(n.startswith("title#") for n in data.items.num_names) == 8
    plain = views.without_text(data)
    assert views.text_features(plain) == [] and "title" not in plain.vocab["items"]["features"]
    items = pd.read_parquet(project["root"] / "episodes" / "items.parquet")
    expect = encode_entity(items, "item_id", plain.vocab["items"])
    assert plain.items.num_names == expect.num_names
    assert torch.equal(plain.items.numeric, expect.numeric)
    assert "title" in data.vocab["items"]["features"]          # the original is untouched


def test_each_meta_learner_is_fitted_again_without_text(project: dict) -> None:
    root = project["root"]
    for seed in (0, 1):
        names = sorted(p.stem for p in (root / "models" / f"seed{seed}").glob("*.pt"))
        assert names == ["item_mean", "maml", "maml~notext"]
        assert set(project["train"]["seeds"][f"seed{seed}"]) == set(names)
    plain, full = (read_checkpoint(root / "models/seed0" / f"{n}.pt")
                   for n in ("maml~notext", "maml"))
    assert plain["view"] == "notext" and "view" not in full
    assert "title" not in plain["vocab"]["items"]["features"]
    assert "text_ablation" not in full["params"]["train"]
    data = load_episodes(root / "episodes")
    loaded = load_model(root / "models/seed0/maml~notext.pt", data)   # the view, again
    assert loaded.name == "maml"
    # the network of the variant has no input for the 8 text numbers
    assert tuple(full["state"]["state_dict"]["model.item_num.weight"].shape)[1] == 8
    assert not any(k.startswith("model.item_num.") for k in plain["state"]["state_dict"])


def test_evaluation_puts_each_model_beside_itself_without_text(project: dict) -> None:
    ev = json.loads((project["root"] / "eval.json").read_text())
    rows = ev["text"]
    assert rows and {r["model"] for r in rows} == {"maml"}
    assert {r["view"] for r in rows} == {"notext"}
    assert {r["metric"] for r in rows} == {ev["catalogue_metric"]}
    results = {(r["model"], r["scenario"], r["k"], r["seed"]): r for r in ev["results"]}
    for r in rows:
        assert r["ci_low"] <= r["diff"] <= r["ci_high"]
        assert r["diff"] == pytest.approx(r["value_with"] - r["value_without"], abs=1e-5)
        for name, value in (("maml", r["value_with"]), ("maml~notext", r["value_without"])):
            per_seed = [results[(name, r["scenario"], r["k"], s)][r["metric"]] for s in (0, 1)]
            assert value == pytest.approx(sum(per_seed) / 2, abs=1e-5)
    # variants stay out of the seed-ensembles; the ensemble of maml's seeds is there
    models = {r["model"] for r in ev["results"]}
    assert "maml-ens" in models and not any("~" in m and "ens" in m for m in models)


def test_text_ablation_without_text_vectors_is_refused() -> None:
    data = EpisodeData(
        tasks=pd.DataFrame(), users=None, items=None,
        vocab={"items": {"features": {"year": {"kind": "numeric"}}}})
    with pytest.raises(ParamsError, match="episodes.text_encoder"):
        fitting.ablation_views(TrainParams(text_ablation=True), data)
    assert fitting.ablation_views(TrainParams(), data) == ()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["text_ablation"] = True              # and episodes.text_encoder: none
    with pytest.raises(ParamsError, match="train.text_ablation: there is no text"):
        parse(raw)


def test_the_nightly_batch_scores_with_a_variant(project: dict, tmp_path: Path) -> None:
    """A variant read by the nightly engine sees the features it was trained on: its batch
    has the same users as maml's, and other scores (maml reads the titles)."""
    from metarec.config import IngestParams, ScoreParams, ValidateParams
    from metarec.stages import score

    root, out = project["root"], {}
    for name in ("maml~notext", "maml"):
        folder = score.run(ScoreParams(model=name, as_of="1970-07-01", active_days=60,
                                       max_interactions=30), ValidateParams(),
                           IngestParams(), root / "validated", root / "models", tmp_path / name)
        out[name] = pd.read_parquet(folder / "recommendations.parquet")
    plain, full = out["maml~notext"], out["maml"]
    assert len(plain) > 0 and plain["user_id"].tolist() == full["user_id"].tolist()
    assert not np.array_equal(plain["score"].to_numpy(), full["score"].to_numpy())
