"""A multilingual catalogue for the ``synthetic`` source (``ingest.synthetic.text``).

Each item has a topic (space travel, cooking, football...), a genre (documentary, comedy...)
and a description written from templates in one of six languages and three scripts (English,
German, Spanish, French; Russian; Chinese): "A documentary about the planet Mars.",
"Документальный фильм о планете Марс.", "一部关于火星的纪录片。" say the same thing. Users' taste
is planted on the topics: an item's taste vector is mostly its topic's
(``topic_weight``), the rest its genre's and its own, so what a description *means* tells
where the item belongs, whatever its language.

The existing items of each topic are described in ``topic_languages`` of the languages only
(a topic's own market); new items, released late in the timeline, are described in one of
those languages or, with chance ``unseen_share``, in a language that no earlier item of
their topic used. A character n-gram encoder can place a new item only where its words
were seen before; a semantic encoder should place both kinds alike. The genre is a
structured feature every encoder sees; the topic is in the text only.

Drawn from a random stream of its own (``[seed, 11]``): a log without text is the same bytes
as before this module existed, and the same seed rebuilds the planted truth (topic,
language, new or not) for the benchmarks without generating the log
(:func:`metarec.data.sources.synthetic.described_catalogue`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from metarec.config import SyntheticSource
from metarec.errors import ParamsError

LANGUAGES = ("en", "de", "es", "fr", "ru", "zh")
GENRES = ("documentary", "comedy", "drama", "thriller", "animation")
# the genre with its indefinite article where the language has one
GENRE_WORDS = {
    "en": ("a documentary", "a comedy", "a drama", "a thriller", "an animated film"),
    "de": ("ein Dokumentarfilm", "eine Komödie", "ein Drama", "ein Thriller",
           "ein Animationsfilm"),
    "es": ("un documental", "una comedia", "un drama", "un thriller",
           "una película de animación"),
    "fr": ("un documentaire", "une comédie", "un drame", "un thriller", "un film d'animation"),
    "ru": ("документальный фильм", "комедия", "драма", "триллер", "мультфильм"),
    "zh": ("纪录片", "喜剧", "剧情片", "惊悚片", "动画片"),
}
# two sentence templates per language: {g} the genre words, {t} the topic phrase
TEMPLATES = {
    "en": ("{g} {t}.", "New this season: {g} {t}."),
    "de": ("{g} {t}.", "Neu in dieser Saison: {g} {t}."),
    "es": ("{g} {t}.", "Nuevo esta temporada: {g} {t}."),
    "fr": ("{g} {t}.", "Nouveau cette saison : {g} {t}."),
    "ru": ("{g} {t}.", "Новинка сезона: {g} {t}."),
    "zh": ("一部{t}{g}。", "本季新片：一部{t}{g}。"),
}
TOPICS = ("space", "cooking", "football", "war", "romance", "crime", "wildlife", "music",
          "technology", "medicine")
# per language, per topic, four phrasings of "about <subject>" (translations of each other)
PHRASES = {
    "en": (
        ("about space travel", "about the planet Mars", "about astronauts on a space station",
         "about distant galaxies"),
        ("about home cooking", "about baking bread", "about Italian cuisine",
         "about street food"),
        ("about a football club", "about the World Cup", "about a young goalkeeper",
         "about football fans"),
        ("about the Second World War", "about soldiers at the front", "about a battle",
         "about life in wartime"),
        ("about first love", "about a wedding", "about a long-distance relationship",
         "about two people falling in love"),
        ("about a bank robbery", "about a murder investigation", "about the mafia",
         "about a police detective"),
        ("about wild animals in Africa", "about life in the ocean", "about birds",
         "about the rainforest"),
        ("about a rock band", "about classical music", "about a jazz singer",
         "about a music festival"),
        ("about artificial intelligence", "about computer hackers", "about robots",
         "about the internet"),
        ("about doctors in a hospital", "about a pandemic", "about a heart surgeon",
         "about a rare disease"),
    ),
    "de": (
        ("über die Raumfahrt", "über den Planeten Mars", "über Astronauten auf einer "
         "Raumstation", "über ferne Galaxien"),
        ("über das Kochen zu Hause", "über das Brotbacken", "über die italienische Küche",
         "über Streetfood"),
        ("über einen Fußballverein", "über die Weltmeisterschaft", "über einen jungen Torwart",
         "über Fußballfans"),
        ("über den Zweiten Weltkrieg", "über Soldaten an der Front", "über eine Schlacht",
         "über das Leben im Krieg"),
        ("über die erste Liebe", "über eine Hochzeit", "über eine Fernbeziehung",
         "über zwei Menschen, die sich verlieben"),
        ("über einen Banküberfall", "über eine Mordermittlung", "über die Mafia",
         "über einen Kriminalkommissar"),
        ("über wilde Tiere in Afrika", "über das Leben im Ozean", "über Vögel",
         "über den Regenwald"),
        ("über eine Rockband", "über klassische Musik", "über eine Jazzsängerin",
         "über ein Musikfestival"),
        ("über künstliche Intelligenz", "über Computerhacker", "über Roboter",
         "über das Internet"),
        ("über Ärzte in einem Krankenhaus", "über eine Pandemie", "über einen Herzchirurgen",
         "über eine seltene Krankheit"),
    ),
    "es": (
        ("sobre los viajes espaciales", "sobre el planeta Marte", "sobre astronautas en una "
         "estación espacial", "sobre galaxias lejanas"),
        ("sobre la cocina casera", "sobre cómo hornear pan", "sobre la cocina italiana",
         "sobre la comida callejera"),
        ("sobre un club de fútbol", "sobre la Copa del Mundo", "sobre un joven portero",
         "sobre los aficionados al fútbol"),
        ("sobre la Segunda Guerra Mundial", "sobre soldados en el frente",
         "sobre una batalla", "sobre la vida en tiempos de guerra"),
        ("sobre el primer amor", "sobre una boda", "sobre una relación a distancia",
         "sobre dos personas que se enamoran"),
        ("sobre un atraco a un banco", "sobre la investigación de un asesinato",
         "sobre la mafia", "sobre un detective de policía"),
        ("sobre los animales salvajes de África", "sobre la vida en el océano",
         "sobre las aves", "sobre la selva tropical"),
        ("sobre una banda de rock", "sobre la música clásica", "sobre una cantante de jazz",
         "sobre un festival de música"),
        ("sobre la inteligencia artificial", "sobre hackers informáticos", "sobre robots",
         "sobre internet"),
        ("sobre médicos en un hospital", "sobre una pandemia", "sobre un cirujano cardíaco",
         "sobre una enfermedad rara"),
    ),
    "fr": (
        ("sur les voyages spatiaux", "sur la planète Mars", "sur des astronautes dans une "
         "station spatiale", "sur des galaxies lointaines"),
        ("sur la cuisine maison", "sur la fabrication du pain", "sur la cuisine italienne",
         "sur la cuisine de rue"),
        ("sur un club de football", "sur la Coupe du monde", "sur un jeune gardien de but",
         "sur les supporters de football"),
        ("sur la Seconde Guerre mondiale", "sur des soldats au front", "sur une bataille",
         "sur la vie en temps de guerre"),
        ("sur le premier amour", "sur un mariage", "sur une relation à distance",
         "sur deux personnes qui tombent amoureuses"),
        ("sur un braquage de banque", "sur une enquête pour meurtre", "sur la mafia",
         "sur un inspecteur de police"),
        ("sur les animaux sauvages d'Afrique", "sur la vie dans l'océan", "sur les oiseaux",
         "sur la forêt tropicale"),
        ("sur un groupe de rock", "sur la musique classique", "sur une chanteuse de jazz",
         "sur un festival de musique"),
        ("sur l'intelligence artificielle", "sur des pirates informatiques",
         "sur les robots", "sur internet"),
        ("sur des médecins à l'hôpital", "sur une pandémie", "sur un chirurgien cardiaque",
         "sur une maladie rare"),
    ),
    "ru": (
        ("о космических путешествиях", "о планете Марс", "об астронавтах на космической "
         "станции", "о далёких галактиках"),
        ("о домашней кухне", "о выпечке хлеба", "об итальянской кухне", "об уличной еде"),
        ("о футбольном клубе", "о чемпионате мира по футболу", "о молодом вратаре",
         "о футбольных болельщиках"),
        ("о Второй мировой войне", "о солдатах на фронте", "об одном сражении",
         "о жизни во время войны"),
        ("о первой любви", "о свадьбе", "об отношениях на расстоянии",
         "о двух влюблённых"),
        ("об ограблении банка", "о расследовании убийства", "о мафии",
         "о полицейском детективе"),
        ("о диких животных Африки", "о жизни в океане", "о птицах", "о тропических лесах"),
        ("о рок-группе", "о классической музыке", "о джазовой певице",
         "о музыкальном фестивале"),
        ("об искусственном интеллекте", "о компьютерных хакерах", "о роботах",
         "об интернете"),
        ("о врачах в больнице", "о пандемии", "о кардиохирурге", "о редкой болезни"),
    ),
    "zh": (
        ("关于太空旅行的", "关于火星的", "关于空间站宇航员的", "关于遥远星系的"),
        ("关于家常烹饪的", "关于烤面包的", "关于意大利美食的", "关于街头小吃的"),
        ("关于一家足球俱乐部的", "关于世界杯的", "关于一名年轻守门员的", "关于足球迷的"),
        ("关于第二次世界大战的", "关于前线士兵的", "关于一场战役的", "关于战争年代生活的"),
        ("关于初恋的", "关于一场婚礼的", "关于异地恋的", "关于两个人坠入爱河的"),
        ("关于银行抢劫的", "关于一桩谋杀案调查的", "关于黑手党的", "关于一名警探的"),
        ("关于非洲野生动物的", "关于海洋生物的", "关于鸟类的", "关于热带雨林的"),
        ("关于一支摇滚乐队的", "关于古典音乐的", "关于一位爵士歌手的", "关于音乐节的"),
        ("关于人工智能的", "关于电脑黑客的", "关于机器人的", "关于互联网的"),
        ("关于医院医生的", "关于一场大流行病的", "关于一位心脏外科医生的", "关于一种罕见疾病的"),
    ),
}
SUBJECTS = 4          # phrasings per topic


def check(spec: SyntheticSource) -> None:
    """The rules of ``ingest.synthetic.text`` that span keys (ParamsError naming them)."""
    text = spec.text
    if not text.languages:
        return
    unknown = [lang for lang in text.languages if lang not in LANGUAGES]
    if unknown or len(set(text.languages)) != len(text.languages):
        raise ParamsError(f"ingest.synthetic.text.languages: {list(text.languages)} must be "
                          f"distinct, from {', '.join(LANGUAGES)}")
    if text.topics > len(TOPICS):
        raise ParamsError(f"ingest.synthetic.text.topics: {text.topics} exceeds the "
                          f"{len(TOPICS)} topics the templates describe")
    if text.topic_languages >= len(text.languages) and text.unseen_share > 0:
        raise ParamsError(
            f"ingest.synthetic.text.topic_languages: {text.topic_languages} of "
            f"{len(text.languages)} languages leaves none unseen for new items; lower it or "
            "set unseen_share: 0")
    if text.topic_languages > len(text.languages):
        raise ParamsError("ingest.synthetic.text.topic_languages exceeds the languages")
    if spec.choice <= 0:
        raise ParamsError("ingest.synthetic.choice: a described catalogue needs users who "
                          "choose by taste (choice > 0), or new items are never picked for "
                          "what they are")


def _sentences() -> np.ndarray:
    """(languages, templates, genres, topics, subjects) every description there is, written
    once (a few thousand strings; the items then gather theirs)."""
    out = np.empty((len(LANGUAGES), 2, len(GENRES), len(TOPICS), SUBJECTS), dtype=object)
    for li, lang in enumerate(LANGUAGES):
        for v, template in enumerate(TEMPLATES[lang]):
            for g, genre in enumerate(GENRE_WORDS[lang]):
                for t, phrases in enumerate(PHRASES[lang]):
                    for s, phrase in enumerate(phrases):
                        text = template.format(g=genre, t=phrase)
                        out[li, v, g, t, s] = text[0].upper() + text[1:]
    return out


class Catalogue:
    """The planted items of a described catalogue: topic, genre, language, whether new and
    whether in a language unseen for its topic, release day, taste vector and description.
    ``release_day`` is days after the start of the timeline (0 for existing items)."""

    def __init__(self, spec: SyntheticSource) -> None:
        check(spec)
        text, n, f = spec.text, spec.items, spec.factors
        rng = np.random.default_rng([spec.seed, 11])
        langs = np.array([LANGUAGES.index(lang) for lang in text.languages])
        n_lang, k = len(langs), text.topic_languages
        # each topic's market: a random k of the languages; the others are unseen for it
        order = np.argsort(rng.uniform(size=(text.topics, n_lang)), axis=1)
        self.topic_languages = langs[order[:, :k]]                      # (topics, k)
        unseen_langs = langs[order[:, k:]]                              # (topics, L - k)
        self.topic = rng.integers(0, text.topics, n)
        self.genre = rng.integers(0, len(GENRES), n)
        subject = rng.integers(0, SUBJECTS, n)
        template = rng.integers(0, 2, n)
        self.new = rng.uniform(size=n) < text.new_items
        self.unseen = self.new & (rng.uniform(size=n) < text.unseen_share) & (n_lang > k)
        self.language = self.topic_languages[self.topic, rng.integers(0, k, n)]  # LANGUAGES
        if n_lang > k:
            unseen_pick = unseen_langs[self.topic, rng.integers(0, n_lang - k, n)]
            self.language = np.where(self.unseen, unseen_pick, self.language)
        self.release_day = np.where(
            self.new, spec.days * rng.uniform(text.new_after, 1.0, n), 0.0)
        # taste: the topic's direction, the genre's and the item's own (each N(0, 1/f))
        centre = rng.normal(0, 1, (text.topics, f)) / np.sqrt(f)
        genre_dir = rng.normal(0, 1, (len(GENRES), f)) / np.sqrt(f)
        own = rng.normal(0, 1, (n, f)) / np.sqrt(f)
        rest = (1.0 - text.topic_weight) / 2
        self.factors = (np.sqrt(text.topic_weight) * centre[self.topic]
                        + np.sqrt(rest) * genre_dir[self.genre] + np.sqrt(rest) * own)
        self.description = _sentences()[self.language, template, self.genre, self.topic,
                                        subject]

    def truth(self, ids: Any) -> pd.DataFrame:
        """What was planted, per item id (for benchmarks; never a model input)."""
        return pd.DataFrame({"item_id": ids, "topic": np.asarray(TOPICS)[self.topic],
                             "genre": np.asarray(GENRES)[self.genre],
                             "language": np.asarray(LANGUAGES)[self.language],
                             "new": self.new, "unseen_language": self.unseen})

