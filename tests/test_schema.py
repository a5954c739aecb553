"""The generic params machinery (schema.py): annotations drive the checks, each problem is
named by its dotted key, and the value checks parse as the code that uses the value will."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import pytest

from metarec import schema
from metarec.errors import ParamsError
from metarec.schema import (
    Keys,
    bounded,
    build,
    check_cron,
    check_encoding,
    check_ordered,
    check_separator,
    checked,
    instant,
    is_loopback,
    iso_date,
    params_hash,
    to_dict,
)


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = bounded(0.5, 0.0, 1.0)
    name: str = "x"


@dataclasses.dataclass(frozen=True)
class Algo:
    lam: tuple[float, ...] = bounded((1.0,), 0.0, nonempty=True)


@dataclasses.dataclass(frozen=True)
class Outer:
    SECTIONS: ClassVar[bool] = True

    n: int = bounded(3, 1, 10)
    pair: tuple[int, str] = (1, "a")
    many: tuple[int, ...] = ()
    maybe: float | None = None
    kind: Literal["a", "b"] = "a"
    flag: bool = False
    table: dict[str, int] = dataclasses.field(default_factory=dict)
    inner: Inner = dataclasses.field(default_factory=Inner)
    when: str | None = checked(None, schema.check_date)
    hidden: int = dataclasses.field(default=0, metadata={"internal": "set per run"})
    sections: Mapping[str, Any] = dataclasses.field(default_factory=dict,
                                                    metadata={"internal": "sections"})


SECTIONS = {"algo": Algo, "plain": None}


def test_every_annotation_is_parsed_and_converted() -> None:
    got = build(Outer, {"n": 4, "pair": [2, "b"], "many": [1, 2], "maybe": 3, "kind": "b",
                        "flag": True, "table": {"k": 1}, "inner": {"rate": 1},
                        "when": "2024-02-29", "algo": {"lam": [2, 3]}}, "", SECTIONS)
    assert got.n == 4 and got.pair == (2, "b") and got.many == (1, 2)
    assert got.maybe == 3.0 and type(got.maybe) is float and got.kind == "b" and got.flag
    assert got.table == {"k": 1} and got.inner == Inner(rate=1.0) and got.when == "2024-02-29"
    assert got.sections == {"algo": Algo(lam=(2.0, 3.0))}
    assert build(Outer, {}, "", SECTIONS).sections == {"algo": Algo()}
    assert build(Outer, {"maybe": None}, "").maybe is None


@pytest.mark.parametrize("raw, message", [
    ({"n": 0}, r"^n: must be between 1 and 10, got 0$"),
    ({"n": 11}, r"^n: must be between 1 and 10, got 11$"),
    ({"n": "3"}, r"^n: expected an integer, got '3'$"),
    ({"n": 2.0}, r"^n: expected an integer, got 2.0$"),
    ({"pair": [1]}, r"^pair: expected 2 values, got 1$"),
    ({"pair": "ab"}, r"^pair: expected a list, got 'ab'$"),
    ({"pair": [1, 2]}, r"^pair\[1\]: expected a string, got 2$"),
    ({"many": [1, "x"]}, r"^many\[1\]: expected an integer, got 'x'$"),
    ({"maybe": "x"}, r"^maybe: expected a number, got 'x'$"),
    ({"maybe": True}, r"^maybe: expected a number, got True$"),
    ({"kind": "c"}, r"^kind: 'c' is not one of 'a', 'b'$"),
    ({"flag": 1}, r"^flag: expected true or false, got 1$"),
    ({"table": [1]}, r"^table: expected a mapping, got \[1\]$"),
    ({"table": {"k": "v"}}, r"^table.k: expected an integer, got 'v'$"),
    ({"inner": 3}, r"^inner: expected a mapping, got int$"),
    ({"inner": {"rate": 2}}, r"^inner.rate: must be between 0 and 1, got 2.0$"),
    ({"inner": {"name": 1}}, r"^inner.name: expected a string, got 1$"),
    ({"inner": {"rat": 1}}, r"^unknown key\(s\) in section 'inner': rat \(known: name, rate\)$"),
    ({"hidden": 1}, r"^hidden is not a params.yaml key \(set per run\)$"),
    ({"algo": {"lam": []}}, r"^algo.lam: must list at least one value$"),
    ({"algo": {"lam": [-1]}}, r"^algo.lam: must be at least 0, got -1.0$"),
    ({"when": "2024-13-01"}, r"^when: '2024-13-01': month must be in 1..12$"),
    ({"nn": 1}, r"^unknown key\(s\): nn \(known: algo, flag, inner, kind, many, maybe, n, pair, "
                r"table, when\)$"),
])
def test_each_problem_names_its_key(raw: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        build(Outer, raw, "", SECTIONS)


def test_problems_of_nested_sections_are_all_listed() -> None:
    with pytest.raises(ParamsError) as caught:
        build(Outer, {"n": 0, "inner": {"rate": 5, "name": 2}, "algo": {"lam": []},
                      "zz": 1}, "", SECTIONS)
    assert caught.value.problems == [
        "unknown key(s): zz (known: algo, flag, inner, kind, many, maybe, n, pair, table, when)",
        "n: must be between 1 and 10, got 0", "inner.rate: must be between 0 and 1, got 5.0",
        "inner.name: expected a string, got 2", "algo.lam: must list at least one value"]
    assert str(caught.value).splitlines()[0] == "5 problems:"


def test_bounds_of_one_side_say_which() -> None:
    @dataclasses.dataclass(frozen=True)
    class Sides:
        lo: float = bounded(1.0, 0.5)
        hi: float = bounded(1.0, None, 2.0)
        free: float = bounded(1.0)

    with pytest.raises(ParamsError, match=r"^lo: must be at least 0.5, got 0.1$"):
        build(Sides, {"lo": 0.1}, "")
    with pytest.raises(ParamsError, match=r"^hi: must be at most 2, got 3.0$"):
        build(Sides, {"hi": 3}, "")
    assert build(Sides, {"lo": 0.5, "hi": 2, "free": -1e9}, "") == Sides(0.5, 2.0, -1e9)


def test_bounded_defaults_are_frozen_copies() -> None:
    @dataclasses.dataclass(frozen=True)
    class D:
        grid: tuple[int, ...] = bounded([1, 2])
        table: dict[str, int] = bounded({"a": 1})

    assert D().grid == (1, 2) and D().table == {"a": 1} and D().table is not D().table
    f = {x.name: x for x in dataclasses.fields(D)}["grid"]
    assert f.metadata["min"] is None and f.metadata["nonempty"] is False


def test_an_unsupported_annotation_is_a_bug_named_by_key() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd:
        x: set[int] = dataclasses.field(default_factory=set)

    with pytest.raises(ParamsError, match=r"^x: unsupported annotation"):
        build(Odd, {"x": [1]}, "")


def test_to_dict_and_the_params_hash() -> None:
    got = build(Outer, {"algo": {"lam": [2]}, "many": [3]}, "", SECTIONS)
    plain = to_dict(got)
    assert plain["algo"] == {"lam": [2.0]} and "sections" not in plain
    assert plain["many"] == [3] and plain["inner"] == {"rate": 0.5, "name": "x"}
    assert list(plain)[-1] == "algo" and plain["hidden"] == 0
    assert to_dict({"a": (1, 2)}) == {"a": [1, 2]}
    assert params_hash(got) == params_hash(build(Outer, {"algo": {"lam": [2]}, "many": [3]},
                                                 "", SECTIONS))
    assert params_hash(got) != params_hash(build(Outer, {"many": [3]}, "", SECTIONS))
    assert len(params_hash(Inner())) == 64
    assert Keys("a", "b").names == ("a", "b")


# -- value checks ------------------------------------------------------------------------------

def test_dates_and_instants() -> None:
    assert iso_date("2024-02-29", "k") == dt.date(2024, 2, 29)
    for bad in ("2023-02-29", "2024-2-1", " 2024-02-01", "2024-02-01T00:00", None, 20240201):
        with pytest.raises(ParamsError, match=r"^k: "):
            iso_date(bad, "k")
    assert instant("1970-01-02", "k") == 86_400
    assert instant("1970-01-01T02:00:00+02:00", "k") == 0
    assert instant("1970-01-01T00:00:01Z", "k") == 1
    for bad in ("NaT", "soon", "", "1970-13-01"):
        with pytest.raises(ParamsError, match=r"^k: not a date/time: "):
            instant(bad, "k")


@pytest.mark.parametrize("cron", ["* * * * *", "0 2 * * *", "*/5 1-5/2 1,15,31 JAN-dec SUN",
                                  "59 23 31 12 7", "0 0 1 1 0", "0-59 0-23 1-31 1-12 0-7"])
def test_good_crons(cron: str) -> None:
    check_cron(cron, "k")


@pytest.mark.parametrize("cron, message", [
    ("* * * *", r"expected 5 fields .*, got 4$"), ("* * * * * *", r"got 6$"),
    ("60 * * * *", r"'60' is not a valid minute \(0-59\)$"),
    ("* -1 * * *", r"'-1' is not a valid hour"), ("* * 32 * *", r"'32' is not a valid day of "
                                                               r"month \(1-31\)"),
    ("* * * 0 *", r"'0' is not a valid month \(1-12, or a name\)"),
    ("* * * * 5-1", r"'5-1' is not a valid day of week \(0-7, or a name\)"),
    ("*/x * * * *", r"bad step 'x' in the minute field"),
    ("1/0 * * * *", r"bad step '0'"), ("1,,2 * * * *", r"'' is not a valid minute"),
    ("* * * jan-foo *", r"'jan-foo' is not a valid month"),
])
def test_bad_crons(cron: str, message: str) -> None:
    with pytest.raises(ParamsError, match=r"^k: .*" + message):
        check_cron(cron, "k")


def test_encodings_separators_scales_and_hosts() -> None:
    for good in ("utf-8", "UTF8", "latin-1", "cp1252", "utf-16"):
        check_encoding(good, "k")
    with pytest.raises(ParamsError, match=r"^k: unknown text encoding 'klingon'"):
        check_encoding("klingon", "k")
    with pytest.raises(ParamsError, match=r"^k: 'zlib' is not a text encoding"):
        check_encoding("zlib", "k")
    for good in (",", ";", "\t", "::", "|"):
        check_separator(good, "k")
    for bad, shown in (("\r", r"'\\r'"), ('a"', "'\"'"), (",\n", r"'\\n'")):
        with pytest.raises(ParamsError, match=f"^k: .* holds {shown}, which CSV uses"):
            check_separator(bad, "k")
    with pytest.raises(ParamsError, match=r"^k: must not be empty$"):
        check_separator("", "k")
    check_ordered((0.0, 1.0), "k")
    with pytest.raises(ParamsError, match=r"^k: the first value must be below the second, "
                                          r"got \[1.0, 1.0\]$"):
        check_ordered((1.0, 1.0), "k")
    for host in ("localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.org", "", "192.168.1.1"):
        assert not is_loopback(host), host


def test_a_key_left_out_takes_its_declared_default() -> None:
    """params.yaml may omit any key: the field's declared default applies, never None."""
    @dataclasses.dataclass(frozen=True)
    class Defaults:
        n: int = bounded(3, 1, 10)
        rate: float = bounded(0.5, 0.0, 1.0)

    assert build(Defaults, {}, "") == Defaults() == Defaults(3, 0.5)
    assert build(Defaults, {"rate": 1}, "").n == 3
    got = build(Outer, {}, "")
    assert got.n == 3 and got.inner.rate == 0.5 and got == Outer()


