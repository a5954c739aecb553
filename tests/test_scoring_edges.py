"""The nightly batch at its edges, on test_score's tiny world: a model swapped in while a
batch is scored, an input replaced mid-run, manifests turned against verify-batch, model
names that would become paths, leftovers of killed runs beside the batch."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from test_score import AS_OF, _params, _run, world  # noqa: F401 - the module's fixture

from metarec import checkpoint
from metarec.config import IngestParams, ValidateParams
from metarec.errors import DataError
from metarec.io import file_digests, read_json, sha256_file
from metarec.scoring import batch as scoring_batch
from metarec.scoring import inputs as scoring_inputs
from metarec.scoring import verify as scoring_verify
from metarec.scoring.inputs import known_model, resolve
from metarec.scoring.verify import VerifyError, check_manifest
from metarec.stages import score as stage

DEAD = 2**22 + 12345


@pytest.fixture
def models(world, tmp_path: Path) -> Path:  # noqa: F811
    """A private copy of the world's models, and beside it a different checkpoint of the
    same algorithm (another fit: what a retrain writes)."""
    out = tmp_path / "models"
    shutil.copytree(world["models"], out)
    blob = torch.load(out / "seed0/maml.pt", weights_only=True)
    state = blob["state"]["state_dict"]
    name = next(n for n, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.5
    blob["digest"] = checkpoint._digest(blob["state"])
    torch.save(blob, tmp_path / "retrained.pt")
    return out


def _bare(world, landing: str | None = None):  # noqa: F811
    """The world's score params with another landing folder (None: none)."""
    return dataclasses.replace(_params(world), landing_dir=landing)


def _batch_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _score(world, models: Path, out: Path) -> Path:  # noqa: F811
    return stage.run(_params(world), ValidateParams(), IngestParams(), world["validated"],
                     models, out, AS_OF)


