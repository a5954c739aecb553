"""``dvc.yaml`` held against what :mod:`metarec.dag` derives from the code and params.

``metarec dag --check`` (:func:`check`) names every code, params or params-named data
dependency missing from or extra in ``dvc.yaml``; ``metarec dag --write`` (:func:`write`)
rewrites the derived lists (commands, fixed inputs and outputs stay as written); the flows
and ``make run`` bring it up to date before any stage runs (:func:`sync`); a stage refuses
to run while it does not track what the stage reads (:func:`check_stage`). The paths the
stage commands name are the one place the project's paths are written (:func:`stage_options`).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from metarec.dag import STAGES, data_deps, derive, load_params_file, unread_keys
from metarec.errors import DataError, ParamsError

FROM_PARAMS = "# from params: "


def _read(dvc_yaml: Path) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, set[str]]]:
    """(header comment lines, stages as parsed, {stage: deps marked as named by params})."""
    text = dvc_yaml.read_text(encoding="utf-8")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    stages = yaml.safe_load(text)["stages"]
    marked: dict[str, set[str]] = {}
    stage = None
    for line in text.splitlines():
        m = re.match(r"^  ([A-Za-z_][\w-]*):\s*$", line)
        if m:
            stage = m.group(1)
        m = re.match(r"^      - (.+?)\s+" + re.escape(FROM_PARAMS.strip()), line)
        if m and stage is not None:
            marked.setdefault(stage, set()).add(m.group(1).strip().strip("'\""))
    return header, stages, marked


def _compare(stage: str, body: dict[str, Any], marked: set[str], params_yaml: Path,
             kinds: tuple[str, ...]) -> list[str]:
    """What ``body`` (a stage of dvc.yaml) lacks or has too much of, for ``kinds``."""
    want = derive(stage, params_yaml)
    deps = [str(d) for d in body.get("deps", [])]
    got = {"code": [d for d in deps if d.startswith("src/")],
           "params": [p if isinstance(p, str) else next(iter(p))
                      for p in body.get("params", [])],
           "data": sorted(marked)}
    problems = []
    for kind in kinds:
        items = sorted(want[kind])
        for item in sorted(set(items) - set(got[kind])):
            why = f" (params: {want['data'][item]})" if kind == "data" else ""
            problems.append(f"{stage}: missing {kind} dependency {item}{why}")
        for item in sorted(set(got[kind]) - set(items)):
            problems.append(f"{stage}: extra {kind} dependency {item}")
    return problems


def check(dvc_yaml: Path, params_yaml: Path | None = None) -> list[str]:
    """Problems: code, params or params-named data dependencies missing from or extra in
    ``dvc.yaml``; params keys no code reads."""
    params_yaml = params_yaml or dvc_yaml.with_name("params.yaml")
    _, have, marked = _read(dvc_yaml)
    problems = []
    for stage in STAGES:
        if stage not in have:
            problems.append(f"{stage}: stage missing from {dvc_yaml}")
            continue
        problems += _compare(stage, have[stage], marked.get(stage, set()), params_yaml,
                             ("code", "params", "data"))
        problems += [f"{stage}: params key {k} is read by none of its code"
                     for k in unread_keys(stage)]
    return problems


def check_stage(stage: str, params_yaml: Path) -> None:
    """Before a stage runs: when ``params_yaml`` has a ``dvc.yaml`` beside it, its entry
    must list the params keys and the data files params name (your own log, a predefined
    split, the landing folder) that this stage reads; otherwise DVC would not see a change to
    them. Raises :class:`ParamsError` saying which command mends it."""
    dvc_yaml = params_yaml.with_name("dvc.yaml")
    if not dvc_yaml.is_file():
        return
    _, have, marked = _read(dvc_yaml)
    if stage not in have:
        return
    problems = _compare(stage, have[stage], marked.get(stage, set()), params_yaml,
                        ("params", "data"))
    if problems:
        raise ParamsError(f"{dvc_yaml} does not match {params_yaml}: " + "; ".join(problems)
                          + ". Run `metarec dag --write` (make run does it), then run the "
                          "stage again, so that DVC tracks what the stage reads")


def _item(value: Any, indent: str) -> list[str]:
    """One list entry of dvc.yaml: a path, or a path with options (``cache: false``)."""
    if isinstance(value, dict):
        (path, opts), = value.items()
        lines = [f"{indent}- {path}:"]
        lines += [f"{indent}    {k}: {json.dumps(v)}" for k, v in (opts or {}).items()]
        return lines
    return [f"{indent}- {value}"]


def _fold(cmd: str, width: int = 86) -> list[str]:
    """A long command as the lines of a folded YAML scalar, each option with its value."""
    lines: list[str] = []
    for word in re.split(r" (?=--)", cmd):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def render(header: list[str], stages: dict[str, dict[str, Any]], params_yaml: Path,
           marked: dict[str, set[str]]) -> str:
    """dvc.yaml with every derived list regenerated from the code and ``params_yaml``."""
    lines = [*header, "stages:"]
    for i, (stage, body) in enumerate(stages.items()):
        if i:
            lines.append("")
        lines.append(f"  {stage}:")
        want = derive(stage, params_yaml) if stage in STAGES else None
        for key, value in body.items():
            if key == "cmd" and len(str(value)) > 80:
                lines.append("    cmd: >-")
                lines += [f"      {part}" for part in _fold(str(value))]
            elif key in ("desc", "cmd", "frozen", "always_changed"):
                lines.append(f"    {key}: {value}")
            elif key == "deps" and want is not None:
                fixed = [str(d) for d in value if not str(d).startswith("src/")
                         and str(d) not in marked.get(stage, set())]
                lines.append("    deps:")
                lines += [f"      - {d}" for d in [*want["code"], *fixed]]
                lines += [f"      - {path}  {FROM_PARAMS}{k}" for path, k in want["data"].items()
                          if path not in fixed]
            elif key == "params" and want is not None:
                lines.append("    params:")
                lines += [f"      - {k}" for k in want["params"]]
            else:
                lines.append(f"    {key}:")
                for v in value:
                    lines += _item(v, "      ")
        if want is not None and "params" not in body and want["params"]:
            lines += ["    params:", *(f"      - {k}" for k in want["params"])]
    return "\n".join(lines) + "\n"


def write(dvc_yaml: Path, params_yaml: Path | None = None) -> None:
    """Rewrite ``dvc.yaml``'s derived lists in place (commands, fixed inputs, outputs and
    comments above the stages stay as written)."""
    header, stages, marked = _read(dvc_yaml)
    text = render(header, stages, params_yaml or dvc_yaml.with_name("params.yaml"), marked)
    dvc_yaml.write_text(text, encoding="utf-8")


def sync(dvc_yaml: Path, params_yaml: Path | None = None) -> list[str]:
    """Bring ``dvc.yaml``'s derived lists up to date with the code and params (what ``make
    run`` and the flows do before any stage runs); returns what changed (empty: nothing). A
    data file params name that does not exist is a :class:`DataError` naming the key."""
    params_yaml = params_yaml or dvc_yaml.with_name("params.yaml")
    params, _ = load_params_file(params_yaml)
    for stage in STAGES:
        for path, key in data_deps(stage, params).items():
            if not (dvc_yaml.parent / path).exists():
                raise DataError(f"{key} names a file or folder that does not exist; fix the "
                                "path in params.yaml", file=path)
    header, stages, marked = _read(dvc_yaml)
    changed = [problem for stage in STAGES if stage in stages
               for problem in _compare(stage, stages[stage], marked.get(stage, set()),
                                       params_yaml, ("code", "params", "data"))]
    if changed:
        dvc_yaml.write_text(render(header, stages, params_yaml, marked), encoding="utf-8")
    return changed


def stage_options(root: Path, stage: str) -> dict[str, str]:
    """``--option value`` pairs of ``stage``'s command in ``root/dvc.yaml``."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    if stage not in spec:
        raise ParamsError(f"{root / 'dvc.yaml'}: no stage {stage!r}")
    words = shlex.split(str(spec[stage]["cmd"]))
    return {w.lstrip("-"): words[i + 1] for i, w in enumerate(words[:-1])
            if w.startswith("--") and not words[i + 1].startswith("--")}
