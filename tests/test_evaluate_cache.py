"""The evaluation adapts each model to each batch once: the seed-ensembles score their members'
cached states, with the same numbers as members adapting afresh."""

from __future__ import annotations

import torch

from metarec.data.tasks import load_episodes
from metarec.eval import choices as choose
from metarec.eval.ensembles import build_ensembles
from metarec.eval.evaluation import AdaptCache, load_models
from metarec.eval.groups import TestGroup
from metarec.eval.scoring import score_batch, score_blocks, task_blocks


def test_ensembles_score_cached_member_states_as_if_adapted_afresh(synthetic_project: dict
                                                                   ) -> None:
    root, params = synthetic_project["root"], synthetic_project["params"].evaluate
    data = load_episodes(root / "episodes")
    models = load_models(root / "models", data)
    meta = [n for n in models[0] if not choose.is_baseline(n)]
    batch = TestGroup("user_cold", 3).batch(data)
    cache = AdaptCache()
    for seed_models in models.values():          # what the per-seed pass leaves behind
        for model in seed_models.values():
            assert cache(model, batch) is cache(model, batch)
    cached = len(cache._states)
    ensembles, _ = build_ensembles(models, meta, 2, lambda ens: 0.0, cache)
    fresh, _ = build_ensembles(models, meta, 2, lambda ens: 0.0)
    assert set(ensembles) == set(fresh) and "meta-ens" in ensembles
    for name in ensembles:
        a, b = (score_batch(e[name], batch, params, data.relevance_threshold,
                            data.explicit) for e in (ensembles, fresh))
        assert all(torch.equal(a[m].nan_to_num(-1), b[m].nan_to_num(-1)) for m in a), name
    assert len(cache._states) == cached          # no member adapted again
    cache.forget(batch)
    assert not cache._states


def test_scoring_in_task_blocks_gives_the_values_of_one_batch(synthetic_project: dict) -> None:
    """The evaluation ranks a batch in blocks of tasks (memory follows the block): every
    model without random draws scores each task as it does in one batch; the blocks cover
    every task once, in order, and a batch that fits stays whole."""
    root, params = synthetic_project["root"], synthetic_project["params"].evaluate
    data = load_episodes(root / "episodes")
    models = load_models(root / "models", data)[0]
    batch = TestGroup("user_cold", 3).batch(data)
    n = len(data.items)
    assert task_blocks(batch, n) == [batch]
    blocks = task_blocks(batch, n, cells=7 * n)
    assert len(blocks) == -(-len(batch) // 7) > 1
    assert torch.equal(torch.cat([b.task_id for b in blocks]), batch.task_id)
    for name, model in models.items():
        if name.startswith("metadropout"):       # its noise is drawn per block (chunk i)
            continue
        whole = score_batch(model, batch, params, data.relevance_threshold, data.explicit)
        parts = score_blocks(model, blocks, params, data.relevance_threshold, data.explicit)
        for m in whole:
            assert torch.allclose(whole[m], parts[m], atol=1e-5, equal_nan=True), (name, m)