def test_a_model_retrained_mid_run_cannot_produce_a_wrong_manifest(world, models: Path,  # noqa: F811
                                                                  tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The model file is replaced after the batch began and before its rows were scored:
    the batch is scored by the bytes it pinned, and the manifest names those bytes."""
    reference = _batch_files(_score(world, models, tmp_path / "ref"))
    model = models / "seed0/maml.pt"
    pinned_sha, pinned_md5 = file_digests(model)
    original = scoring_batch.recommend_stream

    def retrain_then_stream(inputs, *args, **kwargs):
        shutil.copy(tmp_path / "retrained.pt", model)          # a retrain swaps it in
        return original(inputs, *args, **kwargs)

    monkeypatch.setattr(scoring_batch, "recommend_stream", retrain_then_stream)
    out = _score(world, models, tmp_path / "recs")
    assert sha256_file(model) != pinned_sha                     # the swap happened
    manifest = read_json(out / "manifest.json")
    assert manifest["model_sha256"] == pinned_sha
    assert manifest["dvc_md5"][manifest["model"]] == pinned_md5
    assert _batch_files(out) == reference                       # rows and manifest: v1's


def test_the_manifest_records_the_digests_of_what_was_read(world, models: Path,  # noqa: F811
                                                            tmp_path: Path) -> None:
    out = _score(world, models, tmp_path / "recs")
    manifest = read_json(out / "manifest.json")
    read = {**manifest["inputs"], manifest["model"]: manifest["model_sha256"]}
    assert set(read) == set(manifest["dvc_md5"])
    for rel, sha in read.items():
        assert file_digests(rel) == (sha, manifest["dvc_md5"][rel]), rel
    assert manifest["model_sha256"] == sha256_file(models / "seed0/maml.pt")


def test_an_input_replaced_mid_run_stops_the_batch(world, models: Path,  # noqa: F811
                                                   tmp_path: Path, monkeypatch) -> None:
    """The item table is rewritten after the batch pinned it: the batch may have read either
    version, so nothing is published and the previous batch stays."""
    validated = tmp_path / "validated"
    shutil.copytree(world["validated"], validated)
    before = _batch_files(stage.run(_params(world), ValidateParams(), IngestParams(),
                                    validated, models, tmp_path / "recs", AS_OF))
    original = scoring_batch.recommend_stream

    def rewrite_then_stream(inputs, *args, **kwargs):
        table = pq.read_table(validated / "items.parquet")
        (validated / "items.parquet").unlink()
        pq.write_table(table, validated / "items.parquet")   # same rows, another file
        return original(inputs, *args, **kwargs)

    monkeypatch.setattr(scoring_batch, "recommend_stream", rewrite_then_stream)
    with pytest.raises(DataError, match=r"items.parquet: changed while the batch was being"):
        stage.run(_params(world), ValidateParams(), IngestParams(), validated, models,
                  tmp_path / "recs", AS_OF)
    assert _batch_files(tmp_path / "recs" / AS_OF) == before
    assert [p.name for p in (tmp_path / "recs").iterdir()] == [AS_OF]


def test_publishing_sweeps_what_dead_runs_left_beside_the_batch(world, models: Path,  # noqa: F811
                                                                tmp_path: Path) -> None:
    from metarec.io import owner_tag

    host = owner_tag().split("-")[1]
    recs = tmp_path / "recs"
    recs.mkdir()
    dead = [f".{AS_OF}.{DEAD}-{host}.abc.tmp", f".{AS_OF}.{DEAD}-{host}.shards-x.tmp"]
    alive = f".{AS_OF}.{os.getpid()}-{host}.shards-y.tmp"       # a live run's shards
    for name in (*dead, alive):
        (recs / name).mkdir()
    _score(world, models, recs)
    assert sorted(p.name for p in recs.iterdir()) == sorted([AS_OF, alive])


# -- model names that would become paths -------------------------------------------------------

@pytest.mark.parametrize("name, ok", [("maml", True), ("maml~notext", True),
                                      ("most_popular", True), ("../../etc/passwd", False),
                                      ("maml~../x", False), ("nope", False), (3, False),
                                      (None, False), ("maml/../maml", False)])
def test_only_registered_models_become_file_names(name, ok: bool) -> None:
    assert known_model(name) is ok


@pytest.mark.parametrize("selection, message", [
    ({"model": "../../../tmp/evil"}, r"names the model '../../../tmp/evil', which is no "
                                     r"registered algorithm"),
    ({"model": "maml", "seeds": {"maml": "0/../../x"}}, r"seeds.maml: '0/../../x' is not a seed"),
    ({"model": "maml", "seeds": {"maml": True}}, r"seeds.maml: True is not a seed"),
    ({"model": "maml", "seeds": {"maml": 0},
      "inner_steps": {"0": {"maml": {"rate": "1; rm -rf", "rank": 1}}}},
     r"inner_steps.0.maml: .* is not \{rate: steps, rank: steps\}"),
    ({"model": "maml", "seeds": {"maml": 0},
      "inner_steps": {"0": {"maml": {"rate": -1, "rank": 1}}}}, r"inner_steps.0.maml"),
    (["maml"], r"not an evaluation choice"),
])
def test_a_selection_is_checked_before_it_names_a_file(world, tmp_path: Path,  # noqa: F811
                                                       selection, message: str) -> None:
    path = tmp_path / "selection.json"
    path.write_text(json.dumps(selection))
    with pytest.raises(DataError, match=message):
        resolve(_params(world, model="auto"), world["validated"], world["models"], AS_OF,
                path)


def test_score_model_must_be_registered_even_unchecked(world) -> None:  # noqa: F811
    """verify-batch parses a manifest's score params without the registry cross-check."""
    with pytest.raises(DataError, match=r"'../x', which is no registered algorithm"):
        resolve(_params(world, model="../x"), world["validated"], world["models"], AS_OF)


# -- manifests turned against verify-batch ----------------------------------------------------

@pytest.fixture
def batch(world, tmp_path: Path) -> Path:  # noqa: F811
    return _run(world, tmp_path / "recs")


def _edit(manifest: dict, key: str, value) -> dict:
    out = json.loads(json.dumps(manifest))
    where, _, sub = key.partition("/")
    if sub:
        out[where][sub] = value
    else:
        out[where] = value
    return out


BAD_MANIFESTS = [
    ("dvc_md5/../../../../tmp/evil.parquet", "0" * 32, r"leaves the project"),
    ("inputs/../outside.parquet", "0" * 64, r"leaves the project"),
    ("selection_path", "../../metrics/selection.json", r"selection_path: .* leaves the project"),
    ("validated_dir", "data/../../x", r"validated_dir: .* leaves the project"),
    ("models_dir", "./models", r"models_dir: './models' leaves the project \(or is not a"),
    ("model", "", r"model: '' is not a path"),
    ("model", None, r"model: None is not a path"),
    ("git_commit", "--output=/tmp/pwned", r"git_commit: '--output=/tmp/pwned' is not a commit"),
    ("git_commit", "HEAD", r"git_commit: 'HEAD' is not a commit id"),
    ("git_commit", "a" * 39, r"is not a commit id"),
    ("model_name", "../../evil", r"model_name: '../../evil' is no registered algorithm"),
    ("model_sha256", "x" * 64, r"model_sha256: 'x+' is not a sha256"),
    ("as_of", "2024-02-30", r"as_of: '2024-02-30': day is out of range"),
    ("inputs", ["a"], r"inputs and dvc_md5 must be mappings"),
]


@pytest.mark.parametrize("key, value, message", BAD_MANIFESTS,
                         ids=[f"{k}={v!r}"[:40] for k, v, _ in BAD_MANIFESTS])
def test_verify_refuses_a_manifest_before_running_anything(batch: Path, monkeypatch, key: str,
                                                            value, message: str) -> None:
    manifest = read_json(batch / "manifest.json")
    (batch / "manifest.json").write_text(json.dumps(_edit(manifest, key, value)))

    def never(*args, **kwargs):
        raise AssertionError("ran something before refusing the manifest")

    for name in ("build_batch", "restored", "_changed_inputs"):
        monkeypatch.setattr(scoring_verify, name, never)
    monkeypatch.setattr(scoring_verify.subprocess, "run", never)
    with pytest.raises(VerifyError, match=message) as caught:
        stage.verify(batch)
    assert str(caught.value).startswith(f"{batch / 'manifest.json'}: ")    # which manifest


def test_verify_refuses_restoring_a_file_the_batch_did_not_read(batch: Path) -> None:
    manifest = read_json(batch / "manifest.json")
    bad = _edit(manifest, "dvc_md5/notes.txt", "0" * 32)
    with pytest.raises(VerifyError, match=r"dvc_md5\['notes.txt'\]: not a file the batch read"):
        check_manifest(bad, batch / "manifest.json")
    bad = _edit(manifest, f"dvc_md5/{manifest['model']}", "not-an-md5")
    with pytest.raises(VerifyError, match=r"is not an md5"):
        check_manifest(bad, batch / "manifest.json")
    bad = _edit(manifest, f"inputs/{next(iter(manifest['inputs']))}", "f" * 63)
    with pytest.raises(VerifyError, match=r"is not a sha256"):
        check_manifest(bad, batch / "manifest.json")
    with pytest.raises(VerifyError, match=r"not a manifest"):
        check_manifest(["x"], batch / "manifest.json")
    check_manifest(_edit(manifest, "git_commit", "0123456789abcdef" * 2 + "01234567"),
                   batch / "manifest.json")
    check_manifest(_edit(manifest, "git_commit", None), batch / "manifest.json")
    check_manifest(_edit(manifest, "selection_path", None), batch / "manifest.json")


def test_a_manifest_that_is_not_json_is_refused(batch: Path) -> None:
    (batch / "manifest.json").write_text("{not json")
    with pytest.raises(VerifyError, match=r"manifest.json: not JSON"):
        stage.verify(batch)


def test_restore_never_writes_outside_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "restore"
    root.mkdir()
    assert scoring_verify._inside(root, "data/x.parquet") == (root / "data/x.parquet").resolve()
    with pytest.raises(VerifyError, match="leaves the restore folder"):
        scoring_verify._inside(root, "../x.parquet")
    with pytest.raises(VerifyError, match="is not a commit id"):
        scoring_verify._from_git({"git_commit": "-p"}, "metrics/selection.json",
                                 root / "s.json")


def test_pinned_inputs_are_read_once(world, models: Path, tmp_path: Path) -> None:  # noqa: F811
    """pin copies the model's bytes and records every input's digests and identity."""
    inputs = resolve(_params(world), world["validated"], models, AS_OF)
    pinned = scoring_inputs.pin(inputs, tmp_path / "day")
    model = models / "seed0/maml.pt"
    assert Path(pinned.model_copy).read_bytes() == model.read_bytes()
    assert pinned.reads[str(model)].sha256 == sha256_file(model)
    assert set(pinned.reads) == {str(model), *map(str, inputs.inputs)}
    for path in inputs.inputs:
        assert (pinned.reads[str(path)].sha256, pinned.reads[str(path)].md5) == \
            file_digests(path)
    scoring_inputs.check_unchanged(pinned)                       # nothing moved
    assert inputs.read(model).sha256 == sha256_file(model)       # unpinned: read now


# -- what a batch records, and how it is checked (fast: the mutation tests run these) ---------

def test_the_manifest_says_what_the_batch_was_built_from(world, tmp_path: Path) -> None:  # noqa: F811
    import metarec
    from metarec.config import params_hash, to_dict
    from metarec.scoring.publish import git_commit

    out = _run(world, tmp_path / "recs")
    m = read_json(out / "manifest.json")
    params = _params(world, as_of=AS_OF)
    assert out == tmp_path / "recs" / AS_OF
    assert m["as_of"] == AS_OF and m["params"] == to_dict(params)
    assert m["params_hash"] == params_hash(params)
    assert m["validated_dir"] == str(world["validated"]) and m["models_dir"] == str(
        world["models"])
    assert m["model"] == str(world["models"] / "seed0/maml.pt") and m["model_name"] == "maml"
    assert m["seed"] == 0 and m["inner_steps"] is None and m["selection"] is None
    assert m["selection_path"] is None
    landing = str(world["landing"] / "2024-03-10.csv")
    tables = [str(world["validated"] / f"{t}.parquet")
              for t in ("interactions", "users", "items")]
    assert sorted(m["inputs"]) == sorted([*tables, landing])
    assert m["git_commit"] == git_commit() and m["metarec_version"] == metarec.__version__
    assert m["torch_version"] == torch.__version__
    assert m["rows"] == pq.read_metadata(out / "recommendations.parquet").num_rows > 0
    assert m["parquet_sha256"] == sha256_file(out / "recommendations.parquet")
    assert m["quarantine_sha256"] == sha256_file(out / "quarantine.parquet")
    assert m["landing_params"] == {"validate": to_dict(ValidateParams()),
                                   "format": to_dict(scoring_inputs.CANONICAL)}
    assert m["landing"]["rows_in"] == 1 and m["landing"]["rows_kept"] == 1
    assert {"users", "cold_users", "dynamic_users", "catalogue_items"} <= set(m)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "quarantine.parquet",
                                                     "recommendations.parquet"]
    assert stage.verify(out) == m                                # and it rebuilds to the byte


