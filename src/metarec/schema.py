"""Parsing nested params mappings into frozen dataclasses, with types and ranges checked.

Generic machinery behind :mod:`metarec.config`: annotations drive the checks (Literal choices,
unions with None, tuples of fixed or any length, dicts, numbers, booleans), ``bounded`` fields
add ranges, a dataclass with ``SECTIONS = True`` takes extra keys parsed by the dataclasses of
a ``sections`` map (the algorithms' own params) into its ``sections`` field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any, Literal

from metarec.errors import ParamsError


@dataclasses.dataclass(frozen=True)
class Keys:
    """``Annotated[Section, Keys("a", "b")]`` on a stage's ``run``: it reads only these keys
    of the section (their values may be whole sub-sections); :mod:`metarec.dag` lists just
    those as the stage's DVC params."""

    names: tuple[str, ...]

    def __init__(self, *names: str) -> None:
        object.__setattr__(self, "names", tuple(names))


def bounded(default: Any, lo: float | None = None, hi: float | None = None, *,
            nonempty: bool = False, **meta: Any) -> Any:
    """A dataclass field whose value (or every element of a list value) must lie in
    [lo, hi]; ``nonempty`` lists must hold at least one element. Checked at parse time."""
    metadata = {**meta, "min": lo, "max": hi, "nonempty": nonempty}
    if isinstance(default, (list, tuple, dict)):
        frozen = tuple(default) if not isinstance(default, dict) else dict(default)
        return field(default_factory=lambda: frozen, metadata=metadata)
    return field(default=default, metadata=metadata)


def _coerce(value: Any, tp: Any, key: str, sections: Mapping[str, type] | None = None) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__}")
        return build(tp, value, key, sections)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ParamsError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ParamsError(f"{key}: expected {len(args)} values, got {len(value)}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in pairs)
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    raise ParamsError(f"{key}: unsupported annotation {tp!r}")


def _check_bounds(f: dataclasses.Field, value: Any, key: str) -> None:
    """Apply a :func:`bounded` field's range and emptiness rules to a parsed value."""
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    values = value if isinstance(value, tuple) else (value,)
    if f.metadata.get("nonempty") and isinstance(value, tuple) and not value:
        raise ParamsError(f"{key}: must list at least one value")
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                   else f"at least {lo:g}" if lo is not None else f"at most {hi:g}")
            raise ParamsError(f"{key}: must be {rng}, got {v!r}")


def build(cls: type, raw: dict[str, Any], prefix: str,
           sections: Mapping[str, type] | None = None) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    owned = {n for n, sec in (sections or {}).items() if sec is not None}
    own = {k: v for k, v in raw.items() if not (getattr(cls, "SECTIONS", False) and k in owned)}
    unknown = sorted(set(own) - set(fields))
    if unknown:
        where = f" in section {prefix!r}" if prefix else ""
        known = sorted({n for n, f in fields.items() if "internal" not in f.metadata}
                       | owned if getattr(cls, "SECTIONS", False) else fields)
        raise ParamsError(f"unknown key(s){where}: {', '.join(unknown)} "
                          f"(known: {', '.join(known)})")
    for name in own:
        if "internal" in fields[name].metadata:
            raise ParamsError(f"{prefix}.{name} is not a params.yaml key "
                              f"({fields[name].metadata['internal']})")
    kwargs = {}
    for name, value in own.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, sections)
        _check_bounds(fields[name], kwargs[name], key)
    if getattr(cls, "SECTIONS", False) and sections:
        kwargs["sections"] = {
            name: _coerce(raw.get(name) or {}, section, f"{prefix}.{name}", sections)
            for name, section in sorted(sections.items()) if section is not None}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A params object (or section) as plain JSON-able data, shaped like params.yaml (the
    algorithm sections of ``train`` appear as ``train.<name>``; ``train.seed`` is kept)."""
    if getattr(obj, "SECTIONS", False):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
               if f.name != "sections"}
        return {**out, **{k: to_dict(v) for k, v in sorted(obj.sections.items())}}
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def params_hash(obj: Any) -> str:
    """sha256 of a params object's canonical JSON: recorded in checkpoints and manifests."""
    blob = json.dumps(to_dict(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
