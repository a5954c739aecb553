"""params.yaml parsing: typos and wrong types fail loudly, with the dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from metarec.config import load_params, params_hash, parse_params
from metarec.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_params_parse_into_typed_sections() -> None:
    p = load_params(ROOT / "params.yaml")
    assert p.episodes.support_sizes == (1, 3, 5, 10, 20)       # lists become tuples
    assert isinstance(p.train.outer_lr, float) and p.train.seeds == (0, 1, 2)
    assert p.ingest.table.rating_scale == (1.0, 5.0)


@pytest.mark.parametrize(("raw", "message"), [
    ({"episodes": {"query_sise": 10}}, r"unknown key\(s\) in section 'episodes': query_sise"),
    ({"trian": {}}, r"unknown key\(s\): trian"),
    ({"train": {"inner_steps": "five"}}, r"train.inner_steps: expected an integer"),
    ({"train": {"inner_steps": True}}, r"train.inner_steps: expected an integer"),
    ({"episodes": {"protocol": "random"}}, r"episodes.protocol: 'random' is not one of"),
    ({"episodes": {"split_fractions": [0.7, 0.3]}}, r"split_fractions: expected 3 values"),
    ({"ingest": {"synthetic": {"users": 1.5}}}, r"ingest.synthetic.users: expected an integer"),
    ({"train": {"seed": 3}}, r"train.seed is not a params.yaml key \(set per run from "),
])
def test_bad_params_are_rejected_with_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


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