def test_a_batch_without_landing_files_records_none(world, tmp_path: Path) -> None:  # noqa: F811
    out = stage.run(_bare(world), ValidateParams(), IngestParams(),
                    world["validated"], world["models"], tmp_path / "recs", AS_OF)
    m = read_json(out / "manifest.json")
    assert m["landing"] is None and len(m["inputs"]) == 3
    assert pq.read_table(out / "quarantine.parquet").num_rows == 0


def test_a_selection_serves_its_model_seed_and_steps(world, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"model": "maml", "seeds": {"maml": 0},
                                "inner_steps": {"0": {"maml": {"rate": 2, "rank": 3}}}}))
    got = resolve(_params(world, model="auto", as_of=AS_OF), world["validated"],
                  world["models"], None, path)
    assert (got.model, got.seed, got.steps) == ("maml", 0, {"rate": 2, "rank": 3})
    assert got.params.as_of == AS_OF and got.selection_path == str(path)
    assert got.selection["model"] == "maml" and path in got.inputs
    assert got.model_path == world["models"] / "seed0" / "maml.pt"
    plain = resolve(_params(world), world["validated"], world["models"], "2024-03-09")
    assert plain.params.as_of == "2024-03-09" and plain.selection is None
    assert plain.selection_path is None and plain.steps is None and path not in plain.inputs


