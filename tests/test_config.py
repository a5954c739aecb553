"""params.yaml parsing: typos and wrong types fail loudly, with the dotted key."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from metarec import algorithms
from metarec.config import Params, TrainParams, params_hash, parse_params
from metarec.errors import ParamsError
from metarec.params import load_params, parse

ROOT = Path(__file__).resolve().parents[1]


def _leaves(tp: type, sections: dict) -> set[str]:
    """Dotted keys of every (non-internal) field of a params dataclass, algorithm sections
    of ``train`` included."""
    out = set()
    for f in dataclasses.fields(tp):
        if "internal" in f.metadata:
            continue
        hint = typing.get_type_hints(tp)[f.name]
        if dataclasses.is_dataclass(hint):
            out |= {f"{f.name}.{k}" for k in _leaves(hint, {})}
        else:
            out.add(f.name)
    for name, sec in sections.items():
        if sec is not None:
            out |= {f"{name}.{k}" for k in _leaves(sec, {})}
    return out


def test_params_yaml_documents_every_knob_with_a_typed_comment() -> None:
    """Every key the code knows is in params.yaml, and every leaf line says (type) meaning."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    sections = algorithms.param_sections()

    def flat(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v and k not in (
                "user_features", "item_features") else {f"{prefix}{k}"}
        return out

    known = set()
    for f in dataclasses.fields(Params):
        tp = typing.get_type_hints(Params)[f.name]
        known |= {f"{f.name}.{k}" for k in _leaves(tp, sections if tp is TrainParams else {})}
    assert flat(raw) == known
    for line in (ROOT / "params.yaml").read_text(encoding="utf-8").splitlines():
        if re.match(r"^\s+\w+:\s*[^#\s]", line):
            assert re.search(r"# \((str|int|float|bool|list|dict)[^)]*\) \S", line), line


def test_algorithm_sections_parse_into_their_own_classes() -> None:
    p = load_params(ROOT / "params.yaml")
    for name, cls in algorithms.param_sections().items():
        if cls is not None:
            assert isinstance(p.train.sections[name], cls), name
    assert set(p.train.algorithms) <= set(algorithms.names("meta"))
    assert set(p.train.baselines) <= set(algorithms.names("baseline"))


@pytest.mark.parametrize(("raw", "message"), [
    ({"episodes": {"query_sise": 10}}, r"unknown key\(s\) in section 'episodes': query_sise"),
    ({"trian": {}}, r"unknown key\(s\): trian"),
    ({"train": {"inner_steps": "five"}}, r"train.inner_steps: expected an integer"),
    ({"train": {"inner_steps": True}}, r"train.inner_steps: expected an integer"),
    ({"episodes": {"protocol": "random"}}, r"episodes.protocol: 'random' is not one of"),
    ({"episodes": {"split_fractions": [0.7, 0.3]}}, r"split_fractions: expected 3 values"),
    ({"ingest": {"synthetic": {"users": 1.5}}}, r"ingest.synthetic.users: expected an integer"),
    ({"train": {"seed": 3}}, r"train.seed is not a params.yaml key \(set per run from "),
    ({"train": {"max_steps": -1}}, r"train.max_steps: must be at least 0, got -1"),
    ({"episodes": {"support_sizes": []}}, r"episodes.support_sizes: must list at least one"),
    ({"episodes": {"support_sizes": [3, 0]}}, r"episodes.support_sizes: must be at least 1"),
    ({"evaluate": {"bootstrap_confidence": 1.5}},
     r"evaluate.bootstrap_confidence: must be between 0.5 and 0.999, got 1.5"),
    ({"train": {"ridge": {"lamda": 3}}}, r"unknown key\(s\) in section 'train.ridge': lamda"),
    ({"train": {"reptile": {"mode": "sgd"}}}, r"train.reptile.mode: 'sgd' is not one of"),
    ({"train": {"ease": {"lam": [10, -1]}}}, r"train.ease.lam: must be at least"),
    ({"train": {"algorithms": ["mamll"]}},
     r"train.algorithms: unknown 'mamll' \(valid: fomaml, maml, metadropout, metasgd"),
    ({"train": {"baselines": ["maml"]}}, r"train.baselines: unknown 'maml' \(valid: "),
    ({"train": {"baselines": ["finetune"]}}, r"finetune is fitted on top of pretrain"),
    ({"episodes": {"split_fractions": [0.5, 0.2, 0.2]}}, r"split_fractions: must sum to 1"),
    ({"score": {"model": "ease"}, "train": {"baselines": ["pretrain"]}},
     r"score.model: 'ease' is not trained"),
])
def test_bad_params_are_rejected_with_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse(raw)


def test_a_bad_algorithm_name_fails_at_load_before_any_stage(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from metarec.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("train:\n  algorithms: [mamll]\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["ingest", "--params", str(params),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "train.algorithms: unknown 'mamll'" in result.output
    assert "maml" in result.output and not (tmp_path / "out").exists()


def test_params_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  max_steps: [1\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_params_hash_follows_the_values() -> None:
    a, b = parse_params({}), parse_params({"score": {"top_k": 7}})
    assert params_hash(a.score) == params_hash(parse_params({}).score)
    assert params_hash(a.score) != params_hash(b.score)


def test_params_yaml_holds_every_key_at_its_default_value() -> None:
    """The shipped params.yaml names every key (with its comment) at the value the dataclass
    defaults to, so a key left out of a user's params.yaml means what the shipped one says."""
    import dataclasses

    import yaml

    from metarec import algorithms
    from metarec.config import Params, to_dict

    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    defaults = to_dict(Params(train=dataclasses.replace(
        Params().train, sections={n: sec() for n, sec in algorithms.param_sections().items()
                                  if sec is not None})))
    defaults["train"].pop("seed")                       # internal: set per run from seeds

    def walk(want: dict, got: dict, prefix: str) -> list[str]:
        out = []
        for key, value in want.items():
            if key not in got:
                out.append(f"{prefix}{key}: missing from params.yaml")
            elif isinstance(value, dict) and value and isinstance(got[key], dict):
                out += walk(value, got[key], f"{prefix}{key}.")
            elif (list(got[key]) if isinstance(got[key], tuple) else got[key]) != value \
                    and not (isinstance(value, float) and got[key] == value):
                out.append(f"{prefix}{key}: params.yaml {got[key]!r} != default {value!r}")
        return out

    # the dates of this project's data (the MovieLens timeline), not behaviour: no default
    dates = {"score.as_of", "backtest.from_date", "backtest.to_date"}
    assert [p for p in walk(defaults, raw, "") if p.split(":")[0] not in dates] == []
