"""Integer vocabularies for ids and features, shared by training, evaluation and scoring.

A vocabulary is fitted once (by the episodes stage, on the training period only) and saved as
``vocab.json`` next to the episodes. Index 0 of every categorical vocabulary is the explicit
*unknown* value: a category, multi-valued token or id never seen in training maps to 0, so a
model never indexes out of range and never sees a value it could not have learned.
Numeric features are standardised with the training mean and std; missing values become 0
(the training mean). Text features are display-only unless a text encoder is named
(``episodes.text_encoder``): then each text becomes ``dim`` numeric columns
(:mod:`metarec.data.text`), the same for every run that reads the same vocabulary (which
holds the projection of a semantic encoder, fitted by the episodes stage on training items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - registers pa.compute
import torch

from metarec.data.text import TextCache, encode_cached, project

UNKNOWN = 0
KINDS = ("categorical", "multicategorical", "numeric", "text")


LIST_TYPE = pa.list_(pa.string())


def list_series(arr: pa.Array | pa.ChunkedArray, index: pd.Index) -> pd.Series:
    """A list<string> arrow array as a pandas Series without materialising Python lists."""
    return pd.Series(pd.arrays.ArrowExtensionArray(arr.cast(LIST_TYPE)), index=index)


def list_array(col: pd.Series) -> pa.ListArray:
    """A multi-valued column (arrow-backed or object lists) as one arrow list<string> array."""
    if isinstance(col.dtype, pd.ArrowDtype):
        arr = col.array._pa_array  # noqa: SLF001 - the arrow data behind the column
        arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        return arr.cast(LIST_TYPE)
    return pa.array(col.tolist(), type=LIST_TYPE)


def _codes(values: pd.Series, vocab: list[str]) -> np.ndarray:
    """Map values to 1..len(vocab) by position in ``vocab``; unseen or missing -> 0."""
    cat = pd.Categorical(values.astype("string"), categories=vocab)
    return (np.asarray(cat.codes, dtype=np.int64) + 1).astype(np.int32)


def fit_entity_vocab(table: pd.DataFrame, id_col: str, features: dict[str, dict[str, Any]],
                     known_ids: pd.Series, text: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Fit the vocabulary of one entity (users or items) on the rows whose id is known.

    ``features`` is the schema's feature map for this entity ({name: {"kind": ...}}).
    ``known_ids`` are the ids seen in the training period: only they shape the vocabulary.
    ``text`` ({"encoder", "dim", "seed"}) makes text features model inputs; None keeps them
    for display only. An encoder needs no fitting: a new item's text encodes the same way.
    """
    fit = table[table[id_col].isin(known_ids)]
    out: dict[str, Any] = {"ids": sorted(pd.unique(fit[id_col].astype("string")).tolist()),
                           "features": {}}
    for name, spec in features.items():
        kind = spec["kind"]
        col = fit[name]
        if kind == "categorical":
            values = sorted(pd.unique(col.dropna().astype("string")).tolist())
            out["features"][name] = {"kind": kind, "values": values}
        elif kind == "multicategorical":
            tokens = pa.compute.unique(pa.compute.list_flatten(list_array(col))).drop_null()
            out["features"][name] = {"kind": kind, "values": sorted(tokens.to_pylist())}
        elif kind == "numeric":
            num = pd.to_numeric(col, errors="coerce").astype("float64")
            mean = float(num.mean()) if num.notna().any() else 0.0
            std = float(num.std(ddof=0)) if num.notna().sum() > 1 else 1.0
            out["features"][name] = {"kind": kind, "mean": mean, "std": std if std > 0 else 1.0}
        elif kind == "text" and text is not None:
            out["features"][name] = {"kind": kind, **text}
        # otherwise text features are kept for display only; models do not see them
    return out