def test_resolve_names_what_is_missing(world, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(DataError, match=r"score.model is auto but the evaluation's choice is "
                                        r"missing; run `dvc repro evaluate`"):
        resolve(_params(world, model="auto"), world["validated"], world["models"], AS_OF,
                tmp_path / "none.json")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(DataError, match=r"empty.json: names no model"):
        resolve(_params(world, model="auto"), world["validated"], world["models"], AS_OF,
                tmp_path / "empty.json")
    with pytest.raises(DataError, match=r"interactions.parquet: missing; run `dvc repro "):
        resolve(_params(world), tmp_path, world["models"], AS_OF)
    with pytest.raises(DataError, match=r"no trained models \(expected seed<S>/ folders\)"):
        resolve(_params(world), world["validated"], tmp_path, AS_OF)


def test_the_served_seed(world, tmp_path: Path) -> None:  # noqa: F811
    from metarec.scoring.inputs import served_seed

    for name in ("seed3", "seed10", "seedx", "other"):
        (tmp_path / name).mkdir()
    params = _params(world)
    assert served_seed(params, None, "maml", tmp_path) == 3
    assert served_seed(params, {"seeds": {"maml": 7}}, "maml", tmp_path) == 7
    assert served_seed(params, {"seeds": {"ease": 7}}, "maml", tmp_path) == 3
    assert served_seed(_params(world, seed=5), {"seeds": {"maml": 7}}, "maml", tmp_path) == 5


def test_a_night_whose_rows_are_all_set_aside_fails(world, tmp_path: Path) -> None:  # noqa: F811
    from metarec.scoring.inputs import NightRejected, check_day

    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / f"{AS_OF}.csv").write_text("user_id,item_id,rating,timestamp\n"
                                          "z,i99,4,1710100000\nz,i01,9,1710100000\n")
    inputs = resolve(_bare(world, str(landing)), world["validated"],
                     world["models"], AS_OF)
    with pytest.raises(NightRejected) as caught:
        check_day(inputs, tmp_path / "day")
    msg = str(caught.value)
    assert msg.startswith(f"file {landing / (AS_OF + '.csv')}: every one of the night's 2 "
                          "rows was quarantined (")
    assert "no batch was written for this night" in msg
    assert caught.value.verdict["rows_in"] == 2 and caught.value.verdict["rows_kept"] == 0
    (landing / f"{AS_OF}.csv").write_text("user_id,item_id,rating,timestamp\n"
                                          "z,i01,4,1710100000\nz,i99,4,1710100000\n")
    ok = check_day(inputs, tmp_path / "day2")
    assert ok.checked == str(tmp_path / "day2") and ok.landing_verdict()["rows_kept"] == 1
    assert ok.landing_rows().num_rows == 1
    assert (tmp_path / "day2" / scoring_inputs.QUARANTINED).is_file()
    none = check_day(resolve(_bare(world), world["validated"],
                             world["models"], AS_OF), tmp_path / "day3")
    assert none.checked is None and none.landing_verdict() is None
    assert none.landing_rows() is None and none.model_copy is not None


