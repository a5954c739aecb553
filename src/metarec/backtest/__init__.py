"""Replayed nights judged on what their users did next (``metarec backtest``).

The package: :mod:`~metarec.backtest.plan` (the window, the models compared, what each night
shares), :mod:`~metarec.backtest.judge` (one night's batches and their per-user metrics),
:mod:`~metarec.backtest.report` (the window's summary, paired bootstraps, plot and table) and
:mod:`~metarec.backtest.retrain` (models retrained inside the window).

For every night of the window (``backtest.from_date`` .. ``to_date``, every ``every_days``)
the batch is built exactly as the nightly batch is (:func:`metarec.scoring.batch.recommend`):
the night's world, its cold-start users and, with ``warm``, its active warm users re-adapted
on their latest ``score.dynamic_last`` interactions. Each user's top K is judged against the
relevant items the user interacted with in the following ``horizon_days`` (items the user
already had are never recommended, so they are not counted): HitRate@K, Recall@K (hits /
relevant items) and nDCG@K (binary gain, ideal DCG of min(relevant, K) hits).

Peers, on the same nights and users:

- ``static``: the same model adapted once: a warm user keeps the model of its first
  ``max_interactions`` interactions (what a batch without re-adaptation serves it);
- ``baseline``: the strongest non-meta model by validation nDCG (``metrics/selection.json``),
  given the same interactions as the nightly batch;
- ``popularity``: the items with most interactions in the ``popularity_days`` before the night
  (ties by item id), minus the user's own.

No leakage: the models were trained on nothing at or after the first judged second. A window
whose first night ends before the latest interaction of the episodes' meta-train and
validation rows is refused, as is a night whose horizon runs past the end of the log. With
``retrain_every_days``, the nights are served by models retrained on the log as it stood on
the latest retrain point (:mod:`metarec.backtest.retrain`) instead, and the window may start
anywhere.
"""
