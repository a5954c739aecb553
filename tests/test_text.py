"""Item text as model input: the built-in hashed n-gram encoder and its place in the encoding."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from metarec.data.encoding import encode_entity, fit_entity_vocab
from metarec.data.text import (
    USE_DIM,
    USE_MULTILINGUAL,
    encode_text,
    fit_projection,
    hashed_ngrams,
    normalise,
    project,
)
from metarec.errors import DataError

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


def test_the_built_in_multilingual_encoder_puts_translations_nearer_than_unrelated_texts(
        ) -> None:
    titles = pd.Series(["The Lord of the Rings", "Der Herr der Ringe", "Властелин колец",
                        "指环王", "A Shopping Trip", "Kitchen Renovation Tips",
                        "A romantic comedy in Paris", "Eine romantische Komödie in Paris"])
    v = encode_text(titles, USE_MULTILINGUAL, 0)
    assert v.shape == (len(titles), USE_DIM) and v.dtype == np.float32
    cos = v @ v.T / USE_DIM
    for j in (1, 2, 3):                             # German, Russian, Chinese title
        assert cos[0, j] > max(cos[0, 4], cos[0, 5], cos[0, 6]) + 0.2
    assert cos[6, 7] > max(cos[6, 0], cos[6, 4], cos[6, 5]) + 0.4
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), np.sqrt(USE_DIM), rtol=1e-5)


def test_the_multilingual_vector_of_a_text_is_its_own_and_empty_text_says_nothing() -> None:
    """Encoded alone or among others, in any order, repeated: the same bytes (the encoder's
    batches would otherwise mix neighbours into the last bits)."""
    texts = pd.Series(["Ein Dokumentarfilm über die Raumfahrt.", "", None,
                       "一部关于太空旅行的纪录片。", "Ein Dokumentarfilm über die Raumfahrt.",
                       "Документальный фильм о космических путешествиях."])
    together = encode_text(texts, USE_MULTILINGUAL, 0)
    alone = np.concatenate([encode_text(texts.iloc[[i]], USE_MULTILINGUAL, 0)
                            for i in range(len(texts))])
    assert together.tobytes() == alone.tobytes()
    assert together.tobytes() == encode_text(texts[::-1], USE_MULTILINGUAL, 0)[::-1].tobytes()
    assert (together[1] == 0).all() and (together[2] == 0).all()
    assert np.array_equal(together[0], together[4])


def test_the_multilingual_encoder_is_cached_a_second_run_encodes_nothing(tmp_path,
                                                                        monkeypatch) -> None:
    from metarec.data.text import TextCache, encode_cached, encoder_key

    texts = pd.Series(["Une comédie sur le premier amour.", "A comedy about first love.",
                       "Une comédie sur le premier amour."])
    path = tmp_path / "a" / f"{encoder_key(USE_MULTILINGUAL, 32, 0)}.parquet"
    assert path.name == "use-multilingual-0.2.1.parquet"     # no dim: the vectors are whole
    calls = _counting(monkeypatch)
    cache = TextCache(path)
    first = encode_cached(texts, USE_MULTILINGUAL, 32, 0, cache)
    assert calls == [2]                                      # each distinct text once
    cache.save()
    again = encode_cached(texts, USE_MULTILINGUAL, 32, 0, TextCache(path))
    assert calls == [2] and again.tobytes() == first.tobytes()   # read back, none encoded
    other = TextCache(tmp_path / "b" / path.name)            # a fresh run: the same bytes
    encode_cached(texts[::-1], USE_MULTILINGUAL, 32, 0, other)
    assert other.save().read_bytes() == path.read_bytes()


def test_the_projection_keeps_the_largest_directions_and_empty_texts_stay_zero() -> None:
    rng = np.random.default_rng(0)
    # 3 directions of decreasing spread in 6 numbers, plus an empty row
    latent = rng.normal(0, 1, (200, 3)) * np.array([5.0, 2.0, 0.5])
    vecs = np.vstack([latent @ np.linalg.qr(rng.normal(size=(6, 6)))[0][:3] + 1.0,
                      np.zeros((1, 6))]).astype(np.float32)
    proj = fit_projection(vecs, 2)
    assert proj == fit_projection(vecs[::-1].copy(), 2)         # order of the items: none
    out = project(vecs, proj)
    assert out.shape == (201, 2) and (out[-1] == 0).all()
    np.testing.assert_allclose(np.mean(np.sum(out[:-1] ** 2, axis=1)), 2.0, rtol=1e-4)
    var = out[:-1].var(axis=0)
    assert var[0] > 4 * var[1]                                   # not whitened
    np.testing.assert_allclose(np.mean(out[:-1], axis=0), 0.0, atol=1e-5)
    with pytest.raises(DataError, match="no training item has a non-empty title"):
        fit_projection(np.zeros((3, 6), np.float32), 2, "title")


# --- the text vector cache --------------------------------------------------------------------


def _counting(monkeypatch) -> list[int]:
    """Patch the encoder behind the cache to record how many texts each call encodes."""
    import metarec.data.text as text_mod

    calls: list[int] = []
    real = text_mod.encode_text

    def spy(texts, encoder, dim, seed=0):
        calls.append(len(texts))
        return real(texts, encoder, dim, seed)

    monkeypatch.setattr(text_mod, "encode_text", spy)
    return calls


def test_the_cache_encodes_each_distinct_text_once_and_gives_the_encoders_vectors(
        tmp_path, monkeypatch) -> None:
    from metarec.data.text import TextCache, encode_cached

    texts = pd.Series(["Matrix", "Амели", "Matrix", None, "千と千尋", "Амели"])
    expect = encode_text(texts, "hashed", 16)
    calls = _counting(monkeypatch)
    cache = TextCache(tmp_path / "c.parquet")
    got = encode_cached(texts, "hashed", 16, 0, cache)
    assert np.array_equal(got, expect)
    assert calls == [4]                             # 4 distinct texts (missing = empty)
    cache.save()
    again = encode_cached(texts, "hashed", 16, 0, TextCache(tmp_path / "c.parquet"))
    assert np.array_equal(again, expect) and calls == [4]     # read back, nothing encoded
    more = pd.Series(["Matrix", "Heat"])
    reread = TextCache(tmp_path / "c.parquet")
    assert np.array_equal(encode_cached(more, "hashed", 16, 0, reread),
                          encode_text(more, "hashed", 16))
    assert calls == [4, 1]                          # only the new title


def test_the_cache_file_depends_on_its_texts_not_on_their_order(tmp_path) -> None:
    from metarec.data.text import TextCache, encode_cached

    a, b = TextCache(tmp_path / "a.parquet"), TextCache(tmp_path / "b.parquet")
    encode_cached(pd.Series(["x y", "b", "Ça"]), "hashed", 8, 0, a)
    encode_cached(pd.Series(["Ça"]), "hashed", 8, 0, b)
    encode_cached(pd.Series(["b", "x y", "Ça"]), "hashed", 8, 0, b)
    assert a.save().read_bytes() == b.save().read_bytes()
    with pytest.raises(ValueError, match="cached vectors have 8 numbers, the encoder gives 4"):
        encode_cached(pd.Series(["new"]), "hashed", 4, 0, TextCache(tmp_path / "a.parquet"))


def test_the_episodes_vectors_serve_every_later_load_without_the_encoder(tmp_path,
                                                                        monkeypatch) -> None:
    from metarec.data.tasks import TEXT_VECTORS
    from metarec.data.text import TextCache, text_keys

    items = pd.DataFrame({"item_id": ["a", "b", "c"],
                          "title": ["Heat", "Ran", "Heat"]}).astype("string")
    vocab = fit_entity_vocab(items, "item_id", {"title": {"kind": "text"}},
                             pd.Series(["a", "b"]), {"encoder": "hashed", "dim": 8, "seed": 0})
    plain = encode_entity(items, "item_id", vocab)
    cache = TextCache(tmp_path / TEXT_VECTORS)
    encode_entity(items, "item_id", vocab, cache)
    cache.subset(text_keys(items["title"]), tmp_path / TEXT_VECTORS).save()
    calls = _counting(monkeypatch)
    served = encode_entity(items, "item_id", vocab, TextCache(tmp_path / TEXT_VECTORS))
    assert calls == [] and np.array_equal(served.numeric.numpy(), plain.numeric.numpy())


def test_the_episodes_stage_writes_the_vectors_and_later_stages_read_them(tmp_path,
                                                                         monkeypatch) -> None:
    from dataclasses import replace as dc_replace

    from metarec.config import IngestParams, TableSource, ValidateParams
    from metarec.data.tasks import TEXT_VECTORS, load_episodes
    from metarec.params import load_params
    from metarec.stages import episodes, ingest, validate

    rng = np.random.default_rng(0)
    n = 600
    pd.DataFrame({"user_id": [f"u{i % 60}" for i in range(n)],
                  "item_id": [f"i{x}" for x in rng.integers(0, 40, n)],
                  "rating": rng.integers(1, 6, n),
                  "timestamp": 1_000_000_000 + np.arange(n) * 3600}).drop_duplicates(
        ["user_id", "item_id"]).to_csv(tmp_path / "log.csv", index=False)
    pd.DataFrame({"item_id": [f"i{x}" for x in range(40)],
                  "title": [["Heat", "Ран", "千と千尋", ""][x % 4] + f" {x % 7}"
                            for x in range(40)]}).to_csv(tmp_path / "items.csv", index=False)
    src = TableSource(interactions=str(tmp_path / "log.csv"), items=str(tmp_path / "items.csv"),
                      item_features={"title": "text"})
    ingest.run(IngestParams(source="table", table=src), tmp_path / "canonical")
    validate.run(ValidateParams(min_timestamp="2000-01-01"), tmp_path / "canonical",
                 tmp_path / "validated", tmp_path / "q", tmp_path / "r")
    ep = dc_replace(load_params("params.yaml").episodes, text_encoder="hashed", text_dim=8,
                    text_cache=str(tmp_path / "keep"), support_sizes=(1, 3))
    episodes.run(ep, tmp_path / "validated", tmp_path / "episodes", tmp_path / "data.json")
    assert (tmp_path / "episodes" / TEXT_VECTORS).exists()
    assert (tmp_path / "keep" / "hashed-d8-s0.parquet").exists()
    calls = _counting(monkeypatch)
    data = load_episodes(tmp_path / "episodes")
    assert calls == []                              # the vectors came from the stage's file
    assert [c for c in data.items.num_names if c.startswith("title#")] == [
        f"title#{j}" for j in range(8)]
    titles = pd.read_parquet(tmp_path / "episodes" / "items.parquet")["title"]
    cols = [data.items.num_names.index(f"title#{j}") for j in range(8)]
    np.testing.assert_array_equal(data.items.numeric[:, cols].numpy(),
                                  encode_text(titles, "hashed", 8))
    # the nightly scoring reads the stage's cache (score.text_cache): the same vectors, and
    # the validated item table's titles are all there, so the encoder never runs
    from metarec.scoring.stream import _encode, _text_cache

    validated = pd.read_parquet(tmp_path / "validated" / "items.parquet")
    vocab = data.vocab["items"]
    cache = _text_cache(vocab, str(tmp_path / "keep"))
    assert cache is not None and _text_cache(vocab, str(tmp_path / "none")) is None
    scored = _encode(validated, "item_id", pd.Index([]), vocab, cache)
    assert calls == []
    np.testing.assert_array_equal(scored.numeric.numpy(),
                                  _encode(validated, "item_id", pd.Index([]), vocab).numeric)
    assert calls == [len(validated)]              # without the cache: every title encoded


def _described_project(tmp_path, titles: dict[str, str], encoder: str = USE_MULTILINGUAL
                       ) -> dict:
    """ingest -> validate -> episodes on a tiny log: 40 users rate items i0..i11 from the
    start; items n0..n3 appear only after every meta-train user's history (test-only).
    Returns the vocabulary written by the stage."""
    from dataclasses import replace as dc_replace

    from metarec.config import IngestParams, TableSource, ValidateParams
    from metarec.io import read_json
    from metarec.params import load_params
    from metarec.stages import episodes, ingest, validate

    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):                       # user u arrives at hour 10 u
        for j, item in enumerate(rng.choice(12, 8, replace=False)):
            rows.append((f"u{u}", f"i{item}", int(rng.integers(1, 6)), 10 * u + j))
        for j, item in enumerate(rng.choice(4, 2, replace=False)):   # late: new items
            rows.append((f"u{u}", f"n{item}", int(rng.integers(1, 6)), 1000 + 10 * u + j))
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    log["timestamp"] += 1_000_000_000
    root = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    root.mkdir()
    log.to_csv(root / "log.csv", index=False)
    pd.DataFrame({"item_id": list(titles), "title": list(titles.values())}).to_csv(
        root / "items.csv", index=False)
    src = TableSource(interactions=str(root / "log.csv"), items=str(root / "items.csv"),
                      item_features={"title": "text"})
    ingest.run(IngestParams(source="table", table=src), root / "canonical")
    validate.run(ValidateParams(min_timestamp="2000-01-01"), root / "canonical",
                 root / "validated", root / "q", root / "r")
    ep = dc_replace(load_params("params.yaml").episodes, text_encoder=encoder, text_dim=4,
                    text_cache=None, support_sizes=(1, 3), split_fractions=(0.6, 0.2, 0.2))
    episodes.run(ep, root / "validated", root / "episodes", root / "data.json")
    return read_json(root / "episodes" / "vocab.json")


def test_the_projection_is_fitted_on_the_training_items_only(tmp_path) -> None:
    """A planted change to the test-only items' text leaves the projection as it was; the
    same change to one training item moves it (the check can fail)."""
    base = {f"i{j}": t for j, t in enumerate([
        "A comedy about first love.", "Ein Drama über den Zweiten Weltkrieg.",
        "Un documental sobre la cocina italiana.", "Un thriller sur un braquage de banque.",
        "Мультфильм о диких животных Африки.", "一部关于摇滚乐队的纪录片。",
        "A documentary about space travel.", "Eine Komödie über eine Hochzeit.",
        "Un drama sobre soldados en el frente.", "Un documentaire sur les oiseaux.",
        "Триллер о мафии.", "一部关于人工智能的喜剧。"])}
    new = {f"n{j}": f"A documentary about football fans, part {j}." for j in range(4)}
    moved = {f"n{j}": t for j, t in enumerate(["一部关于古典音乐的纪录片。", "Триллер о пандемии.",
                                                "Ein Film über Roboter.", ""])}
    vocab = _described_project(tmp_path, {**base, **new})
    spec = vocab["items"]["features"]["title"]
    assert spec["encoder"] == USE_MULTILINGUAL and len(spec["projection"]["basis"]) == USE_DIM
    assert len(spec["projection"]["basis"][0]) == 4
    assert vocab["items"]["ids"] == sorted(base)                # n0..n3 are test-only
    assert _described_project(tmp_path, {**base, **moved})["items"] == vocab["items"]
    changed = {**base, "i3": "Ein Animationsfilm über Musikfestivals.", **new}
    assert _described_project(tmp_path, changed)["items"]["features"]["title"][
        "projection"] != spec["projection"]


def test_the_stage_serves_projected_vectors_of_every_item_new_ones_included(tmp_path) -> None:
    from metarec.data.tasks import load_episodes

    titles = {**{f"i{j}": f"A comedy about topic number {j}." for j in range(12)},
              **{f"n{j}": f"Une comédie sur le sujet numéro {j}." for j in range(4)}}
    vocab = _described_project(tmp_path, titles)
    data = load_episodes(next(tmp_path.glob("*/episodes")))
    cols = [data.items.num_names.index(f"title#{j}") for j in range(4)]
    got = data.items.numeric[:, cols].numpy()
    items = pd.read_parquet(next(tmp_path.glob("*/episodes")) / "items.parquet")
    expect = project(encode_text(items["title"], USE_MULTILINGUAL, 0),
                     vocab["items"]["features"]["title"]["projection"])
    assert got.tobytes() == expect.tobytes() and np.abs(got).sum(axis=1).min() > 0
