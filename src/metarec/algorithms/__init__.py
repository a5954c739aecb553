"""The algorithm registry: every meta-learner and baseline is one module of this package.

A module defines one class (a :class:`~metarec.algorithms.base.Algorithm`) and decorates it with
:func:`register`. :func:`discover` imports every module of this package, so adding an algorithm
is adding a module: the train, evaluate and score stages ask the registry (:func:`get`,
:func:`names`, :func:`param_sections`) and never compare algorithm names.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from metarec.errors import ParamsError

if TYPE_CHECKING:
    from metarec.models.base import Algorithm

_REGISTRY: dict[str, type[Algorithm]] = {}
_DISCOVERED = False


def register(cls: type[Any]) -> type[Any]:
    """Class decorator: make ``cls`` known under ``cls.name`` (once)."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"algorithm {name!r} registered twice ({_REGISTRY[name]} and {cls})")
    _REGISTRY[name] = cls
    return cls


def discover() -> dict[str, type[Algorithm]]:
    """Import every module of this package (each registers its algorithm); name -> class."""
    global _DISCOVERED
    if not _DISCOVERED:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            importlib.import_module(f"{__name__}.{info.name}")
        _DISCOVERED = True
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Algorithm]:
    """The class of algorithm ``name``; :class:`ParamsError` naming the valid ones if unknown."""
    known = discover()
    if name not in known:
        raise ParamsError(f"unknown algorithm {name!r} (valid: {', '.join(known)})")
    return known[name]


def names(kind: str | None = None) -> list[str]:
    """Registered names, optionally only those of ``kind`` ("meta" or "baseline")."""
    return [n for n, cls in discover().items() if kind is None or cls.kind == kind]


def param_sections() -> dict[str, type | None]:
    """name -> the dataclass of its ``train.<name>`` params section (None: it has none)."""
    return {n: cls.Params for n, cls in discover().items()}


def requirements(name: str) -> list[str]:
    """Every algorithm ``name`` is fitted on top of, directly or through another (no order)."""
    out: list[str] = []
    todo = list(get(name).requires)
    while todo:
        needed = todo.pop()
        if needed not in out:
            out.append(needed)
            todo.extend(get(needed).requires)
    return out


def fit_order(names: list[str]) -> list[str]:
    """``names`` ordered so that each comes after everything it requires among them (the
    given order otherwise); a requirement missing from ``names`` is a :class:`ParamsError`
    naming it."""
    for name in names:
        for needed in requirements(name):
            if needed not in names:
                raise ParamsError(f"train: {name} is fitted on top of {needed}; add {needed} "
                                  "to train.baselines or remove " + name)
    todo, done = list(names), []
    while todo:
        ready = next(n for n in todo if all(r in done for r in get(n).requires))
        todo.remove(ready)
        done.append(ready)
    return done
