"""The pipeline's code and params dependencies, derived from the code itself.

A stage's code dependencies are the transitive closure of the ``metarec`` modules its entry
point (``metarec.stages.<stage>``) imports, at module level or inside functions (read from the
source with :mod:`ast`, nothing is executed). A package that discovers its modules at run time
(``pkgutil.iter_modules(__path__)``, the algorithm registry) depends on every module in it.
A stage's params are the sections its ``run`` takes (by their annotated types); every key of
those sections must be read somewhere in its code closure.

``metarec dag --check`` compares both with ``dvc.yaml`` and names what is missing or extra;
``metarec dag --write`` rewrites the code dependencies of every stage in ``dvc.yaml`` in place.
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


def _sections(stage: str) -> list[tuple[str, type]]:
    """(params.yaml section, dataclass) for each section the stage's ``run`` takes."""
    import importlib

    run = importlib.import_module(f"metarec.stages.{stage}").run
    hints = typing.get_type_hints(run)
    names = {tp: name for name, tp in typing.get_type_hints(config.Params).items()}
    out = []
    for param in inspect.signature(run).parameters:
        tp = hints.get(param)
        if tp in names:
            out.append((names[tp], tp))
    return out


def params_deps(stage: str) -> list[str]:
    """The params sections ``stage`` reads, as dvc.yaml lists them."""
    return [name for name, _ in _sections(stage)]


def _keys(tp: type, prefix: str, sections: dict[str, type | None]) -> list[tuple[str, str]]:
    """(dotted key, attribute name) of every leaf key of section type ``tp``."""
    out = []
    for f in dataclasses.fields(tp):
        if "internal" in f.metadata:
            continue
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
    for name, tp in _sections(stage):
        extra = algorithms.param_sections() if tp is config.TrainParams else {}
        for key, attr in _keys(tp, name, extra):
            if not re.search(rf"\.{attr}\b", text):
                dead.append(key)
    return dead


def declared(dvc_yaml: Path) -> dict[str, dict[str, list[str]]]:
    """{stage: {"code": [...], "params": [...]}} as ``dvc.yaml`` declares them."""
    spec = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    out = {}
    for stage, body in spec.items():
        deps = [d for d in body.get("deps", []) if str(d).startswith("src/")]
        params = [p if isinstance(p, str) else next(iter(p)) for p in body.get("params", [])]
        out[stage] = {"code": deps, "params": params}
    return out


def check(dvc_yaml: Path) -> list[str]:
    """Problems: code or params dependencies missing from or extra in ``dvc.yaml``."""
    have = declared(dvc_yaml)
    problems = []
    for stage in STAGES:
        if stage not in have:
            problems.append(f"{stage}: stage missing from {dvc_yaml}")
            continue
        for kind, want in (("code", code_deps(stage)),
                           ("params", params_deps(stage))):
            got = have[stage][kind]
            for item in sorted(set(want) - set(got)):
                problems.append(f"{stage}: missing {kind} dependency {item}")
            for item in sorted(set(got) - set(want)):
                problems.append(f"{stage}: extra {kind} dependency {item}")
        problems += [f"{stage}: params key {k} is read by none of its code"
                     for k in unread_keys(stage)]
    return problems


def write(dvc_yaml: Path) -> None:
    """Rewrite each stage's ``src/`` dependencies in ``dvc.yaml`` (other lines untouched)."""
    lines = dvc_yaml.read_text(encoding="utf-8").splitlines(keepends=True)
    out: list[str] = []
    stage: str | None = None
    in_deps = False
    for line in lines:
        m = re.match(r"^  ([A-Za-z_][\w-]*):\s*$", line)
        if m:
            stage, in_deps = m.group(1), False
        if re.match(r"^    deps:\s*$", line):
            in_deps = True
            out.append(line)
            if stage in STAGES:
                out += [f"      - {d}\n" for d in code_deps(stage)]
            continue
        if in_deps and re.match(r"^      - src/", line):
            continue
        if in_deps and not re.match(r"^      - ", line):
            in_deps = False
        out.append(line)
    dvc_yaml.write_text("".join(out), encoding="utf-8")


def stages_importing(path: Path) -> list[str]:
    """The stages whose code closure holds ``path``."""
    path = path.resolve()
    return [s for s in STAGES if path in {p.resolve() for p in closure(f"metarec.stages.{s}")}]


def describe() -> dict[str, Any]:
    return {s: {"code": code_deps(s), "params": params_deps(s)} for s in STAGES}
