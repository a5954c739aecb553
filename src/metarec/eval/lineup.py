"""The models a reader needs, picked by role from the evaluation's own choices.

A plot with 23 lines answers nothing. Each plot and each table up front shows at most six
models, each there for a reason a reader can name:

- ``meta``: the meta-learner best on validation (the headline's model);
- ``zero``: the same model with 0 test-time inner steps (what its inner loop adds);
- ``baseline``: the best non-meta model on validation for the metric's family (the
  reference every comparison is made against);
- ``item-item``: EASE or ItemKNN, whichever validated better (the bar in the literature);
- ``popular``: most popular (a meta-learner below it is not yet useful);
- ``served``: the model the nightly batch serves (``score.model: auto``).

Roles are filled from ``metrics/eval.json`` (the kind of each algorithm, the validation
scores in ``serving``, ``best_baseline``), so a new model takes a role by its scores, not its
name; a role whose model is absent, already shown or without the metric is left out. Every
other model is in the appendix table.

Each point of a line is a test mean over seeds with the number of users behind it and, where
the evaluation made a paired bootstrap, the difference from the line's reference with its CI:
the best baseline for every model, the model itself for its zero-step self.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from metarec.eval.choices import best_on_validation
from metarec.eval.compare import k_order
from metarec.eval.headline import best_meta
from metarec.eval.scoring import family

ITEM_ITEM = ("ease", "itemknn")   # the item-item baselines a practitioner reaches for first
POPULAR = "most_popular"
ROLES = ("meta", "zero", "baseline", "item-item", "popular", "served")
ROLE_TEXT = {"meta": "best meta-learner", "zero": "its zero-step self",
             "baseline": "best non-meta model", "item-item": "item-item baseline",
             "popular": "most popular", "served": "served nightly"}


@dataclass(frozen=True)
class Member:
    """One line: a role, the model's name in the result rows, and its reference (the model
    its differences are taken from; None for the reference itself)."""

    role: str
    model: str
    reference: str | None
    also: tuple[str, ...] = ()     # later roles the same model fills (served nightly)

    @property
    def label(self) -> str:
        """Legend and table text: ``metasgd (best meta-learner, served nightly)``."""
        if self.role == "zero":
            return f"{self.model} at 0 inner steps"
        name = self.model
        roles = [r for r in (self.role, *self.also) if r != "popular"]  # its name says it
        return f"{name} ({', '.join(ROLE_TEXT[r] for r in roles)})" if roles else name


@dataclass(frozen=True)
class Point:
    """One model on one (scenario, K): the test mean over seeds, the users behind it, and
    the paired difference from the reference with its CI (None where there is none)."""

    k: Any
    value: float
    users: int | None
    diff: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def band(self) -> tuple[float, float] | None:
        """Where the mean could lie given the users: the CI of the difference from the
        reference, placed around this mean."""
        if self.diff is None or self.low is None or self.high is None:
            return None
        return self.value + self.low - self.diff, self.value + self.high - self.diff


def _seed_means(result: dict[str, Any], metric: str) -> dict[tuple[str, str, Any], float]:
    """{(model, scenario, k): mean over the seeds' rows} (seed-ensemble rows left out)."""
    acc: dict[tuple[str, str, Any], list[float]] = {}
    for r in result["results"]:
        if r["seed"] >= 0 and r.get(metric) is not None:
            acc.setdefault((r["model"], r["scenario"], r["k"]), []).append(float(r[metric]))
    return {key: sum(v) / len(v) for key, v in acc.items()}


def _has(means: dict[tuple[str, str, Any], float], model: str) -> bool:
    return any(key[0] == model for key in means)


def lineup(result: dict[str, Any], metric: str) -> list[Member]:
    """The models of ``metric``'s plots and tables, in role order, each model once."""
    serving = result.get("serving", {})
    ck = result["catalogue_metric"]
    val = serving.get(f"val_{ck}", {})
    means = _seed_means(result, metric)
    baseline = result["best_baseline"].get(family(metric))
    meta = best_meta(serving, ck)
    zero = {z["model"] for z in result.get("zero_step", []) if z["metric"] == metric}
    item_item = best_on_validation({n: v for n, v in val.items()
                                    if n in ITEM_ITEM and n != baseline and _has(means, n)})
    picks = [("meta", meta, baseline), ("zero", meta if meta in zero else None, meta),
             ("baseline", baseline, None), ("item-item", item_item, baseline),
             ("popular", POPULAR, baseline), ("served", serving.get("model"), baseline)]
    out: list[Member] = []
    for role, model, ref in picks:
        if model is None or (role != "zero" and not _has(means, model)):
            continue
        shown = next((i for i, m in enumerate(out) if m.model == model and m.role != "zero"),
                     None)
        if role != "zero" and shown is not None:
            out[shown] = replace(out[shown], also=(*out[shown].also, role))
            continue
        out.append(Member(role, model, ref if ref != model or role == "zero" else None))
    return out


def series(result: dict[str, Any], metric: str, members: Iterable[Member]
           ) -> dict[str, dict[Member, list[Point]]]:
    """{scenario: {member: its points in K order}} for ``metric`` (K = ``all`` included)."""
    means = _seed_means(result, metric)
    gaps = {(c["model"], c["scenario"], c["k"]): c for c in result["comparisons"]
            if c["metric"] == metric}
    zero = {(z["model"], z["scenario"], z["k"]): z for z in result.get("zero_step", [])
            if z["metric"] == metric}
    users = _users(result, metric)
    out: dict[str, dict[Member, list[Point]]] = {}
    scenarios = sorted({s for _, s, _ in means})
    for scenario in scenarios:
        ks = sorted({k for m, s, k in means if s == scenario}, key=k_order)
        for member in members:
            points = []
            for k in ks:
                key = (member.model, scenario, k)
                if member.role == "zero":
                    z = zero.get(key)
                    if z is not None:   # the model minus itself at 0 steps, turned round
                        points.append(Point(k, z["value_without"], z["users"], -z["diff"],
                                            -z["ci_high"], -z["ci_low"]))
                    continue
                if key not in means:
                    continue
                c = gaps.get(key) if member.reference is not None else None
                points.append(Point(k, means[key], users.get((scenario, k)),
                                    *((c["diff"], c["ci_low"], c["ci_high"]) if c else ())))
            if points:
                out.setdefault(scenario, {})[member] = points
    return out


def _users(result: dict[str, Any], metric: str) -> dict[tuple[str, Any], int]:
    """Users behind each (scenario, K) figure of ``metric``: those with a finite value (a
    ranking metric needs a relevant query item), from the paired comparisons; the task
    count of the result rows where no comparison was made."""
    out: dict[tuple[str, Any], int] = {}
    for r in result["results"]:
        if r["seed"] >= 0 and "users" in r:
            out.setdefault((r["scenario"], r["k"]), int(r["users"]))
    paired: dict[tuple[str, Any], int] = {}
    for c in result["comparisons"]:
        if c["metric"] == metric:
            key = (c["scenario"], c["k"])
            paired[key] = max(paired.get(key, 0), int(c["users"]))
    return {**out, **paired}
