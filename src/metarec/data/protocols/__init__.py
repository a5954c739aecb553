"""Episode protocols: how users are split and how each split's tasks are drawn.

Every protocol returns labelled task rows (id codes), an info dict, the codes of meta-train
users and of known items (which shape the vocabularies).
"""

from __future__ import annotations

from metarec.data.protocols.melu import melu
from metarec.data.protocols.predefined import predefined
from metarec.data.protocols.temporal import temporal

__all__ = ["melu", "predefined", "temporal"]
