"""Planners for the adaptive tests: each misbehaves (or behaves) in one way."""

from __future__ import annotations

import time

from smartlab_plugins.adaptive.protocol import PlannerInfo, StopRequest, Suggestion, hookimpl


class Fixed:
    """Always suggests the same point, with a name of its own and the plugins it reads."""

    def __init__(self, name: str, point: dict, reads: tuple[str, ...] = ("transition_lstm",)):
        self.name, self.point, self.reads = name, point, reads

    @hookimpl
    def smartlab_planner_describe(self) -> PlannerInfo:
        return PlannerInfo(self.name, "0", self.reads)

    @hookimpl
    def smartlab_suggest(self, plan, n):
        return [Suggestion(dict(self.point), f"{self.name} always says {self.point}")]


class Raising(Fixed):
    @hookimpl
    def smartlab_suggest(self, plan, n):
        raise RuntimeError("this planner is broken")


class Silent(Fixed):
    @hookimpl
    def smartlab_suggest(self, plan, n):
        return []


class Slow(Fixed):
    """Takes ``seconds`` to ingest: the plan must go on without it."""

    def __init__(self, name: str, seconds: float, **kwargs):
        super().__init__(name, {}, **kwargs)
        self.seconds = seconds

    @hookimpl
    def smartlab_ingest(self, plan, observations):
        time.sleep(self.seconds)


class Pausing(Fixed):
    """Asks once for a pause, then suggests its point."""

    @hookimpl
    def smartlab_should_stop(self, plan):
        if not plan.state.get("paused"):
            plan.state["paused"] = True
            return StopRequest("enough for now, look at the data", action="pause")
        return None


class BadHook:
    """Implements a hook with a misspelt argument: registration must fail."""

    @hookimpl
    def smartlab_planner_describe(self) -> PlannerInfo:
        return PlannerInfo("bad_hook", "0", ())

    @hookimpl
    def smartlab_suggest(self, plan, count):
        return []
