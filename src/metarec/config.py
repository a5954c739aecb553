"""params.yaml, parsed once into frozen, typed dataclasses.

Every section of params.yaml is one dataclass below. Unknown keys, values of the wrong type and
values out of range (``field(metadata=...)``: ``min``, ``max``, ``nonempty``) are rejected with
the dotted key in the message, so a typo fails loudly instead of silently falling back to a
default. Stages receive only their own section.

Each algorithm owns a sub-section of ``train:`` named after it (``train.ridge:``); its
dataclass lives in the algorithm's module and is handed to :func:`parse_params` by
:func:`metarec.params.load_params`, the one loader the entry points call. This module never
imports the algorithms, so a stage's code closure stays its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Literal

from metarec.schema import (
    Keys,
    bounded,
    build,
    check_cron,
    check_date,
    check_encoding,
    check_instant,
    check_ordered,
    check_separator,
    checked,
    params_hash,
    to_dict,
)

__all__ = ["bounded", "params_hash", "parse_params", "to_dict"]

# Interactions are read, checked and written this many rows at a time (ingest, validate,
# episodes): memory follows the batch, not the log; outputs are the same bytes for any size.
BATCH_ROWS = 2**22
SAME_BYTES = "the outputs are the same bytes for any value"   # a ``neutral`` knob's reason


class Section:
    """A params section. ``inputs`` names the files and folders it points its stage at (the
    user's own data): DVC dependencies of that stage, derived by :mod:`metarec.dag`. Fields
    with ``neutral`` in their metadata change how a stage runs, never what it writes, and are
    no DVC params (changing them reruns nothing)."""

    def inputs(self) -> dict[str, str]:
        """{params key: path} of the data this section names."""
        return {}


# --------------------------------------------------------------------------------------------
# ingest


@dataclass(frozen=True)
class TableSource(Section):
    """The user's own interaction log (Parquet or CSV) and optional feature tables."""

    interactions: str | None = None
    format: Literal["auto", "parquet", "csv"] = "auto"
    csv_delimiter: str = checked(",", check_separator)
    encoding: str = checked("utf-8", check_encoding)
    user_col: str = "user_id"
    item_col: str = "item_id"
    rating_col: str | None = "rating"
    label: Literal["explicit", "count", "binary"] = "explicit"
    timestamp_col: str = "timestamp"
    timestamp_unit: Literal["s", "ms", "us", "ns", "iso"] = "s"
    rating_scale: tuple[float, float] = field(default=(1.0, 5.0),
                                              metadata={"check": check_ordered})
    users: str | None = None
    items: str | None = None
    user_features: dict[str, str] = field(default_factory=dict)
    item_features: dict[str, str] = field(default_factory=dict)
    list_separator: str = checked("|", check_separator)
    platform_col: str | None = None
    platforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyntheticText(Section):
    """Item descriptions in several languages, users' taste planted on their topics
    (:mod:`metarec.data.sources.multilingual`); no languages = no descriptions."""

    languages: tuple[str, ...] = ()
    topics: int = bounded(8, 2)
    topic_languages: int = bounded(2, 1)
    topic_weight: float = bounded(0.7, 0.0, 1.0)
    new_items: float = bounded(0.2, 0.0, 1.0)
    new_after: float = bounded(0.85, 0.0, 1.0)
    unseen_share: float = bounded(0.5, 0.0, 1.0)


@dataclass(frozen=True)
class SyntheticSource(Section):
    """Seeded generator with planted latent structure (for tests and benchmarks)."""

    users: int = bounded(2000, 1)
    items: int = bounded(500, 1)
    interactions: int = bounded(100_000, 1)
    factors: int = bounded(8, 1)
    noise: float = bounded(0.5, 0.0)
    drift: float = bounded(0.0, 0.0)
    activity_days: float = bounded(3.0, 0.01)
    season: float = bounded(0.0, 0.0, 1.0)
    choice: float = bounded(0.0, 0.0)
    season_days: int = bounded(91, 1)
    days: int = bounded(365, 1)
    genres: int = bounded(12, 1)
    platforms: int = bounded(0, 0)
    platform_shift: float = bounded(0.5, 0.0)
    platform_share: float = bounded(0.5, 0.0, 1.0)
    label: Literal["explicit", "count"] = "explicit"
    text: SyntheticText = field(default_factory=SyntheticText)
    seed: int = 0


@dataclass(frozen=True)
class IngestParams(Section):
    source: Literal["movielens-100k", "movielens-1m", "movielens-latest", "table",
                    "synthetic"] = "movielens-100k"
    path: str | None = None
    cache_dir: str = field(default=".cache/metarec", metadata={"neutral": SAME_BYTES})
    allow_download: bool = field(default=True, metadata={"neutral": SAME_BYTES})
    table: TableSource = field(default_factory=TableSource)
    synthetic: SyntheticSource = field(default_factory=SyntheticSource)
    batch_rows: int = bounded(BATCH_ROWS, 1, neutral=SAME_BYTES)

    def inputs(self) -> dict[str, str]:
        """The user's log and feature tables (table source), or a local MovieLens copy."""
        if self.source == "table":
            return {f"ingest.table.{k}": v for k in ("interactions", "users", "items")
                    if (v := getattr(self.table, k)) is not None}
        return {"ingest.path": self.path} if self.path is not None else {}


# what the nightly batch reads of ``ingest``: how landing files are read (the log's format)
LandingSource = Annotated[IngestParams, Keys("source", "table")]


# --------------------------------------------------------------------------------------------
# validate


@dataclass(frozen=True)
class ValidateParams(Section):
    """Row policy and plausibility bounds of the validate stage (dates naive = UTC)."""

    policy: Literal["fail", "quarantine"] = "quarantine"
    min_timestamp: str = checked("1990-01-01", check_instant)
    max_timestamp: str | None = checked(None, check_instant)
    examples: int = bounded(5, 0)
    batch_rows: int = bounded(BATCH_ROWS, 1, neutral=SAME_BYTES)


# --------------------------------------------------------------------------------------------
# episodes


@dataclass(frozen=True)
class EpisodesParams(Section):
    protocol: Literal["temporal", "melu", "predefined"] = "temporal"
    split_fractions: tuple[float, float, float] = bounded((0.7, 0.1, 0.2), 0.0, 1.0)
    support_sizes: tuple[int, ...] = bounded((1, 3, 5, 10, 20), 1, nonempty=True)
    query_size: int = bounded(10, 1)
    train_draw: Literal["random", "temporal"] = "random"
    train_draws: int = bounded(4, 1)
    melu_min_ratings: int = bounded(13, 2)
    melu_max_ratings: int = bounded(100, 2)
    melu_query_size: int = bounded(10, 1)
    melu_new_item_quantile: float = bounded(0.8, 0.0, 1.0)
    predefined_path: str | None = None
    relevance_threshold: float | None = None
    count_transform: Literal["log1p", "binarize"] = "log1p"
    text_encoder: str = "none"
    text_dim: int = bounded(32, 1)
    cross_max: int = bounded(20, 0)
    val_users: int = bounded(1000, 0)
    text_cache: str | None = field(default=".cache/metarec/text",
                                   metadata={"neutral": SAME_BYTES})
    batch_rows: int = bounded(BATCH_ROWS, 1, neutral=SAME_BYTES)
    seed: int = 0

    def inputs(self) -> dict[str, str]:
        """The file assigning users to splits (predefined protocol)."""
        if self.protocol == "predefined" and self.predefined_path is not None:
            return {"episodes.predefined_path": self.predefined_path}
        return {}


# --------------------------------------------------------------------------------------------
# model and training (meta-learning core)


@dataclass(frozen=True)
class ModelParams(Section):
    interaction: Literal["mlp", "dot"] = "dot"
    embedding_dim: int = bounded(32, 1)
    hidden: tuple[int, ...] = bounded((64, 64), 1)
    item_id_embedding: bool = True
    adapt: Literal["vector", "decision", "all", "head", "user"] = "vector"
    fold_in: bool = True
    warm_start: Literal["none", "svd"] = "svd"
    recent_days: int = bounded(28, 0)
    recent_step_days: int = bounded(7, 1)


@dataclass(frozen=True)
class ObjectiveParams(Section):
    """What the gradient meta-learners (and pretrain) minimise, inner and outer loop."""

    ranking_weight: float = bounded(1.0, 0.0)
    rating_weight: float = bounded(0.3, 0.0)
    inner: Literal["rating", "ranking", "both"] = "both"
    loss: Literal["auto", "softmax", "sampled", "bpr"] = "auto"
    sampled_above: int = bounded(5000, 1)
    negatives: int = bounded(256, 1)
    sampler: Literal["popularity", "uniform"] = "popularity"
    popularity_power: float = bounded(0.75, 0.0)

    def resolved(self, n_items: int) -> ObjectiveParams:
        """``loss: auto`` made concrete for a catalogue of ``n_items`` (item ids, the unknown
        one included): the full softmax up to ``sampled_above`` items, the sampled,
        logQ-corrected one above (each step then ranks against ``negatives`` items, not the
        whole catalogue). The one copy of the size rule: fits and reports call it."""
        if self.loss != "auto":
            return self
        return replace(self, loss="sampled" if n_items > self.sampled_above else "softmax")


@dataclass(frozen=True)
class SearchParams(Section):
    """A bounded choice on validation tasks of the knobs that do not transfer between data
    sets, made by probes before the fits (:mod:`metarec.fitting`)."""

    inner_lr: tuple[float, ...] = bounded((0.05, 0.2), 0.0)
    budget_s: float = bounded(300.0, 0.0)


@dataclass(frozen=True)
class TrainParams(Section):
    """What every algorithm's training shares; each algorithm's own knobs are in
    ``sections[<name>]`` (params.yaml ``train.<name>:``), parsed by that algorithm's dataclass."""

    SECTIONS: ClassVar[bool] = True

    algorithms: tuple[str, ...] = ("encoder", "maml", "fomaml", "reptile", "metasgd",
                                   "metadropout", "ridge")
    baselines: tuple[str, ...] = ("global_mean", "item_mean", "user_mean", "item_user_bias",
                                  "biased_mf", "most_popular", "popular_now", "itemknn", "ease",
                                  "pretrain", "finetune")
    inner_steps: int = bounded(5, 0)
    inner_lr: float = bounded(0.05, 0.0)
    meta_batch: int = bounded(32, 1)
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    outer_lr: float = bounded(1e-3, 0.0)
    cross_trust_lr: float = bounded(0.01, 0.0)
    max_steps: int = bounded(500, 0)
    max_seconds: float = bounded(0.0, 0.0)
    val_every: int = bounded(100, 1)
    grad_clip: float = bounded(10.0, 0.0)
    patience: int = bounded(2, 0)
    val_ndcg_k: int = bounded(20, 1)
    resample: bool = True
    item_id_dropout: float = bounded(0.0, 0.0, 1.0)
    draws: tuple[Literal["temporal", "random"], ...] = bounded(("temporal", "random"),
                                                               nonempty=True)
    objective: ObjectiveParams = field(default_factory=ObjectiveParams)
    search: SearchParams = field(default_factory=SearchParams)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    strategy: Literal["auto", "ddp"] = "auto"
    devices: int = bounded(1, 1)
    num_nodes: int = bounded(1, 1)
    seeds: tuple[int, ...] = bounded((0, 1, 2), nonempty=True)
    workers: int = bounded(2, 1, neutral=SAME_BYTES)
    threads: int = bounded(1, 1)
    text_ablation: bool = False
    seed: int = field(default=0, metadata={"internal": "set per run from train.seeds"})
    sections: Mapping[str, Any] = field(default_factory=dict,
                                        metadata={"internal": "train.<algorithm> sections"})

    def section(self, name: str, default: Any) -> Any:
        """Algorithm ``name``'s own params (``default`` when params.yaml has none)."""
        return self.sections.get(name, default)


# --------------------------------------------------------------------------------------------
# evaluation and nightly scoring


@dataclass(frozen=True)
class EvaluateParams(Section):
    inner_steps_grid: tuple[int, ...] = bounded((1, 3, 5, 10, 20), 0, nonempty=True)
    curve_k: int = bounded(5, 1)
    ensemble_size: int = bounded(2, 0)
    bootstrap_samples: int = bounded(1000, 10)
    bootstrap_confidence: float = bounded(0.95, 0.5, 0.999)
    catalogue_k: int = bounded(20, 1)
    query_ndcg_ks: tuple[int, ...] = bounded((1, 3, 5), 1, nonempty=True)
    item_cold_catalogue: Literal["new", "all"] = "new"
    exclude_history: bool = True
    references: tuple[str, ...] = ("pretrain", "finetune", "ease", "most_popular",
                                   "popular_now")
    workers: int = bounded(2, 1, neutral=SAME_BYTES)
    threads: int = bounded(1, 1)


@dataclass(frozen=True)
class ScoreParams(Section):
    """Nightly batch: which checkpoint scores which users, and how many items each gets."""

    model: str = "auto"
    seed: int | Literal["auto"] = "auto"
    as_of: str | None = checked(None, check_date)
    top_k: int = bounded(20, 1)
    max_interactions: int = bounded(20, 1)
    active_days: int = bounded(30, 1)
    chunk_users: int = bounded(1024, 1)
    landing_dir: str | None = None
    dynamic: bool = False
    dynamic_last: int = bounded(20, 1)
    engine_memory_mb: int = bounded(256, 16, neutral=SAME_BYTES)
    text_cache: str | None = field(default=".cache/metarec/text",
                                   metadata={"neutral": SAME_BYTES})

    def inputs(self) -> dict[str, str]:
        """The folder of daily landing files the batches read."""
        return {"score.landing_dir": self.landing_dir} if self.landing_dir is not None else {}


@dataclass(frozen=True)
class BacktestParams(Section):
    """Replayed nights judged against what each scored user did in the following days."""

    from_date: str | None = checked(None, check_date)
    to_date: str | None = checked(None, check_date)
    every_days: int = bounded(1, 1)
    horizon_days: int = bounded(7, 1)
    k: int = bounded(20, 1)
    popularity_days: int = bounded(30, 1)
    warm: bool = True
    bootstrap_samples: int = bounded(1000, 10)
    bootstrap_confidence: float = bounded(0.95, 0.5, 0.999)
    seed: int = 0
    retrain_every_days: int | None = bounded(None, 1)
    retrain_cache: str = field(default=".cache/metarec/retrain",
                               metadata={"neutral": SAME_BYTES})


# --------------------------------------------------------------------------------------------
# orchestration (Prefect flows, local server, nightly task runner)


@dataclass(frozen=True)
class PrefectParams(Section):
    """Where the local Prefect server lives, how tasks retry, how the nightly batch shards,
    how long a run waits for the project lock."""

    host: str = "127.0.0.1"
    open_to_network: bool = False
    port: int = bounded(4200, 1, 65535)
    home: str = ".prefect"
    startup_timeout_s: int = bounded(90, 1)
    retries: int = bounded(2, 0)
    retry_backoff_s: float = bounded(10.0, 0.0)
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = None
    dask_workers: int = bounded(2, 1)
    shards: int = bounded(4, 1)
    nightly_cron: str = checked("0 2 * * *", check_cron)
    retrain_cron: str = checked("0 3 * * 0", check_cron)
    clock: Literal["auto", "wall", "replay"] = "auto"
    replay_start: str | None = checked(None, check_date)
    lock_wait_s: float = bounded(0.0, 0.0)


@dataclass(frozen=True)
class Params:
    ingest: IngestParams = field(default_factory=IngestParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    episodes: EpisodesParams = field(default_factory=EpisodesParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    score: ScoreParams = field(default_factory=ScoreParams)
    backtest: BacktestParams = field(default_factory=BacktestParams)
    prefect: PrefectParams = field(default_factory=PrefectParams)


# --------------------------------------------------------------------------------------------
# parsing


def parse_params(raw: dict[str, Any] | None, sections: Mapping[str, type] | None = None
                 ) -> Params:
    """Build :class:`Params` from a parsed YAML mapping; missing keys take their defaults.

    ``sections`` maps each algorithm name to the dataclass of its ``train.<name>`` section
    (``None``: the algorithm has no knobs); without it such sections are unknown keys.
    """
    return build(Params, raw or {}, "", sections)
