"""``fomaml``: MAML with the inner-loop gradients treated as constants (first order), which
makes it cheap and trainable data-parallel (DDP)."""

from __future__ import annotations

from metarec.algorithms import register
from metarec.meta.gradient import MetaAlgorithm


@register
class FOMAML(MetaAlgorithm):
    name = "fomaml"
    first_order = True
    second_order = False
