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
     r"train.algorithms: unknown 'mamll' \(valid: encoder, fomaml, maml, metadropout"),
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


# -- every value checked when params.yaml is loaded (issue 36) ----------------------------------

@pytest.mark.parametrize(("raw", "message"), [
    ({"train": {"outer_lr": float("nan")}}, r"train.outer_lr: must be a finite number, got nan"),
    ({"train": {"inner_lr": float("inf")}}, r"train.inner_lr: must be a finite number, got inf"),
    ({"evaluate": {"bootstrap_confidence": float("nan")}},
     r"evaluate.bootstrap_confidence: must be a finite number"),
    ({"train": {"ease": {"lam": [10.0, float("-inf")]}}}, r"train.ease.lam\[1\]: must be a finite"),
    ({"episodes": {"relevance_threshold": float("nan")}}, r"episodes.relevance_threshold: must"),
    ({"score": {"as_of": "2023-02-30"}}, r"score.as_of: '2023-02-30': day is out of range"),
    ({"score": {"as_of": "22/04/1998"}}, r"score.as_of: '22/04/1998' is not a YYYY-MM-DD date"),
    ({"backtest": {"from_date": "1998-13-01"}}, r"backtest.from_date: '1998-13-01': month must"),
    ({"backtest": {"to_date": "tomorrow"}}, r"backtest.to_date: 'tomorrow' is not a YYYY-MM-DD"),
    ({"prefect": {"replay_start": "1998-4-1"}}, r"prefect.replay_start: '1998-4-1' is not a"),
    ({"validate": {"min_timestamp": "the nineties"}},
     r"validate.min_timestamp: not a date/time: 'the nineties'"),
    ({"validate": {"max_timestamp": "NaT"}}, r"validate.max_timestamp: not a date/time: 'NaT'"),
    ({"prefect": {"nightly_cron": "0 2 * *"}}, r"prefect.nightly_cron: '0 2 \* \*' is not a cron "
                                               r"string: expected 5 fields"),
    ({"prefect": {"retrain_cron": "0 24 * * 0"}}, r"'24' is not a valid hour \(0-23\)"),
    ({"prefect": {"retrain_cron": "61 3 * * 0"}}, r"'61' is not a valid minute"),
    ({"prefect": {"retrain_cron": "0 3 0 * *"}}, r"'0' is not a valid day of month \(1-31\)"),
    ({"prefect": {"retrain_cron": "0 3 * 13 *"}}, r"'13' is not a valid month \(1-12, or a name"),
    ({"prefect": {"retrain_cron": "0 3 * * 8"}}, r"'8' is not a valid day of week"),
    ({"prefect": {"retrain_cron": "0 3 * * fri-mon"}}, r"'fri-mon' is not a valid day of week"),
    ({"prefect": {"retrain_cron": "*/0 3 * * *"}}, r"bad step '0' in the minute field"),
    ({"prefect": {"retrain_cron": "0 3 * * funday"}}, r"'funday' is not a valid day of week"),
    ({"ingest": {"table": {"encoding": "utf-9"}}},
     r"ingest.table.encoding: unknown text encoding 'utf-9'"),
    ({"ingest": {"table": {"encoding": "rot13"}}},
     r"ingest.table.encoding: 'rot13' is not a text encoding"),
    ({"ingest": {"table": {"csv_delimiter": ""}}}, r"ingest.table.csv_delimiter: must not be"),
    ({"ingest": {"table": {"csv_delimiter": '"'}}}, r"ingest.table.csv_delimiter: '\"' holds"),
    ({"ingest": {"table": {"list_separator": "\n"}}}, r"ingest.table.list_separator: '\\n' holds"),
    ({"ingest": {"table": {"rating_scale": [5, 1]}}},
     r"ingest.table.rating_scale: the first value must be below the second, got \[5.0, 1.0\]"),
    ({"ingest": {"table": {"rating_scale": [3, 3]}}}, r"ingest.table.rating_scale: the first"),
    ({"model": {"item_id_embedding": False}},
     r"model.warm_start: svd starts the item id vectors, and model.item_id_embedding is false"),
    ({"validate": {"min_timestamp": "2000-01-01", "max_timestamp": "1999-12-31T23:00:00"}},
     r"validate.min_timestamp '2000-01-01' must be before validate.max_timestamp"),
    ({"backtest": {"from_date": "1998-03-09", "to_date": "1998-03-08"}},
     r"backtest.to_date 1998-03-08 is before backtest.from_date 1998-03-09"),
    ({"score": {"seed": 7}}, r"score.seed: 7 is not trained \(train.seeds: \[0, 1, 2\]"),
    ({"prefect": {"host": "0.0.0.0"}},
     r"prefect.host: '0.0.0.0' is not a loopback address: .* anyone who can reach it could read "
     r"and start runs; .* prefect.open_to_network: true"),
    ({"prefect": {"host": "metarec.example.org"}}, r"prefect.host: 'metarec.example.org' is not"),
])
def test_each_bad_value_is_refused_at_load(raw: dict, message: str) -> None:
    """Each value that used to load and fail later (or never) fails when params load."""
    with pytest.raises(ParamsError, match=message):
        parse(raw)