def test_verify_names_a_modified_batch_and_changed_inputs(world, tmp_path: Path) -> None:  # noqa: F811
    out = _run(world, tmp_path / "recs")
    (out / "recommendations.parquet").write_bytes(b"tampered")
    with pytest.raises(VerifyError, match=r"not reproducible: .*recommendations.parquet was "
                                          r"modified after it was written \(sha256 "):
        stage.verify(out)
    with pytest.raises(VerifyError, match=r"not a batch \(manifest.json or "
                                          r"recommendations.parquet missing\)"):
        stage.verify(tmp_path)
    out = _run(world, tmp_path / "recs2")
    manifest = read_json(out / "manifest.json")
    validated = tmp_path / "validated"
    shutil.copytree(world["validated"], validated)
    moved = json.loads(json.dumps(manifest).replace(str(world["validated"]), str(validated)))
    first = next(iter(moved["inputs"]))
    moved["inputs"][first] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(moved))
    with pytest.raises(VerifyError, match=r"params do not match|inputs changed") as caught:
        stage.verify(out)
    assert "sha256" in str(caught.value) or "params" in str(caught.value)


def test_verify_restores_nothing_outside_a_dvc_project(world, tmp_path: Path,  # noqa: F811
                                                       monkeypatch) -> None:
    out = _run(world, tmp_path / "recs")
    manifest = read_json(out / "manifest.json")
    monkeypatch.chdir(tmp_path)
    assert scoring_verify._dvc_root(tmp_path) is None
    with pytest.raises(VerifyError, match=r"not a DVC project \(no .dvc folder above the "
                                          r"working directory\)"):
        with scoring_verify.restored(manifest, ["x: missing"]):
            pass
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "sub").mkdir()
    assert scoring_verify._dvc_root(tmp_path / "sub") == tmp_path.resolve()


