"""Training lowers validation loss; checkpoints round-trip and refuse bad files; the stage runs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from meta_fixtures import episode_data, fit_algorithm

from metarec import algorithms, fitting
from metarec.algorithms.finetune import FineTune, FinetuneParams
from metarec.checkpoint import CheckpointError, load_model, save_model
from metarec.config import ModelParams, ObjectiveParams, TrainParams, to_dict
from metarec.data.draws import HISTORY
from metarec.data.tasks import to_batch
from metarec.errors import MetarecError
from metarec.meta.features import FeatureStore
from metarec.meta.predictor import AdaptivePredictor
from metarec.models.base import FitContext
from metarec.stages import train as train_stage
from metarec.train.fit import FitResult
from metarec.train.module import MetaLearner, TrainingDiverged

# from a random start, so that training has something to lower (the SVD warm start of the
# default is tested in test_warm_start.py)
MODEL = ModelParams(interaction="dot", embedding_dim=8, hidden=(16,), adapt="user",
                    fold_in=False, warm_start="none")
FINETUNE = FinetuneParams(steps=(1, 3), lrs=(0.05, 0.2))
# the squared-error objective of the papers (the ranking objective is tested on its own below)
RATING = ObjectiveParams(ranking_weight=0.0, inner="rating")
TRAIN = TrainParams(max_steps=30, val_every=10, meta_batch=16, outer_lr=0.01, inner_lr=0.1,
                    inner_steps=2, patience=0, sections={"finetune": FINETUNE},
                    objective=RATING, resample=False)


def predictor(fit: FitResult, data) -> AdaptivePredictor:
    return AdaptivePredictor(fit.name, fit.learner, FeatureStore(data.users, data.items),
                             fit_metrics=fit.metrics())


def tune_finetune(pretrained: FitResult, data) -> AdaptivePredictor:
    ctx = FitContext(data=data, model=MODEL, train=TRAIN, log_dir=None,
                     fitted={"pretrain": predictor(pretrained, data)})
    return FineTune.fit(ctx)


# every algorithm meta-trained on episodes by the outer loop from scratch, as the registry
# declares them (ridge: its closed form is tested on its own below)
EPISODIC = [n for n in algorithms.names() if algorithms.get(n).capabilities.uses_draws
            and n != "ridge"]


@pytest.fixture(scope="module")
def data():
    return episode_data(n_users=80, n_items=40)


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory) -> dict[str, FitResult]:
    logs = tmp_path_factory.mktemp("logs")
    out = {name: fit_algorithm(name, data, MODEL, TRAIN, logs) for name in EPISODIC}
    # the same network without episodes (whole histories, as pretrain is fitted)
    out["pretrain"] = fit_algorithm("pretrain", data, MODEL, TRAIN, logs, draw=HISTORY)
    tuned = tune_finetune(out["pretrain"], data)
    m = tuned.fit_metrics
    out["finetune"] = FitResult("finetune", tuned.learner, m["initial_val_loss"],
                                m["best_val_loss"], m["best_step"], m["steps"], m["seconds"])
    out["finetune"].extra = m
    return out


def test_early_stopping_ends_training_after_patience_stale_validations(data, tmp_path):
    # a far too large outer lr: no validation beats the untrained start, so training stops
    # after `patience` stale validations and keeps the start, never a worse model
    train = replace(TRAIN, outer_lr=3.0, max_steps=200, val_every=5, patience=2)
    start = fit_algorithm("fomaml", data, MODEL, replace(train, max_steps=0), tmp_path / "0")
    fit = fit_algorithm("fomaml", data, MODEL, train, tmp_path)
    assert all(v > fit.initial_val_loss for _, v in fit.history), fit.history
    assert fit.steps == train.patience * train.val_every < train.max_steps
    assert fit.best_step == 0 and fit.best_val_loss == fit.initial_val_loss
    for k, v in fit.learner.state_dict().items():
        torch.testing.assert_close(v, start.learner.state_dict()[k], rtol=0, atol=0)


def test_a_run_diverging_before_any_improvement_fails_naming_algorithm_seed_and_step(
        data, tmp_path):
    train = replace(TRAIN, outer_lr=1e38, outer_optimizer="sgd", max_steps=20, val_every=5,
                    seed=3)
    with pytest.raises(TrainingDiverged, match=r"fomaml \(seed 3\) diverged at outer step "
                                               r"\d+: .*not finite|fomaml \(seed 3\).*nan"):
        fit_algorithm("fomaml", data, MODEL, train, tmp_path)


def test_a_run_that_diverges_after_improving_stops_there_and_keeps_its_best(
        data, tmp_path, monkeypatch):
    """The plant: the outer loss turns NaN at step 21 of 30, after two validations (steps 10,
    20) improved. Training stops at that step, says so, and the learner holds the weights of
    its best validation (their validation loss is the recorded best), not the NaN ones."""
    from metarec.meta.features import feature_store
    from metarec.meta.learner import Learner
    from metarec.meta.predictor import validation_loss
    from metarec.train.data import EpisodeDataModule

    real, calls = Learner.outer_loss, [0]

    def planted(self, support, query):
        calls[0] += 1
        objective, report = real(self, support, query)
        return (objective * float("nan") if calls[0] > 20 else objective), report

    monkeypatch.setattr(Learner, "outer_loss", planted)
    fit = fit_algorithm("fomaml", data, MODEL, TRAIN, tmp_path)
    assert fit.best_step in (10, 20) and fit.best_val_loss < fit.initial_val_loss
    assert fit.steps < TRAIN.max_steps
    assert fit.metrics()["stopped_by"].startswith("diverged at outer step 20 (the outer loss")
    assert all(torch.isfinite(v).all() for v in fit.learner.state_dict().values())
    store = feature_store(data, fit.learner.model)
    fit.learner.use_catalogue(store)
    dm = EpisodeDataModule(data, TRAIN.meta_batch, seed=TRAIN.seed)
    dm.setup("fit")
    again = validation_loss(fit.learner, store, dm.val_tasks, k=TRAIN.val_ndcg_k)
    assert again == pytest.approx(fit.best_val_loss, rel=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_cross_platform_trust_has_its_own_outer_learning_rate(data, optimizer):
    algo = algorithms.get("fomaml").create(data, MODEL, TRAIN)
    store = FeatureStore(data.users, data.items)
    trust = algo.cross_trust
    module = MetaLearner(algo, store, optimizer, 0.001, cross_trust_lr=0.05)
    opt = module.configure_optimizers()
    assert [g["lr"] for g in opt.param_groups] == [0.001, 0.05]
    first, second = (g["params"] for g in opt.param_groups)
    assert not any(p is trust for p in first)
    assert len(second) == 1 and second[0] is trust
    assert len(first) + 1 == len(list(algo.outer_parameters()))
    # one step with the same gradient everywhere moves the trust by its own rate
    for p in algo.outer_parameters():
        p.grad = torch.ones_like(p)
    others = {n: p.detach().clone() for n, p in algo.named_parameters() if p is not trust}
    opt.step()
    torch.testing.assert_close(trust.detach(), torch.tensor(-0.05, dtype=trust.dtype))
    moved = [float((p.detach() - others[n]).abs().max()) for n, p in algo.named_parameters()
             if p is not trust and p.requires_grad]
    assert max(moved) == pytest.approx(0.001, rel=1e-3)
    # None: the trust follows the network's rate
    same = MetaLearner(algo, store, optimizer, 0.002).configure_optimizers()
    assert [g["lr"] for g in same.param_groups] == [0.002, 0.002]
    assert same.param_groups[1]["params"][0] is trust


@pytest.mark.parametrize("name", [*EPISODIC, "pretrain", "finetune"])
def test_training_lowers_validation_loss(fitted, name):
    fit = fitted[name]
    assert fit.best_val_loss < 0.9 * fit.initial_val_loss, fit.metrics()
    if name != "finetune":
        assert fit.steps == TRAIN.max_steps
        assert [s for s, _ in fit.history] == [10, 20, 30]


def test_finetune_adapts_better_than_pretrain(fitted):
    assert fitted["finetune"].best_val_loss < fitted["pretrain"].best_val_loss
    assert fitted["finetune"].extra["chosen_steps"] in FINETUNE.steps


def test_training_is_deterministic(data, fitted, tmp_path):
    again = fit_algorithm("maml", data, MODEL, TRAIN, tmp_path)
    first = fitted["maml"].learner.state_dict()
    for k, v in again.learner.state_dict().items():
        torch.testing.assert_close(v, first[k], rtol=0, atol=0)


def _save(fit: FitResult, data, path):
    params = {"model": to_dict(MODEL), "train": to_dict(TRAIN)}
    return save_model(path, predictor(fit, data), params, data.vocab)


@pytest.mark.parametrize("name", ["metasgd", "metadropout", "finetune", "reptile"])
def test_checkpoint_round_trip(fitted, data, tmp_path, name):
    path = _save(fitted[name], data, tmp_path / f"{name}.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["algorithm"] == name and blob["vocab"] == data.vocab
    assert blob["params"]["train"]["inner_steps"] == TRAIN.inner_steps
    predictor = load_model(path, data)
    assert predictor.name == name
    batch = to_batch(data.select("val"))
    original = fitted[name].learner
    for k, v in predictor.learner.state_dict().items():
        torch.testing.assert_close(v, original.state_dict()[k], rtol=0, atol=0)
    assert predictor.learner.config() == original.config()
    scores = predictor.predict(batch, batch.query_items)
    assert scores.shape == batch.query_items.shape


def test_truncated_checkpoint_is_refused(fitted, data, tmp_path):
    path = _save(fitted["maml"], data, tmp_path / "maml.pt")
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path, data)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt", data)


def test_altered_checkpoint_is_refused(fitted, data, tmp_path):
    path = _save(fitted["maml"], data, tmp_path / "maml.pt")
    blob = torch.load(path, weights_only=True)
    blob["state"]["state_dict"]["model.global_bias"] += 1.0
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="digest"):
        load_model(path, data)


def test_vocab_mismatch_is_refused(fitted, data, tmp_path):
    path = _save(fitted["maml"], data, tmp_path / "maml.pt")
    other = replace(data, vocab={**data.vocab, "rating": {"min": 0.0, "max": 10.0}})
    with pytest.raises(CheckpointError, match="different vocabulary"):
        load_model(path, other)
    assert issubclass(CheckpointError, MetarecError)


def test_stage_writes_checkpoints_and_metrics(data, tmp_path, monkeypatch):
    monkeypatch.setattr(fitting, "load_episodes", lambda directory: data)
    train = replace(TRAIN, algorithms=("maml", "reptile"), max_steps=10, val_every=5,
                    seeds=(0, 3))
    metrics = train_stage.run(MODEL, train, tmp_path / "episodes", tmp_path / "models",
                              tmp_path / "metrics" / "train.json")
    assert set(metrics["seeds"]) == {"seed0", "seed3"}
    # the loss the size rule chose, and what it chose from (the fixture's 40 items: softmax)
    assert metrics["objective"] == {"loss": "softmax", "item_ids": data.items.n_ids,
                                    "sampled_above": 5000}
    per_seed = metrics["seeds"]["seed3"]
    assert set(per_seed) == {*train.baselines, "maml", "reptile"}
    written = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    folder = tmp_path / "models" / "seed3"
    for name in ("pretrain", "finetune", "maml", "reptile"):
        loaded = load_model(folder / f"{name}.pt", data)
        assert loaded.name == name
        # the checkpoint carries the metrics train.json reports, and the kept model is the
        # best validation point, never worse than the start
        assert loaded.fit_metrics["best_val_loss"] == per_seed[name]["best_val_loss"]
        assert per_seed[name]["best_val_loss"] <= per_seed[name]["initial_val_loss"]
    for name in train.baselines:   # train.json adds how long the fit took (no clock inside)
        reported = {k: v for k, v in per_seed[name].items()
                    if k not in ("fit_seconds", "seconds")}
        assert isinstance(per_seed[name]["fit_seconds"], float)
        assert load_model(folder / f"{name}.pt", data).tuning == json.loads(
            json.dumps(reported))
    assert (folder / "logs" / "maml" / "version_0" / "metrics.csv").exists()
    live = folder / "logs" / "maml" / "dvclive"
    assert (live / "metrics.json").exists() and (live / "plots/metrics/val/loss.tsv").exists()
    assert not (tmp_path / "dvc.yaml").exists()
    # a different seed gives different weights
    a = torch.load(tmp_path / "models/seed0/maml.pt", weights_only=True)["state"]["state_dict"]
    b = torch.load(folder / "maml.pt", weights_only=True)["state"]["state_dict"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_stage_rejects_unknown_algorithm(data, tmp_path):
    with pytest.raises(MetarecError, match="unknown"):
        train_stage.run(MODEL, replace(TRAIN, algorithms=("mamll",)), tmp_path, tmp_path,
                        tmp_path / "m.json")


def test_cli_train_reports_bad_params(tmp_path):
    from typer.testing import CliRunner

    from metarec.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("train:\n  inner_stepz: 3\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--params", str(params),
                                      "--episodes", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "inner_stepz" in result.output
    params.write_text("train:\n  inner_steps: 3\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["train", "--params", str(params),
                                      "--episodes", str(tmp_path / "none")])
    assert result.exit_code == 2 and "episodes.parquet" in result.output


def test_ridge_starts_at_biased_mf_and_improves(data, tmp_path):
    """With the MF start, step 0 predicts exactly what BiasedMF does with the same ALS fit."""
    from metarec.algorithms.biased_mf import BiasedMF
    from metarec.algorithms.ridge import Ridge, RidgeParams
    from metarec.models.linalg import fit_als
    from metarec.models.statistical import rows_to_codes, training_ratings

    ridge = RidgeParams(lam=2.0, mf_reg=3.0, mf_iters=5)
    train = replace(TRAIN, sections={**TRAIN.sections, "ridge": ridge})
    algo = Ridge.create(data, MODEL, train).double()
    users, items, ratings = training_ratings(data)
    q, b_i = fit_als(users, items, ratings, len(data.users), len(data.items),
                     float(ratings.mean()), MODEL.embedding_dim, 3.0, 5, train.seed)
    mf = BiasedMF(float(ratings.mean()), data.rating_range, rows_to_codes(q, data),
                  rows_to_codes(b_i, data), 2.0).bind(data)
    batch = to_batch(data.select("val"))
    cands = torch.arange(len(data.items)).expand(len(batch), -1)
    ours = AdaptivePredictor("ridge", algo, FeatureStore(data.users, data.items,
                                                         dtype=torch.float64))
    torch.testing.assert_close(ours.predict(batch, cands), mf.predict(batch, cands),
                               rtol=1e-6, atol=1e-6)
    train = replace(train, sections={**train.sections, "ridge": replace(ridge, outer_lr=0.01)})
    fit = fit_algorithm("ridge", data, MODEL, train, tmp_path)
    assert fit.best_val_loss < fit.initial_val_loss, fit.metrics()
    path = save_model(tmp_path / "ridge.pt", predictor(fit, data),
                      {"model": to_dict(MODEL), "train": to_dict(train)}, data.vocab)
    loaded = load_model(path, data)
    assert loaded.learner.config() == fit.learner.config()
    torch.testing.assert_close(loaded.predict(batch, batch.query_items),
                               predictor(fit, data).predict(batch, batch.query_items))


@pytest.mark.parametrize("objective", [RATING, ObjectiveParams()], ids=["rating", "ranking"])
def test_svd_warm_start_begins_below_a_random_start(data, tmp_path, objective):
    # model.warm_start: svd puts the item side at the history's SVD and the rating head at
    # the shrunk item means, so the untrained network already beats a random one on
    # validation tasks, for the rating and for the default ranking objective
    train = replace(TRAIN, max_steps=0, objective=objective)
    cold = fit_algorithm("maml", data, MODEL, train, tmp_path / "none")
    warm = fit_algorithm("maml", data, replace(MODEL, warm_start="svd"), train, tmp_path / "svd")
    assert warm.initial_val_loss < 0.95 * cold.initial_val_loss, (warm.initial_val_loss,
                                                                  cold.initial_val_loss)


def test_a_time_budget_stops_at_the_next_validation_and_keeps_the_best(data, tmp_path):
    train = replace(TRAIN, max_steps=200, val_every=5, patience=0, max_seconds=1e-9)
    fit = fit_algorithm("fomaml", data, MODEL, train, tmp_path)
    assert fit.steps == train.val_every and fit.stopped_by == "time budget"
    assert fit.metrics()["stopped_by"] == "time budget"
    assert fit.best_val_loss <= fit.initial_val_loss
    full = fit_algorithm("fomaml", data, MODEL, replace(train, max_seconds=0.0, max_steps=10),
                         tmp_path / "full")
    assert full.steps == 10 and full.metrics()["stopped_by"] == "max_steps"


def test_the_size_rule_trains_large_catalogues_on_the_sampled_loss(data):
    from metarec.config import ObjectiveParams

    auto = ObjectiveParams(loss="auto", sampled_above=100)
    assert auto.resolved(100).loss == "softmax" and auto.resolved(101).loss == "sampled"
    assert ObjectiveParams(loss="bpr").resolved(10**6).loss == "bpr"   # a named loss stays
    small = replace(TRAIN, objective=ObjectiveParams(loss="auto", sampled_above=10))
    learner = algorithms.get("maml").create(data, MODEL, small)       # 40 items > 10
    assert learner.objective.loss == "sampled"
    large = replace(small, objective=replace(small.objective, sampled_above=1000))
    assert algorithms.get("maml").create(data, MODEL, large).objective.loss == "softmax"


def test_a_diverging_inner_rate_loses_the_search_and_is_recorded(data, tmp_path):
    """A rate whose probe diverges is the search's loser, named in the record, not the end of
    the train stage (a large catalogue's maml diverged at the search's larger rate); when
    every rate diverges the stage fails, naming the algorithm."""
    from metarec.workers import Workers

    search = replace(TRAIN.search, inner_lr=(0.1, 1e30), budget_s=1e9)
    train = replace(TRAIN, algorithms=("fomaml",), baselines=(), seeds=(0,), search=search)
    with Workers(data, 1, 1) as pool:
        lr, record, fits = fitting.choose_inner_lr(["fomaml"], pool, MODEL, train, tmp_path,
                                                   None, True, 0.0)
        assert lr == 0.1 and set(fits) == {0.1} and set(record["val_loss"]) == {"0.1"}
        assert record["diverged"]["1e+30"].startswith("fomaml (seed 0)")
        every = replace(train, search=replace(search, inner_lr=(1e30, 1e31)))
        with pytest.raises(TrainingDiverged, match=r"fomaml \(seed 0\)"):
            fitting.choose_inner_lr(["fomaml"], pool, MODEL, every, tmp_path, None, True, 0.0)


def test_a_checkpoint_holds_no_clock_so_two_fits_write_the_same_bytes(data, tmp_path):
    """The fit's seconds go to metrics/train.json, never into the checkpoint: two runs of the
    same fit write byte-identical models (and so the same DVC hashes and batch manifests)."""
    written = []
    for run in ("a", "b"):
        fit = fit_algorithm("fomaml", data, MODEL, TRAIN, tmp_path / run)
        pred = predictor(fit, data)
        assert "seconds" in pred.fit_metrics and "seconds" not in pred.state()["fit"]
        path = save_model(tmp_path / run / "fomaml.pt", pred,
                          {"model": to_dict(MODEL), "train": to_dict(TRAIN)}, data.vocab)
        written.append(path.read_bytes())
    assert written[0] == written[1]