@pytest.mark.parametrize("raw", [
    {"model": {"item_id_embedding": False, "warm_start": "none"}},
    {"prefect": {"host": "localhost"}}, {"prefect": {"host": "127.0.0.2"}},
    {"prefect": {"host": "::1"}},
    {"prefect": {"host": "0.0.0.0", "open_to_network": True}},
    {"validate": {"min_timestamp": "1995-01-01T00:00:00+02:00", "max_timestamp": "2030-01-01"}},
    {"backtest": {"from_date": "1998-03-09", "to_date": "1998-03-09"}},
    {"ingest": {"table": {"encoding": "latin-1", "csv_delimiter": "::", "rating_scale": [0, 1]}}},
    {"score": {"seed": 2, "as_of": "2024-02-29"}},
])
def test_good_values_still_load(raw: dict) -> None:
    parse(raw)


GOOD_CRONS = ["0 2 * * *", "0 3 * * 0", "0 3 * * 7", "*/15 0-6 1,15 jan-jun mon-fri",
              "5 4 * * sun", "0 0 1 */2 *", "0-59/5 * * * *", "30 23 31 DEC SAT"]


@pytest.mark.parametrize("cron", GOOD_CRONS)
def test_a_cron_params_accept_is_one_prefect_schedules(cron: str) -> None:
    """What params load accepts, Prefect's scheduler accepts too (the deployments would
    otherwise fail when `metarec serve` registers them)."""
    from prefect._internal.schemas.validators import validate_cron_string

    parse({"prefect": {"nightly_cron": cron}})
    assert validate_cron_string(cron) == cron


def test_one_error_lists_every_problem_with_its_key(tmp_path: Path) -> None:
    """A params file with five mistakes in four sections: one error, five lines, each keyed;
    the CLI prints them all and exits 2 before any stage runs."""
    from typer.testing import CliRunner

    from metarec.cli import app

    raw = {"train": {"outer_lr": float("nan"), "inner_stepz": 3},
           "score": {"as_of": "1998-02-30"}, "prefect": {"nightly_cron": "every night"},
           "ingest": {"table": {"rating_scale": [5, 1]}}}
    with pytest.raises(ParamsError) as caught:
        parse(raw)
    problems = caught.value.problems
    assert len(problems) == 5, problems
    assert sorted(p.split(":")[0] for p in problems) == [
        "ingest.table.rating_scale", "prefect.nightly_cron", "score.as_of", "train.outer_lr",
        "unknown key(s) in section 'train'"]
    assert str(caught.value).startswith("5 problems:\n  ")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    result = CliRunner().invoke(app, ["ingest", "--params", str(params),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    for key in ("ingest.table.rating_scale", "inner_stepz", "train.outer_lr", "score.as_of",
                "prefect.nightly_cron"):
        assert key in out, key
    assert not (tmp_path / "out").exists()


def test_cross_key_problems_are_listed_together() -> None:
    with pytest.raises(ParamsError) as caught:
        parse({"model": {"item_id_embedding": False}, "prefect": {"host": "0.0.0.0"},
               "backtest": {"from_date": "1998-03-09", "to_date": "1998-03-01"}})
    assert [p.split(" ")[0].rstrip(":") for p in caught.value.problems] == [
        "model.warm_start", "backtest.to_date", "prefect.host"]
