"""Item text as model input: the built-in hashed n-gram encoder and its place in the encoding."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from metarec.data.encoding import encode_entity, fit_entity_vocab
from metarec.data.text import encode_text, hashed_ngrams, normalise

MIXED = pd.Series([
    "The Matrix (1999)",                 # Latin
    "黑客帝国 (1999)",                     # CJK
    "Матрица (1999)",                    # Cyrillic
    "المصفوفة (1999)",                   # Arabic
    "",                                  # empty
    None,                                # missing
    "x" * 50_000,                        # very long
    "Ｔｈｅ　ＭＡＴＲＩＸ  (1999)",          # full-width, extra spaces: NFKC + lower = row 0
    "Toy Story (1995)",
])


def test_hashed_vectors_are_deterministic_and_unit_scaled() -> None:
    a = hashed_ngrams(MIXED, 32, seed=0)
    b = hashed_ngrams(MIXED.copy(), 32, seed=0)
    assert a.dtype == np.float32 and a.shape == (len(MIXED), 32)
    assert a.tobytes() == b.tobytes()
    assert np.isfinite(a).all()
    norms = np.linalg.norm(a, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 2, 3, 6, 7, 8]], np.sqrt(32), rtol=1e-5)
    assert (a[4] == 0).all() and (a[5] == 0).all()          # no text: no information
    assert not np.array_equal(a, hashed_ngrams(MIXED, 32, seed=1))   # the seed matters


def test_every_script_encodes_to_its_own_vector() -> None:
    v = hashed_ngrams(MIXED, 64)
    scripts = v[[0, 1, 2, 3]]
    assert len({row.tobytes() for row in scripts}) == 4
    np.testing.assert_array_equal(v[0], v[7])               # NFKC, case, spacing normalised
    assert normalise(pd.Series(["  A\tB: (c)  "])).iloc[0] == " a b c "


def test_shared_words_land_nearer_than_unrelated_titles() -> None:
    titles = pd.Series(["Star Wars (1977)", "Star Wars: Return of the Jedi (1983)",
                        "Fargo (1996)", "Звёздные войны (1977)", "Звёздные войны: Эпизод 6"])
    v = hashed_ngrams(titles, 256)
    cos = (v @ v.T) / 256
    assert cos[0, 1] > cos[0, 2] + 0.2
    assert cos[3, 4] > cos[3, 2] + 0.2                      # within Cyrillic, the same rule


def test_ngrams_never_cross_titles() -> None:
    """Each row depends on its own text only: encoding rows apart or together agrees."""
    alone = np.concatenate([hashed_ngrams(MIXED.iloc[[i]], 16) for i in range(len(MIXED))])
    np.testing.assert_array_equal(alone, hashed_ngrams(MIXED, 16))


def test_bad_dim_and_missing_encoder_fail_with_a_reason() -> None:
    with pytest.raises(ValueError, match="dim must be >= 1"):
        hashed_ngrams(MIXED, 0)
    if importlib.util.find_spec("sentence_transformers") is None:
        with pytest.raises(RuntimeError, match="pip install sentence-transformers"):
            encode_text(MIXED, "paraphrase-multilingual-MiniLM-L12-v2", 32)


def test_text_features_become_numeric_columns_only_when_an_encoder_is_named() -> None:
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["Alien", "Aliens", ""],
                          "year": [1979.0, 1986.0, 1990.0]})
    feats = {"title": {"kind": "text"}, "year": {"kind": "numeric"}}
    plain = encode_entity(items, "item_id", fit_entity_vocab(items, "item_id", feats,
                                                             items["item_id"]))
    assert plain.num_names == ["year"]
    spec = {"encoder": "hashed", "dim": 8, "seed": 0}
    vocab = fit_entity_vocab(items, "item_id", feats, items["item_id"], spec)
    assert vocab["features"]["title"] == {"kind": "text", **spec}
    table = encode_entity(items, "item_id", vocab)
    assert table.num_names == [f"title#{j}" for j in range(8)] + ["year"]
    np.testing.assert_array_equal(table.numeric[:, :8].numpy(),
                                  hashed_ngrams(items["title"], 8))
    np.testing.assert_array_equal(table.numeric[:, 8].numpy(), plain.numeric[:, 0].numpy())


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None,
                    reason="no multilingual sentence encoder installed "
                           "(pip install sentence-transformers to run this check)")
def test_a_multilingual_encoder_puts_translations_nearer_than_unrelated_titles() -> None:
    titles = pd.Series(["The Lord of the Rings", "Der Herr der Ringe", "Властелин колец",
                        "指环王", "A Shopping Trip", "Kitchen Renovation Tips"])
    try:
        v = encode_text(titles, "paraphrase-multilingual-MiniLM-L12-v2", 0)
    except OSError as exc:                       # installed, but the model is not cached
        pytest.skip(f"model not available offline: {exc}")
    cos = v @ v.T / v.shape[1]
    for j in (1, 2, 3):
        assert cos[0, j] > max(cos[0, 4], cos[0, 5])
