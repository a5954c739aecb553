"""The one loader of params.yaml: parse every section, check every value, before any stage runs.

Entry points (the CLI, the flows, benchmarks) call :func:`load_params`; stages receive only
the typed sections they need. Besides types and ranges (:mod:`metarec.config`), this checks
what spans keys: algorithm names against the registry (each algorithm's ``train.<name>``
section parsed by its own dataclass), what an algorithm requires, and the few rules that tie
two keys together. A mistake fails here, naming the key and the allowed values, with exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from metarec import algorithms
from metarec.config import Params, parse_params
from metarec.data.sources import multilingual
from metarec.data.text import USE_DIM, USE_MULTILINGUAL
from metarec.errors import ParamsError
from metarec.schema import instant, is_loopback


def overlaid(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Raw params ``base`` with ``overlay``'s keys replaced, section by section: a shipped
    params file (``benchmarks/params/``) names only the keys that differ from params.yaml."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = (overlaid(base[key], value) if isinstance(value, dict)
                    and isinstance(base.get(key), dict) else value)
    return out


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, parse and check ``path``; raises :class:`ParamsError` naming the key."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    try:
        params = parse(raw)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from exc
    return params


def parse(raw: dict[str, Any] | None) -> Params:
    """:func:`metarec.config.parse_params` with the algorithm sections, then cross-checks."""
    params = parse_params(raw, algorithms.param_sections())
    check(params)
    return params


def check(params: Params) -> None:
    """Rules that span keys; one :class:`ParamsError` lists every broken rule, each naming
    the keys involved."""
    problems: list[str] = []
    t = params.train
    for key, kind in (("algorithms", "meta"), ("baselines", "baseline")):
        names = getattr(t, key)
        valid = algorithms.names(kind)
        problems += [f"train.{key}: unknown {name!r} (valid: {', '.join(valid)})"
                     for name in names if name not in valid]
        if len(set(names)) != len(names):
            problems.append(f"train.{key}: lists an algorithm twice: {list(names)}")
    chosen = set(t.algorithms) | set(t.baselines)
    if not problems:
        try:
            algorithms.fit_order(sorted(chosen))     # every requirement is fitted too
        except ParamsError as exc:
            problems += exc.problems
    if params.ingest.source == "synthetic":
        try:
            multilingual.check(params.ingest.synthetic)
        except ParamsError as exc:
            problems += exc.problems
    e = params.episodes
    if t.text_ablation and e.text_encoder == "none":
        problems.append("train.text_ablation: there is no text to leave out; name an encoder "
                        "in episodes.text_encoder (e.g. hashed) or set it to false")
    if e.text_encoder == USE_MULTILINGUAL and e.text_dim > USE_DIM:
        problems.append(f"episodes.text_dim: {e.text_dim} exceeds the {USE_DIM} numbers "
                        f"{USE_MULTILINGUAL} gives per text; set it to at most {USE_DIM}")
    if abs(sum(e.split_fractions) - 1.0) > 1e-6:
        problems.append(f"episodes.split_fractions: must sum to 1, got "
                        f"{list(e.split_fractions)}")
    if e.melu_min_ratings > e.melu_max_ratings:
        problems.append("episodes.melu_min_ratings must not exceed melu_max_ratings "
                        f"({e.melu_min_ratings} > {e.melu_max_ratings})")
    label, thr = params.ingest.table.label, e.relevance_threshold
    if params.ingest.source == "table" and label == "binary" and thr is not None and thr > 1.0:
        problems.append(f"episodes.relevance_threshold: {thr} marks nothing relevant for "
                        "binary labels (0/1); use null (any interaction) or a value <= 1")
    m = params.model
    if m.interaction == "mlp" and not m.hidden:
        problems.append("model.hidden: interaction mlp needs at least one hidden layer")
    if m.warm_start == "svd" and not m.item_id_embedding:
        problems.append("model.warm_start: svd starts the item id vectors, and "
                        "model.item_id_embedding is false; set warm_start: none or "
                        "item_id_embedding: true")
    s = params.score
    if s.model != "auto" and s.model not in chosen:
        problems.append(f"score.model: {s.model!r} is not trained (valid: auto, "
                        f"{', '.join(sorted(chosen))})")
    if s.seed != "auto" and s.seed not in t.seeds:
        problems.append(f"score.seed: {s.seed} is not trained (train.seeds: "
                        f"{list(t.seeds)}; or auto)")
    v = params.validate
    if v.max_timestamp is not None and \
            instant(v.min_timestamp, "") >= instant(v.max_timestamp, ""):
        problems.append(f"validate.min_timestamp {v.min_timestamp!r} must be before "
                        f"validate.max_timestamp {v.max_timestamp!r}")
    b = params.backtest
    if b.from_date is not None and b.to_date is not None and b.to_date < b.from_date:
        problems.append(f"backtest.to_date {b.to_date} is before backtest.from_date "
                        f"{b.from_date}")
    p = params.prefect
    if not is_loopback(p.host) and not p.open_to_network:
        problems.append(f"prefect.host: {p.host!r} is not a loopback address: the Prefect "
                        "server has no authentication, so anyone who can reach it could read "
                        "and start runs; use 127.0.0.1, or set prefect.open_to_network: true "
                        "on a network you trust")
    if problems:
        raise ParamsError(problems=problems)
