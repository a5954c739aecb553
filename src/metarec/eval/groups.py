"""The groups of test tasks the evaluation scores, typed (no scenario-name grammar to parse).

A :class:`TestGroup` is a scenario at one K (or over all K, where each user has one task:
the melu and predefined protocols). Logs with platforms add platform_cold groups scored twice,
on their support alone and with the user's history on other platforms (``cross``), per K and
per platform. :attr:`TestGroup.label` is the scenario name ``metrics/eval.json`` and the
reports use (``platform_cold+cross@<platform>``).
"""

from __future__ import annotations

from dataclasses import dataclass

from metarec.data.tasks import PLATFORM_COLD, SCENARIOS, EpisodeData, TaskBatch, to_batch

CROSS = "+cross"   # a platform_cold group scored with the other platforms' history


@dataclass(frozen=True)
class TestGroup:
    """One group of test tasks scored together."""

    __test__ = False        # not a pytest test class

    scenario: str           # warm | user_cold | item_cold | user_item_cold | platform_cold
    k: int | None           # support size; None: every K (one task per user)
    cross: bool = False     # platform_cold: the other platforms' history joins the support
    platform: str | None = None   # platform_cold: only the tasks of this platform

    @property
    def label(self) -> str:
        """The scenario name of the results: ``platform_cold+cross@tv``."""
        name = self.scenario + (CROSS if self.cross else "")
        return f"{name}@{self.platform}" if self.platform is not None else name

    @property
    def k_label(self) -> int | str:
        return "all" if self.k is None else self.k

    def batch(self, data: EpisodeData) -> TaskBatch:
        """The group's test tasks, padded."""
        tasks = data.select("test", self.scenario, self.k)
        if self.platform is not None:
            tasks = tasks[tasks["platform"] == self.platform]
        return to_batch(tasks, cross=self.cross)


def groups_of(data: EpisodeData) -> list[TestGroup]:
    """Every group of test tasks: (scenario, K) for each scenario and K present, an ``all``
    group per scenario where each user has one task and K varies, and for platform_cold each
    K and each platform with and without the other platforms' history."""
    test = data.select("test")
    ks = sorted(int(k) for k in test["k"].unique())
    groups = [TestGroup(s, k) for s in SCENARIOS for k in ks
              if not data.select("test", s, k).empty]
    tasks = test[test["scenario"] != PLATFORM_COLD].drop_duplicates("task_id")
    one_each = not tasks.empty and not tasks.duplicated(["user_id", "scenario"]).any()
    if one_each and len(ks) > 1:
        groups += [TestGroup(s, None) for s in SCENARIOS if not data.select("test", s).empty]
    cold = data.select("test", PLATFORM_COLD)
    if not cold.empty:
        groups += [TestGroup(PLATFORM_COLD, k, cross) for k in ks for cross in (False, True)
                   if not data.select("test", PLATFORM_COLD, k).empty]
        groups += [TestGroup(PLATFORM_COLD, None, cross, str(name))
                   for name in sorted(cold["platform"].dropna().unique())
                   for cross in (False, True)]
    return groups


def cross_pairs(groups: list[TestGroup]) -> list[tuple[str, str]]:
    """(without, with) the cross-platform history: the labels of every platform_cold pair."""
    labels = {g.label for g in groups}
    pairs = {TestGroup(g.scenario, g.k, False, g.platform).label:
             TestGroup(g.scenario, g.k, True, g.platform).label
             for g in groups if g.scenario == PLATFORM_COLD}
    return sorted((a, b) for a, b in pairs.items() if a in labels and b in labels)


def nearest_k(ks: list[int], k: int) -> int:
    """The support size of ``ks`` nearest to ``k`` (the inner-steps curve's, ``curve_k``)."""
    return min(ks, key=lambda x: abs(x - k))
