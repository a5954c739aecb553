"""params.yaml, parsed once into frozen, typed dataclasses.

Every section of params.yaml is one dataclass below. Unknown keys and values of the wrong type
are rejected with the dotted key in the message, so a typo fails loudly instead of silently
falling back to a default. Stages receive only their own section.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from metarec.errors import ParamsError

# --------------------------------------------------------------------------------------------
# ingest


@dataclass(frozen=True)
class TableSource:
    """The user's own interaction log (Parquet or CSV) and optional feature tables."""

    interactions: str | None = None
    format: Literal["auto", "parquet", "csv"] = "auto"
    csv_delimiter: str = ","
    encoding: str = "utf-8"
    user_col: str = "user_id"
    item_col: str = "item_id"
    rating_col: str | None = "rating"
    label: Literal["explicit", "count", "binary"] = "explicit"
    timestamp_col: str = "timestamp"
    timestamp_unit: Literal["s", "ms", "us", "ns", "iso"] = "s"
    rating_scale: tuple[float, float] = (1.0, 5.0)
    users: str | None = None
    items: str | None = None
    user_features: dict[str, str] = field(default_factory=dict)
    item_features: dict[str, str] = field(default_factory=dict)
    list_separator: str = "|"


@dataclass(frozen=True)
class SyntheticSource:
    """Seeded generator with planted latent structure (for tests and benchmarks)."""

    users: int = 2000
    items: int = 500
    interactions: int = 100_000
    factors: int = 8
    noise: float = 0.5
    drift: float = 0.0
    days: int = 365
    genres: int = 12
    seed: int = 0


@dataclass(frozen=True)
class IngestParams:
    source: Literal["movielens-100k", "movielens-1m", "movielens-latest", "table",
                    "synthetic"] = "movielens-100k"
    path: str | None = None
    cache_dir: str = ".cache/metarec"
    allow_download: bool = True
    table: TableSource = field(default_factory=TableSource)
    synthetic: SyntheticSource = field(default_factory=SyntheticSource)


# --------------------------------------------------------------------------------------------
# validate


@dataclass(frozen=True)
class ValidateParams:
    """Row policy and plausibility bounds of the validate stage (dates naive = UTC)."""

    policy: Literal["fail", "quarantine"] = "quarantine"
    min_timestamp: str = "1990-01-01"
    max_timestamp: str | None = None
    examples: int = 5


# --------------------------------------------------------------------------------------------
# episodes


@dataclass(frozen=True)
class EpisodesParams:
    protocol: Literal["temporal", "melu", "predefined"] = "temporal"
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    support_sizes: tuple[int, ...] = (1, 3, 5, 10, 20)
    query_size: int = 10
    train_draw: Literal["random", "temporal"] = "random"
    train_draws: int = 4
    melu_min_ratings: int = 13
    melu_max_ratings: int = 100
    melu_query_size: int = 10
    melu_new_item_quantile: float = 0.8
    predefined_path: str | None = None
    seed: int = 0


# --------------------------------------------------------------------------------------------
# model and training (meta-learning core)


@dataclass(frozen=True)
class ModelParams:
    interaction: Literal["mlp", "dot"] = "dot"
    embedding_dim: int = 32
    hidden: tuple[int, ...] = (64, 64)
    item_id_embedding: bool = True
    adapt: Literal["decision", "all", "head", "user"] = "user"


@dataclass(frozen=True)
class TrainParams:
    algorithms: tuple[str, ...] = ("maml", "fomaml", "reptile", "metasgd", "metadropout",
                                   "ridge")
    inner_steps: int = 5
    inner_lr: float = 0.05
    meta_batch: int = 32
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    outer_lr: float = 1e-3
    reptile_epsilon: float = 1.0
    reptile_mode: Literal["interpolate", "adam"] = "adam"
    max_steps: int = 1000
    val_every: int = 100
    grad_clip: float = 10.0
    patience: int = 3
    ridge_lambda: float = 3.0
    ridge_query_loss: Literal["mse", "mae", "huber"] = "mse"
    ridge_outer_lr: float = 3e-4
    ridge_train_item_ids: bool = False
    ridge_item_features: bool = False
    ridge_mf_init: bool = True
    ridge_mf_reg: float = 5.0
    ridge_mf_iters: int = 15
    finetune_steps: tuple[int, ...] = (1, 5, 10)
    finetune_lrs: tuple[float, ...] = (0.01, 0.05, 0.2)
    accelerator: str = "auto"
    strategy: Literal["auto", "ddp"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    seeds: tuple[int, ...] = (0, 1, 2)
    seed: int = field(default=0, metadata={"internal": "set per run from train.seeds"})


# --------------------------------------------------------------------------------------------
# evaluation and nightly scoring


@dataclass(frozen=True)
class EvaluateParams:
    relevance_threshold: float = 4.0
    inner_steps_grid: tuple[int, ...] = (1, 3, 5, 10, 20)
    curve_k: int = 5
    ensemble_size: int = 2
    bootstrap_samples: int = 1000
    bootstrap_confidence: float = 0.95
    catalogue_k: int = 20
    query_ndcg_ks: tuple[int, ...] = (1, 3, 5)


@dataclass(frozen=True)
class ScoreParams:
    """Nightly batch: which checkpoint scores which users, and how many items each gets."""

    model: str = "maml"
    as_of: str | None = None
    top_k: int = 20
    max_interactions: int = 20
    active_days: int = 30
    chunk_users: int = 1024
    landing_dir: str | None = None
    dynamic: bool = False
    dynamic_last: int = 20
    cron: str = "0 2 * * *"


# --------------------------------------------------------------------------------------------
# orchestration (Prefect flows, local server, nightly task runner)


@dataclass(frozen=True)
class PrefectParams:
    """Where the local Prefect server lives, how tasks retry, how the nightly batch shards."""

    host: str = "127.0.0.1"
    port: int = 4200
    home: str = ".prefect"
    startup_timeout_s: int = 90
    retries: int = 2
    retry_backoff_s: float = 10.0
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = None
    dask_workers: int = 2
    shards: int = 4
    models_dir: str = "models/seed0"


@dataclass(frozen=True)
class Params:
    ingest: IngestParams = field(default_factory=IngestParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    episodes: EpisodesParams = field(default_factory=EpisodesParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    score: ScoreParams = field(default_factory=ScoreParams)
    prefect: PrefectParams = field(default_factory=PrefectParams)


# --------------------------------------------------------------------------------------------
# parsing


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
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


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f" in section {prefix!r}" if prefix else ""
        raise ParamsError(f"unknown key(s){where}: {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(names))})")
    internal = {f.name: f.metadata["internal"] for f in dataclasses.fields(cls)
                if "internal" in f.metadata and f.name in raw}
    for name, why in internal.items():
        raise ParamsError(f"{prefix}.{name} is not a params.yaml key ({why})")
    kwargs = {name: _coerce(raw[name], hints[name], f"{prefix}.{name}" if prefix else name)
              for name in raw}
    return cls(**kwargs)


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Build :class:`Params` from a parsed YAML mapping; missing keys take their defaults."""
    return _build(Params, raw or {}, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
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
        return parse_params(raw)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """A params object (or section) as plain JSON-able data."""
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