def test_a_dict_default_keeps_its_field_rules() -> None:
    """A mapping-valued field keeps the metadata its declaration gives (here: set by the code,
    not by params.yaml), like every other field."""
    @dataclasses.dataclass(frozen=True)
    class WithTable:
        table: dict[str, int] = bounded({"a": 1}, internal="set per run")

    with pytest.raises(ParamsError, match=r"^table is not a params.yaml key \(set per run\)$"):
        build(WithTable, {"table": {"a": 2}}, "")
    assert build(WithTable, {}, "").table == {"a": 1}


def test_a_sectioned_object_without_sections_is_shaped_like_params_yaml() -> None:
    """No algorithm section configured: to_dict still leaves out the internal ``sections``
    field (params.yaml has no such key), so the hash covers the same data as the file."""
    got = build(Outer, {}, "", {})
    assert got.sections == {}
    plain = to_dict(got)
    assert "sections" not in plain and set(plain) == {
        "n", "pair", "many", "maybe", "kind", "flag", "table", "inner", "when", "hidden"}


def test_the_params_hash_is_the_sha256_of_compact_sorted_json() -> None:
    """Checkpoints and manifests written by earlier versions record this hash: its recipe
    (sorted keys, no spaces) must not change, or every old batch would fail verify-batch."""
    import hashlib

    blob = b'{"name":"x","rate":0.5}'
    assert params_hash(Inner()) == hashlib.sha256(blob).hexdigest()
