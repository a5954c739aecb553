"""Parsing nested params mappings into frozen dataclasses, with types and ranges checked.

Generic machinery behind :mod:`metarec.config`: annotations drive the checks (Literal choices,
unions with None, tuples of fixed or any length, dicts, numbers, booleans), ``bounded`` fields
add ranges, a dataclass with ``SECTIONS = True`` takes extra keys parsed by the dataclasses of
a ``sections`` map (the algorithms' own params) into its ``sections`` field.
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
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
    if isinstance(default, dict):        # a fresh copy each: never one dict shared
        return field(default_factory=lambda: dict(default), metadata=metadata)
    if isinstance(default, (list, tuple)):
        frozen = tuple(default)
        return field(default_factory=lambda: frozen, metadata=metadata)
    return field(default=default, metadata=metadata)


def checked(default: Any, check: Callable[[Any, str], None], **meta: Any) -> Any:
    """A dataclass field whose parsed value (when not None) must pass ``check(value, key)``,
    which raises :class:`ParamsError` naming the key: dates, cron strings, encodings."""
    return field(default=default, metadata={**meta, "check": check})


# --------------------------------------------------------------------------------------------
# value checks: each parses the value the way the code that uses it will, at load time

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def iso_date(value: str, key: str) -> dt.date:
    """A YYYY-MM-DD string as a real calendar date (2023-02-30 is refused)."""
    if not isinstance(value, str) or not _DATE.match(value):
        raise ParamsError(f"{key}: {value!r} is not a YYYY-MM-DD date")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ParamsError(f"{key}: {value!r}: {exc}") from exc


def instant(value: str, key: str) -> int:
    """A date or date-time (ISO 8601; naive = UTC) as epoch seconds."""
    import pandas as pd  # the parser the validate stage has always used; loaded on demand

    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ParamsError(f"{key}: not a date/time: {value!r}") from exc
    if ts is pd.NaT:
        raise ParamsError(f"{key}: not a date/time: {value!r}")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.timestamp())


def check_instant(value: str, key: str) -> None:
    instant(value, key)


def check_date(value: str, key: str) -> None:
    iso_date(value, key)


# cron: five fields, each a list of *, N, N-M, with an optional /STEP; names for months and
# weekdays. This is the portable core that Prefect's scheduler accepts too (its vendored
# croniter adds extensions, such as L and #, that metarec does not need).
_CRON_FIELDS = (("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
                ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug",
                                  "sep", "oct", "nov", "dec")),
                ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")))


def _cron_value(text: str, lo: int, names: tuple[str, ...]) -> int | None:
    if text.isdigit():
        return int(text)
    low = text.lower()
    return names.index(low) + lo if low in names else None


def check_cron(value: str, key: str) -> None:
    """A five-field cron string (minute hour day-of-month month day-of-week)."""
    parts = value.split()
    if len(parts) != 5:
        raise ParamsError(f"{key}: {value!r} is not a cron string: expected 5 fields "
                          "(minute hour day-of-month month day-of-week), got "
                          f"{len(parts)}")
    for text, (name, lo, hi, names) in zip(parts, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            span, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) < 1):
                raise ParamsError(f"{key}: {value!r}: bad step {step!r} in the {name} field")
            if span == "*":
                continue
            first, _, last = span.partition("-")
            ends = [_cron_value(first, lo, names)]
            if last:
                ends.append(_cron_value(last, lo, names))
            if any(e is None or not lo <= e <= hi for e in ends) or ends[0] > ends[-1]:
                raise ParamsError(f"{key}: {value!r}: {item!r} is not a valid {name} "
                                  f"({lo}-{hi}{', or a name' if names else ''})")


def check_encoding(value: str, key: str) -> None:
    """A text encoding Python can decode (``latin-1``, ``cp1252``, ...)."""
    try:
        info = codecs.lookup(value)
    except LookupError as exc:
        raise ParamsError(f"{key}: unknown text encoding {value!r} (e.g. utf-8, latin-1, "
                          "cp1252)") from exc
    if not getattr(info, "_is_text_encoding", True):      # rot13, zlib: not text codecs
        raise ParamsError(f"{key}: {value!r} is not a text encoding (e.g. utf-8, latin-1)")


def check_separator(value: str, key: str) -> None:
    """A field or list separator: not empty, and no quote or line break (they would split
    rows and quoted fields)."""
    if not value:
        raise ParamsError(f"{key}: must not be empty")
    bad = sorted({c for c in value if c in '"\r\n'})
    if bad:
        raise ParamsError(f"{key}: {value!r} holds {', '.join(map(repr, bad))}, which CSV "
                          "uses for quoting and rows")


def check_ordered(value: tuple[float, ...], key: str) -> None:
    """A (low, high) pair with low < high."""
    if not value[0] < value[1]:
        raise ParamsError(f"{key}: the first value must be below the second, got "
                          f"{list(value)}")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): reachable from this machine
    only. Any other name or address (0.0.0.0 included) may be reachable from others."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        if not math.isfinite(value):
            raise ParamsError(f"{key}: must be a finite number, got {value!r}")
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
    """``cls`` from the mapping ``raw`` (keys under ``prefix``); raises one
    :class:`ParamsError` listing every problem of every key, nested sections included."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    owned = {n for n, sec in (sections or {}).items() if sec is not None}
    own = {k: v for k, v in raw.items() if not (getattr(cls, "SECTIONS", False) and k in owned)}
    problems: list[str] = []
    unknown = sorted(set(own) - set(fields))
    if unknown:
        where = f" in section {prefix!r}" if prefix else ""
        known = sorted({n for n, f in fields.items() if "internal" not in f.metadata}
                       | owned if getattr(cls, "SECTIONS", False) else fields)
        problems.append(f"unknown key(s){where}: {', '.join(unknown)} "
                        f"(known: {', '.join(known)})")
    kwargs = {}
    for name, value in own.items():
        if name not in fields:
            continue
        key = f"{prefix}.{name}" if prefix else name
        if "internal" in fields[name].metadata:
            problems.append(f"{key} is not a params.yaml key "
                            f"({fields[name].metadata['internal']})")
            continue
        try:
            kwargs[name] = _coerce(value, hints[name], key, sections)
            _check_bounds(fields[name], kwargs[name], key)
            check = fields[name].metadata.get("check")
            if check is not None and kwargs[name] is not None:
                check(kwargs[name], key)
        except ParamsError as exc:
            problems += exc.problems
    if getattr(cls, "SECTIONS", False) and sections:
        kwargs["sections"] = {}
        for name, section in sorted(sections.items()):
            if section is None:
                continue
            try:
                kwargs["sections"][name] = _coerce(raw.get(name) or {}, section,
                                                   f"{prefix}.{name}" if prefix else name,
                                                   sections)
            except ParamsError as exc:
                problems += exc.problems
    if problems:
        raise ParamsError(problems=problems)
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
