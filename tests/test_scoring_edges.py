"""The nightly batch at its edges, on test_score's tiny world: a model swapped in while a
batch is scored, an input replaced mid-run, manifests turned against verify-batch, model
names that would become paths, leftovers of killed runs beside the batch."""

from __future__ import annotations

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
    with pytest.raises(VerifyError, match=message):
        stage.verify(batch)


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