# -- what users read in a batch and in verify-batch's answers (the mutation sample's gaps) ----

def _night(tmp_path: Path, *rows: str) -> Path:
    """A landing folder holding the night's file with ``rows`` (user,item,rating,timestamp)."""
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / f"{AS_OF}.csv").write_text("user_id,item_id,rating,timestamp\n"
                                          + "".join(f"{r}\n" for r in rows))
    return landing


GOOD, UNKNOWN_ITEM = "h,i11,5,1710100800", "z,i99,4,1710100000"


def test_the_landing_rows_set_aside_are_published_with_the_batch(world, tmp_path: Path,  # noqa: F811
                                                                  caplog) -> None:
    """quarantine.parquet holds the night's rejected rows (file, row, reason) and the
    manifest its digest; the log line names the model and the batch folder."""
    import logging

    landing = _night(tmp_path, GOOD, UNKNOWN_ITEM)
    caplog.set_level(logging.INFO, logger="metarec.score")
    out = stage.run(_bare(world, str(landing)), ValidateParams(), IngestParams(),
                    world["validated"], world["models"], tmp_path / "recs", AS_OF)
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert len(quarantine) == 1 and quarantine[0]["file"] == f"{AS_OF}.csv"
    assert quarantine[0]["item_id"] == "i99" and quarantine[0]["reason"]
    manifest = read_json(out / "manifest.json")
    assert manifest["quarantine_sha256"] == sha256_file(out / "quarantine.parquet")
    assert manifest["landing"]["rows_in"] == 2 and manifest["landing"]["rows_kept"] == 1
    users = manifest["users"]
    assert f"score: {users} users with maml -> {out}" in caplog.messages


