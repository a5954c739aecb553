"""The evaluation adapts each model to each batch once: the seed-ensembles score their members'
cached states, with the same numbers as members adapting afresh."""

from __future__ import annotations

import torch

from metarec.data.tasks import load_episodes
from metarec.eval import choices as choose
from metarec.eval.ensembles import build_ensembles
from metarec.eval.evaluation import AdaptCache, load_models
from metarec.eval.groups import TestGroup
from metarec.eval.scoring import score_batch


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
