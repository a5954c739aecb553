"""The multilingual catalogue of the synthetic source (``ingest.synthetic.text``): topic
markets, new items in languages their topic never used, taste planted on the topics,
descriptions that are translations of each other; and the cross-lingual check of
``benchmarks/multilingual.py``."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metarec.config import SyntheticSource, SyntheticText
from metarec.data.sources import multilingual
from metarec.data.sources.synthetic import START, described_catalogue, synthesize
from metarec.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]
ALL = ("en", "de", "es", "fr", "ru", "zh")


def _spec(**text: object) -> SyntheticSource:
    return SyntheticSource(users=300, items=150, interactions=8000, choice=2.0,
                           activity_days=60.0, seed=3,
                           text=SyntheticText(languages=ALL, **text))


def test_described_items_keep_to_their_topics_markets_and_new_ones_leave_them() -> None:
    spec = _spec(new_items=0.3)
    raw = synthesize(spec)
    truth = described_catalogue(spec)
    items = raw.items.merge(truth, on="item_id")
    assert raw.item_features["description"] == {"kind": "text"}
    assert items["genres"].map(list).map(len).eq(1).all()
    assert (items["genres"].map(lambda g: g[0]) == items["genre"]).all()
    old = items[~items["new"]]
    market = old.groupby("topic")["language"].agg(set)
    assert market.map(len).max() == 2 and set().union(*market) == set(ALL)
    new = items[items["new"]]
    in_market = np.array([lang in market[t] for t, lang in zip(new["topic"], new["language"],
                                                                 strict=True)])
    assert (in_market == ~new["unseen_language"].to_numpy()).all()
    assert 0.3 < new["unseen_language"].mean() < 0.7            # unseen_share 0.5
    text = "".join(items["description"])
    assert any("\u0400" <= c <= "\u04ff" for c in text)         # Cyrillic
    assert any("\u4e00" <= c <= "\u9fff" for c in text)         # CJK
    assert synthesize(spec).items.equals(raw.items)               # deterministic


def test_new_items_are_never_picked_before_their_release() -> None:
    spec = _spec(new_items=0.3, new_after=0.8)
    log = synthesize(spec).interactions.frame()
    cat = multilingual.Catalogue(spec)
    release = START + (cat.release_day * 86_400).astype(np.int64)
    first = log.groupby("item_id")["timestamp"].min()
    ids = first.index.str[1:].astype(int)
    assert (first.to_numpy() >= release[ids]).all()
    new_first = first[cat.new[ids]]
    assert len(new_first) > 10
    assert new_first.min() >= START + 0.8 * spec.days * 86_400
    assert (first[~cat.new[ids]].min() < START + 0.1 * spec.days * 86_400)


def test_taste_is_planted_on_the_topics() -> None:
    """Users pick and rate by topic: each one's interactions gather on a few topics, and an
    item's taste vector is nearer its topic's other items than other topics' items."""
    spec = _spec()
    log = synthesize(spec).interactions.frame().merge(described_catalogue(spec), on="item_id")
    share = log.groupby("user_id")["topic"].agg(lambda t: t.value_counts(normalize=True).max())
    topics = log["topic"].value_counts(normalize=True).max()
    assert share[log.groupby("user_id").size() >= 20].mean() > topics + 0.15
    cat = multilingual.Catalogue(spec)
    v = cat.factors / np.linalg.norm(cat.factors, axis=1, keepdims=True)
    cos = v @ v.T
    same = cat.topic[:, None] == cat.topic[None, :]
    np.fill_diagonal(same, False)
    assert cos[same].mean() > cos[~same].mean() + 0.4


def test_a_log_without_descriptions_is_the_log_the_source_drew_before() -> None:
    """The catalogue draws from a stream of its own: naming no language changes nothing."""
    base = replace(_spec(), text=SyntheticText())
    plain = synthesize(base)
    assert "description" not in plain.items and plain.item_features.keys() == {
        "genres", "release_year"}
    again = synthesize(SyntheticSource(**{**base.__dict__}))
    assert again.interactions.frame().equals(plain.interactions.frame())


def test_the_templates_are_translations_of_each_other() -> None:
    """Every language describes every topic, subject and genre; and by meaning (the built-in
    encoder), a description lies nearer its translations than any other topic's."""
    for table in (multilingual.PHRASES, multilingual.GENRE_WORDS, multilingual.TEMPLATES):
        assert set(table) == set(multilingual.LANGUAGES)
    assert all(len(p) == len(multilingual.TOPICS) and all(len(s) == multilingual.SUBJECTS
                                                          for s in p)
               for p in multilingual.PHRASES.values())
    from metarec.data.text import USE_MULTILINGUAL, encode_text

    sentences = multilingual._sentences()[:, 0, 0]                  # (languages, topics, s)
    v = encode_text(pd.Series(sentences.reshape(-1)), USE_MULTILINGUAL, 0)
    v = v.reshape(*sentences.shape, -1)
    n_lang = len(multilingual.LANGUAGES)
    for a in range(n_lang):
        for b in range(n_lang):
            if a == b:
                continue
            # each topic's subjects in language a against the topic centres of language b
            centres = v[b].mean(axis=1)                            # (topics, d)
            guess = np.argmax(v[a] @ centres.T, axis=-1)           # (topics, subjects)
            truth = np.arange(len(multilingual.TOPICS))[:, None]
            assert (guess == truth).mean() >= 0.9, (multilingual.LANGUAGES[a],
                                                    multilingual.LANGUAGES[b])