def test_the_validate_rules_given_are_the_ones_applied(world, tmp_path: Path) -> None:  # noqa: F811
    """``validate.policy: fail`` stops the night at a bad landing row instead of setting it
    aside, and the rules are recorded in the manifest for verify-batch."""
    landing = _night(tmp_path, GOOD, UNKNOWN_ITEM)
    strict = ValidateParams(policy="fail")
    with pytest.raises(DataError, match=f"{AS_OF}.csv"):
        stage.run(_bare(world, str(landing)), strict, IngestParams(), world["validated"],
                  world["models"], tmp_path / "recs", AS_OF)
    assert not (tmp_path / "recs" / AS_OF).exists()
    (landing / f"{AS_OF}.csv").write_text(f"user_id,item_id,rating,timestamp\n{GOOD}\n")
    out = stage.run(_bare(world, str(landing)), ValidateParams(policy="fail", examples=2),
                    IngestParams(), world["validated"], world["models"], tmp_path / "recs",
                    AS_OF)
    from metarec.config import to_dict

    assert read_json(out / "manifest.json")["landing_params"]["validate"] == to_dict(
        ValidateParams(policy="fail", examples=2))


def test_a_batch_published_without_a_model_file_records_no_model_digest(
        world, tmp_path: Path) -> None:  # noqa: F811
    """Nothing pinned and no model file: the manifest records no model digest (verify-batch
    then reports the model as changed) instead of failing to publish."""
    from metarec.scoring.publish import publish_batch

    (tmp_path / "models" / "seed0").mkdir(parents=True)
    inputs = resolve(_bare(world), world["validated"], tmp_path / "models", AS_OF)
    out = publish_batch(inputs, [], {"users": 0}, tmp_path / "recs")
    manifest = read_json(out / "manifest.json")
    assert manifest["model_sha256"] is None and manifest["rows"] == 0
    assert manifest["model"] not in manifest["dvc_md5"]
    assert set(manifest["dvc_md5"]) == set(manifest["inputs"])


def test_resolve_names_the_file_at_fault(world, tmp_path: Path) -> None:  # noqa: F811
    import re

    path = tmp_path / "selection.json"
    path.write_text('["maml"]')
    with pytest.raises(DataError, match=rf"^file {re.escape(str(path))}: not an evaluation "):
        resolve(_params(world, model="auto"), world["validated"], world["models"], AS_OF, path)
    empty = tmp_path / "no_models"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"^file {re.escape(str(empty))}: no trained models"):
        resolve(_params(world), world["validated"], empty, AS_OF)


def test_the_pinned_folder_is_created_with_its_parents(world, tmp_path: Path) -> None:  # noqa: F811
    inputs = resolve(_params(world), world["validated"], world["models"], AS_OF)
    pinned = scoring_inputs.pin(inputs, tmp_path / "scratch" / "day")
    assert Path(pinned.model_copy).parent == tmp_path / "scratch" / "day"


def _git(*args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org",
                           *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch) -> Path:
    """A fresh git repository (no commit yet) as the working directory."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.chdir(root)
    _git("init", "-q")
    return root


def test_the_batch_records_the_commit_of_its_code(repo: Path) -> None:
    """A project without any commit records none (git would print 'HEAD', which verify-batch
    refuses as a commit id); after a commit, the commit's id."""
    from metarec.scoring.publish import git_commit

    assert git_commit() is None
    _git("commit", "-q", "--allow-empty", "-m", "first")
    assert git_commit() == _git("rev-parse", "HEAD")
    assert scoring_verify._COMMIT.match(git_commit())


def test_the_evaluation_choice_is_restored_from_the_batch_commit(repo: Path) -> None:
    """A changed metrics/selection.json comes back as it was at the batch's commit; without
    a recorded commit, or absent there, verify-batch says so."""
    (repo / "metrics").mkdir()
    (repo / "metrics/selection.json").write_text('{"model": "maml"}')
    _git("add", "metrics/selection.json")
    _git("commit", "-q", "-m", "choice")
    commit = _git("rev-parse", "HEAD")
    (repo / "metrics/selection.json").write_text('{"model": "ease"}')
    dst = repo / "restored.json"
    scoring_verify._from_git({"git_commit": commit}, "metrics/selection.json", dst)
    assert dst.read_text() == '{"model": "maml"}'
    for manifest in ({"git_commit": None}, {"git_commit": commit}):
        with pytest.raises(VerifyError, match=r"changed since the batch was written, and not "
                                              r"found in git at the batch's commit"):
            scoring_verify._from_git(manifest, "metrics/other.json", repo / "o.json")