@dataclass
class FeatureTable:
    """Encoded features of every user (or item), row i = entity index i.

    Shapes: ``id_code`` (n,), ``categorical`` (n, n_cat), ``multi`` (n, n_multi, max_len)
    padded with 0, ``numeric`` (n, n_num). Cardinalities include the unknown index 0.
    """

    ids: Sequence[str]   # a list, or an arrow-backed string Series for millions of rows
    id_code: torch.Tensor
    categorical: torch.Tensor
    multi: torch.Tensor
    numeric: torch.Tensor
    n_ids: int
    cat_names: list[str]
    cat_cardinalities: list[int]
    multi_names: list[str]
    multi_cardinalities: list[int]
    num_names: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, ids: pd.Series) -> np.ndarray:
        """Row index of each id; raises KeyError naming the first id that is absent."""
        lookup = pd.Index(self.ids)
        idx = lookup.get_indexer(ids.astype("string"))
        if (idx < 0).any():
            missing = ids[idx < 0].iloc[0]
            raise KeyError(f"id {missing!r} has no feature row")
        return idx.astype(np.int64)


def encode_entity(table: pd.DataFrame, id_col: str, vocab: dict[str, Any],
                  text_cache: TextCache | None = None) -> FeatureTable:
    """Encode one entity table with a fitted vocabulary (vectorised, no per-row Python);
    text vectors are read from ``text_cache`` where it holds them (the episodes stage's
    ``text_vectors.parquet``), encoded otherwise."""
    n = len(table)
    ids = table[id_col].astype("string")
    id_code = _codes(ids, vocab["ids"])
    cat_names, cat_cols, cat_card = [], [], []
    multi_names, multi_mats, multi_card = [], [], []
    num_names, num_cols = [], []
    for name, spec in vocab["features"].items():
        kind = spec["kind"]
        if kind == "categorical":
            cat_names.append(name)
            cat_cols.append(_codes(table[name], spec["values"]))
            cat_card.append(len(spec["values"]) + 1)
        elif kind == "multicategorical":
            multi_names.append(name)
            multi_mats.append(_pad_lists(table[name], spec["values"]))
            multi_card.append(len(spec["values"]) + 1)
        elif kind == "numeric":
            num_names.append(name)
            col = pd.to_numeric(table[name], errors="coerce").astype("float64").to_numpy()
            z = (col - spec["mean"]) / spec["std"]
            num_cols.append(np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0))
        elif kind == "text":
            vecs = encode_cached(table[name], spec["encoder"], spec["dim"], spec["seed"],
                                 text_cache)
            if "projection" in spec:          # fitted on the training items (episodes)
                vecs = project(vecs, spec["projection"])
            num_names.extend(f"{name}#{j}" for j in range(vecs.shape[1]))
            num_cols.extend(vecs.T.astype(np.float64))
    width = max((m.shape[1] for m in multi_mats), default=1)
    multi = np.zeros((n, len(multi_mats), width), dtype=np.int64)
    for j, mat in enumerate(multi_mats):
        multi[:, j, : mat.shape[1]] = mat
    return FeatureTable(
        ids=ids.tolist(),
        id_code=torch.from_numpy(id_code.astype(np.int64)),
        categorical=torch.from_numpy(np.stack(cat_cols, 1).astype(np.int64)
                                     if cat_cols else np.zeros((n, 0), np.int64)),
        multi=torch.from_numpy(multi),
        numeric=torch.from_numpy(np.stack(num_cols, 1).astype(np.float32)
                                 if num_cols else np.zeros((n, 0), np.float32)),
        n_ids=len(vocab["ids"]) + 1,
        cat_names=cat_names, cat_cardinalities=cat_card,
        multi_names=multi_names, multi_cardinalities=multi_card,
        num_names=num_names,
    )


def _pad_lists(col: pd.Series, vocab: list[str]) -> np.ndarray:
    """(n, max_len) codes of a list column, 0-padded; unknown tokens dropped to 0."""
    arr = list_array(col)
    lengths = np.asarray(arr.value_lengths().fill_null(0), dtype=np.int64)
    n, width = len(lengths), int(lengths.max()) if len(lengths) else 0
    out = np.zeros((n, max(width, 1)), dtype=np.int64)
    if width == 0:
        return out
    flat = pd.Series(arr.flatten().to_pandas(), dtype="string")
    codes = _codes(flat, vocab)
    rows = np.repeat(np.arange(n), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, np.arange(len(rows)) - starts] = codes
    return out
