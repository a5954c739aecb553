"""The pipeline's dependencies, derived from the code and the params themselves.

(:mod:`metarec.pipeline` holds them against ``dvc.yaml``.)

For every stage of ``dvc.yaml``:

- **code**: the transitive closure of the ``metarec`` modules its entry point
  (``metarec.stages.<stage>``) imports, at module level or inside functions (read from the
  source with :mod:`ast`, nothing is executed). A package that discovers its modules at run
  time (``pkgutil.iter_modules(__path__)``, the algorithm registry) depends on every module;
- **params, per key**: every key of the sections its ``run`` takes (by their annotated types;
  ``Annotated[Section, Keys(...)]`` narrows a section to the keys named), less the keys marked
  output-neutral (``neutral`` in the field's metadata: a knob that changes how fast, never
  what is written, such as ``train.workers``), so such a knob reruns nothing;
- **data named by params**: the files and folders a section names as inputs (its
  ``inputs()``: the user's own log and feature tables, a local MovieLens copy, a predefined
  split, the landing folder), listed after the stage's fixed inputs with a ``# from params``
  mark, so that an in-place edit of the user's data reruns exactly what reads it.

"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import typing
from functools import cache
from pathlib import Path
from typing import Any

import yaml

import metarec
from metarec import config
from metarec.schema import Keys

PACKAGE_DIR = Path(metarec.__file__).resolve().parent
SRC = PACKAGE_DIR.parent
STAGES = ("ingest", "validate", "episodes", "train", "evaluate", "score", "backtest")
_DISCOVERS = re.compile(r"pkgutil\.iter_modules\(__path__\)")


def module_file(name: str) -> Path | None:
    """The file of module ``metarec.x.y`` (a module or a package ``__init__``), or None."""
    parts = name.split(".")
    if parts[0] != "metarec":
        return None
    base = SRC.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parents(name: str) -> list[str]:
    """``metarec.a.b`` -> [metarec, metarec.a]: packages whose ``__init__`` an import runs."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def direct_imports(path: Path) -> frozenset[str]:
    """Names of the ``metarec`` modules ``path`` imports (anywhere in the file)."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    package = _module_name(path) if path.name == "__init__.py" else \
        _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            for alias in node.names:   # ``from pkg import submodule``
                if module_file(f"{base}.{alias.name}") is not None:
                    found.add(f"{base}.{alias.name}")
    if _DISCOVERS.search(source) and path.name == "__init__.py":
        found.update(f"{_module_name(path)}.{p.stem}" for p in path.parent.glob("*.py")
                     if p.name != "__init__.py")
    return frozenset(n for n in found if module_file(n) is not None)


def closure(module: str) -> list[Path]:
    """Every file of ``metarec`` that importing ``module`` (and calling into it) can run."""
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        todo.extend(direct_imports(path))
        todo.extend(_parents(name))
    files = {module_file(n) for n in seen}
    return sorted(p for p in files if p is not None)


def code_deps(stage: str) -> list[str]:
    """The code dependencies of ``stage`` as dvc.yaml lists them (``src/metarec/...``)."""
    root = SRC.parent.resolve()
    return [str(p.resolve().relative_to(root)) for p in closure(f"metarec.stages.{stage}")]


def _sections(stage: str) -> list[tuple[str, type, tuple[str, ...] | None]]:
    """(params.yaml section, dataclass, the keys read or None for all) for each section the
    stage's ``run`` takes."""
    import importlib

    run = importlib.import_module(f"metarec.stages.{stage}").run
    hints = typing.get_type_hints(run, include_extras=True)
    names = {tp: name for name, tp in typing.get_type_hints(config.Params).items()}
    out = []
    for param in inspect.signature(run).parameters:
        tp, keys = hints.get(param), None
        if typing.get_origin(tp) is typing.Annotated:
            tp, *extra = typing.get_args(tp)
            keys = next((e.names for e in extra if isinstance(e, Keys)), None)
        if tp in names:
            out.append((names[tp], tp, keys))
    return out


def _fields(tp: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(tp) if "internal" not in f.metadata]


def params_deps(stage: str, raw: dict[str, Any] | None = None) -> list[str]:
    """The params keys ``stage`` reads, as dvc.yaml lists them (``section.key``): every key
    of its sections but the output-neutral ones, and for ``train`` each algorithm's own
    section. With ``raw`` (params.yaml as parsed), only the keys it holds: DVC refuses a
    listed key that params.yaml lacks, and a key left to its default is no DVC param until
    params.yaml names it (then the stage's check asks for ``metarec dag --write``)."""
    from metarec import algorithms

    out = []
    for name, tp, keys in _sections(stage):
        own = [f.name for f in _fields(tp)
               if "neutral" not in f.metadata and (keys is None or f.name in keys)]
        if tp is config.TrainParams:
            own += sorted(n for n, sec in algorithms.param_sections().items()
                          if sec is not None)
        given = None if raw is None else (raw.get(name) or {})
        out += [f"{name}.{k}" for k in own if given is None or k in given]
    return out


def data_deps(stage: str, params: config.Params) -> dict[str, str]:
    """{path: params key} of the files and folders the stage's sections name as inputs (a
    section the stage reads only a few keys of, such as the landing format from ``ingest``,
    adds none)."""
    out: dict[str, str] = {}
    for name, _, keys in _sections(stage):
        if keys is None:
            for key, path in getattr(params, name).inputs().items():
                out.setdefault(path, key)
    return out


def _keys(tp: type, prefix: str, sections: dict[str, type | None]) -> list[tuple[str, str]]:
    """(dotted key, attribute name) of every leaf key of section type ``tp``."""
    out = []
    for f in _fields(tp):
        hint = typing.get_type_hints(tp)[f.name]
        if dataclasses.is_dataclass(hint):
            out += _keys(hint, f"{prefix}.{f.name}", {})
        else:
            out.append((f"{prefix}.{f.name}", f.name))
    for name, sec in sections.items():
        if sec is not None:
            out += _keys(sec, f"{prefix}.{name}", {})
    return out


def unread_keys(stage: str) -> list[str]:
    """Keys of the stage's sections that no file of its code closure reads (dead params)."""
    from metarec import algorithms

    text = "\n".join(p.read_text(encoding="utf-8") for p in closure(f"metarec.stages.{stage}"))
    dead = []
    for name, tp, keys in _sections(stage):
        extra = algorithms.param_sections() if tp is config.TrainParams else {}
        for key, attr in _keys(tp, name, extra):
            if keys is not None and key.split(".")[1] not in keys:
                continue
            if not re.search(rf"\.{attr}\b", text):
                dead.append(key)
    return dead


# ---------------------------------------------------------------------------------------------
# dvc.yaml


def load_params_file(params_yaml: Path) -> tuple[config.Params, dict[str, Any]]:
    from metarec.params import parse

    raw = yaml.safe_load(params_yaml.read_text(encoding="utf-8")) or {}
    return parse(raw), raw


def derive(stage: str, params_yaml: Path) -> dict[str, Any]:
    """What ``stage``'s entry in dvc.yaml must list: code, params keys, data named by params."""
    params, raw = load_params_file(params_yaml)
    return {"code": code_deps(stage), "params": params_deps(stage, raw),
            "data": data_deps(stage, params)}


def until(stage: str) -> tuple[str, ...]:
    """The pipeline's stages up to ``stage``, in order (what a flow runs to reach it)."""
    return STAGES[:STAGES.index(stage) + 1]
