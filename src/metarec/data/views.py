"""Views of the episodes that leave a kind of feature out: what a model trained without it
sees, so that one evaluation can put a model beside itself without that input.

A variant is named by its algorithm, ``~`` and the view (``maml~notext``). The train stage
fits the variants that ``train.text_ablation`` asks for on the view; the checkpoint records
the view, and :func:`metarec.checkpoint.from_checkpoint` applies it again, so that the
variant reads the same features wherever it is loaded (evaluation, nightly scoring).
"""

from __future__ import annotations

import copy
from dataclasses import replace

from metarec.data.tasks import EpisodeData

SEP = "~"
NOTEXT = "notext"


def base_name(name: str) -> str:
    """The algorithm of a model name (``maml~notext`` -> ``maml``)."""
    return name.partition(SEP)[0]


def variant(name: str, view: str | None) -> str:
    """The name of ``name`` fitted on ``view`` (``name`` itself when there is no view)."""
    return name if view is None else f"{name}{SEP}{view}"


def text_features(data: EpisodeData) -> list[str]:
    """The item features the models read as text vectors (a text encoder is named)."""
    return [name for name, spec in data.vocab["items"]["features"].items()
            if spec["kind"] == "text"]


def without_text(data: EpisodeData) -> EpisodeData:
    """``data`` without its item text vectors: the vocabulary and the item table as the
    episodes stage would have made them with ``episodes.text_encoder: none`` (the other
    columns, in their order; the same tasks and history)."""
    names = text_features(data)
    if not names:
        return data
    vocab = copy.deepcopy(data.vocab)
    for name in names:
        del vocab["items"]["features"][name]
    items = data.items
    text_cols = tuple(f"{name}#" for name in names)          # title#0, title#1, ...
    keep = [j for j, col in enumerate(items.num_names) if not col.startswith(text_cols)]
    items = replace(items, numeric=items.numeric[:, keep].contiguous(),
                    num_names=[items.num_names[j] for j in keep])
    return replace(data, items=items, vocab=vocab)


VIEWS = {NOTEXT: without_text}


def apply(view: str | None, data: EpisodeData) -> EpisodeData:
    """``data`` seen through ``view`` (None: as it is)."""
    if view is None:
        return data
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; known: {sorted(VIEWS)}")
    return VIEWS[view](data)