@pytest.mark.parametrize(("change", "match"), [
    ({"languages": ["en", "xx"]}, "text.languages"),
    ({"languages": ["en", "de"], "topic_languages": 2}, "text.topic_languages"),
    ({"languages": ["en", "de"], "topics": 11}, "text.topics"),
])
def test_a_catalogue_the_templates_cannot_write_fails_naming_the_key(change, match) -> None:
    from metarec.params import parse

    raw = {"ingest": {"source": "synthetic", "synthetic": {"choice": 1.0, "text": change}}}
    with pytest.raises(ParamsError, match=match):
        parse(raw)
    with pytest.raises(ParamsError, match="synthetic.choice"):
        parse({"ingest": {"source": "synthetic",
                          "synthetic": {"text": {"languages": ["en", "de", "zh"]}}}})


# --- the cross-lingual check of benchmarks/multilingual.py ----------------------------------


def _bench():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("multilingual_bench",
                                                  ROOT / "benchmarks/multilingual.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_cross_lingual_check_pits_other_language_likers_against_non_likers() -> None:
    mod = _bench()
    # 2 topics x 2 languages; new item 0: topic 0 described in language 0
    liked = np.zeros((6, 2, 2), dtype=bool)
    liked[0, 0, 1] = liked[1, 0, 1] = True       # liked topic 0 in the other language
    liked[2, 0, 0] = True                        # only in the item's own language: neither
    liked[3, 1, 0] = True                        # another topic only: did not like topic 0
    liked[5, 0, 0] = liked[5, 0, 1] = True       # both languages: counts as another language
    topic, language = np.array([0, 1]), np.array([0, 1])
    # item 0 ranked high by the other-language likers, lowest by the own-language liker
    placed = np.array([[0.9, 0.5], [0.8, 0.5], [0.0, 0.5], [0.3, 0.5], [0.2, 0.5],
                       [0.7, 0.5]])
    auc = mod.cross_lingual(placed, liked, topic, language)
    assert auc[0] == 1.0
    assert auc[1] == 0.5          # item 1 (topic 1, lang 1): user 3 liked it in lang 0; ties
    assert mod.cross_lingual(1 - placed, liked, topic, language)[0] == 0.0
    liked[:, 0, 1] = False
    liked[5] = False
    assert np.isnan(mod.cross_lingual(placed, liked, topic, language)[0])   # no positives


def test_placement_is_the_share_of_the_other_new_items_beaten() -> None:
    import torch

    mod = _bench()
    scores = torch.tensor([[5.0, 1.0, 3.0, 3.0, 9.0], [0.0, 2.0, 2.0, 2.0, 1.0]])
    new = np.array([0, 1, 2, 3])                          # item 4 is not new
    np.testing.assert_allclose(mod._placement(scores, new),
                               [[1.0, 0.0, 0.5, 0.5], [0.0, 2 / 3, 2 / 3, 2 / 3]])


def test_nearest_topic_reads_the_topic_of_a_new_item_from_its_vector_alone() -> None:
    mod = _bench()
    rng = np.random.default_rng(0)
    centre = rng.normal(size=(3, 8)) * 3
    topic = np.repeat(np.array(["a", "b", "c"]), 20)
    vecs = centre[np.repeat(np.arange(3), 20)] + rng.normal(size=(60, 8))
    train = np.tile(np.arange(20) < 15, 3)
    assert mod.nearest_topic(vecs, topic, train, ~train).all()
    shuffled = rng.permutation(topic[~train])
    vecs[~train] = centre[np.searchsorted(["a", "b", "c"], shuffled)]
    assert mod.nearest_topic(vecs, topic, train, ~train).mean() < 0.7


def test_the_goals_read_every_k_and_the_margin_of_each_model() -> None:
    mod = _bench()

    def row(comp: str, k: int, low: float) -> dict:
        return {"model": "maml", "scenario": "item_cold", "comparison": comp, "k": k,
                "ci_low": low}

    check = [{"encoder": "use-multilingual", "model": "maml", "k": 1, "auc_seen": 0.8,
              "auc_unseen": 0.78}]
    cat = {"algorithms": ["maml"], "cross_lingual": check,
           "rows": [row(c, k, 0.01) for c in ("use-multilingual - hashed",
                                             "use-multilingual - none") for k in (1, 3)]}
    got = mod.goals({"datasets": {"multilingual": cat}})
    assert got == {"maml: beats hashed at every K": True, "maml: beats none at every K": True,
                   "maml: unseen within 10% of seen at every K": True}
    cat["rows"][1]["ci_low"] = -0.001                 # hashed, K=3: the CI reaches 0
    check[0]["auc_unseen"] = 0.76                     # margin 0.26 < 0.9 x 0.3
    got = mod.goals({"datasets": {"multilingual": cat}})
    assert got["maml: beats hashed at every K"] is False
    assert got["maml: unseen within 10% of seen at every K"] is False
    assert got["maml: beats none at every K"] is True