def _rewrite(batch: Path, **changes) -> None:
    manifest = read_json(batch / "manifest.json")
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    (batch / "manifest.json").write_text(json.dumps(manifest))


def test_verify_names_bad_landing_params_by_key(batch: Path) -> None:
    manifest = read_json(batch / "manifest.json")
    landing = {**manifest["landing_params"], "validate": {"policy": "sometimes"}}
    _rewrite(batch, landing_params=landing)
    with pytest.raises(VerifyError, match=r"unreadable params: validate\.policy: 'sometimes' "
                                          r"is not one of"):
        stage.verify(batch)


def test_verify_names_the_manifest_keys_the_rebuild_records_differently(batch: Path) -> None:
    _rewrite(batch, metarec_version="0.0.0", users=10**6)
    with pytest.raises(VerifyError, match=r"manifest.json: the rebuild records different "
                                          r"metarec_version, users \(manifest edited\?\)$"):
        stage.verify(batch)


def test_a_rebuild_with_other_bytes_names_the_code_and_environment(batch: Path) -> None:
    """The batch's file is intact (its digest matches the manifest) but the rebuild differs:
    the answer names the commits and torch versions of then and now."""
    (batch / "recommendations.parquet").write_bytes(b"written by other code")
    _rewrite(batch, parquet_sha256=sha256_file(batch / "recommendations.parquet"))
    with pytest.raises(VerifyError) as caught:
        stage.verify(batch)
    msg = str(caught.value)
    assert "not reproducible: the rebuild gives different bytes" in msg
    assert f"torch {torch.__version__}, now {torch.__version__})" in msg


def test_a_landing_file_that_appeared_cannot_be_restored(world, tmp_path: Path,  # noqa: F811
                                                          monkeypatch) -> None:
    """A landing file dated on or before the batch's date that the batch did not read: no
    recorded version exists, so verify-batch refuses before restoring anything."""
    landing = _night(tmp_path, GOOD)
    out = stage.run(_bare(world, str(landing)), ValidateParams(), IngestParams(),
                    world["validated"], world["models"], tmp_path / "recs", AS_OF)
    (landing / "2024-03-09.csv").write_text(f"user_id,item_id,rating,timestamp\n{GOOD}\n")

    def never(*args, **kwargs):
        raise AssertionError("tried to restore or rebuild")

    monkeypatch.setattr(scoring_verify, "restored", never)
    monkeypatch.setattr(scoring_verify, "build_batch", never)
    with pytest.raises(VerifyError, match=r"(?s)cannot rebuild: inputs changed .*2024-03-09.csv: "
                                          r"landing file dated on or before the as-of date "
                                          r"appeared.*restore them with `dvc pull`"):
        stage.verify(out)


def test_a_changed_input_is_restored_by_its_recorded_md5(world, tmp_path: Path,  # noqa: F811
                                                         monkeypatch) -> None:
    """With the inputs' DVC addresses recorded, a changed input is restored (here: refused
    because this is no DVC project); a batch from before they were recorded cannot be."""
    validated = tmp_path / "validated"
    shutil.copytree(world["validated"], validated)
    out = stage.run(_bare(world), ValidateParams(), IngestParams(), validated, world["models"],
                    tmp_path / "recs", AS_OF)
    (validated / "users.parquet").unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VerifyError, match=r"(?s)users.parquet: missing.*and this is not a DVC "
                                          r"project"):
        stage.verify(out)
    _rewrite(out, dvc_md5=None)                       # a batch from before dvc_md5
    with pytest.raises(VerifyError, match=r"(?s)users.parquet: missing.*restore them with "
                                          r"`dvc pull`"):
        stage.verify(out)
