"""The contract between SmartLab's adaptive plans and planners.

A planner learns from results so far and proposes where to measure next, in
bluesky-adaptive's terms (``ingest`` and ``suggest``; its ``tell``/``ask`` are
deprecated). Planners are found through the ``smartlab.planners`` entry-point
group or registered explicitly, and implement only the hooks they need, each
marked with this module's ``hookimpl`` (not the analysis plugins' one)::

    smartlab_planner_describe()               once, when the planner is registered
    smartlab_ingest(plan, observations)       each time new results arrive
    smartlab_suggest(plan, n)                 when a plan needs its next points
    smartlab_should_stop(plan)                after each ingest: end (or pause) early?

Planners are called off the analysis worker, in the process that runs the plan
(in-loop) or in an agent process (out-of-loop, through the queueserver). Like
:mod:`smartlab_plugins.hookspecs`, this module imports nothing else of SmartLab's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy

#: The planners' pluggy project, apart from the analysis plugins' (``smartlab``): a planner
#: marks its hooks with this module's ``hookimpl``.
PROJECT_NAME = "smartlab_planners"
ENTRY_POINT_GROUP = "smartlab.planners"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class PlannerInfo:
    """What a planner is and which results it reads."""

    name: str
    version: str
    #: Analysis plugins whose results this planner ingests, e.g. ``("transition_lstm",)``.
    reads: tuple[str, ...]
    summary: str = ""


@dataclass(frozen=True)
class Observation:
    """One event's result, where it was measured and what a plugin found there."""

    run_uid: str
    seq_num: int
    plugin: str
    #: Positions of the scanned axes at this event, e.g. ``{"temperature": 301.5}``.
    position: Mapping[str, float]
    #: The plugin's scalar results for this event, e.g. ``{"p_ordered": 0.93}``.
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Suggestion:
    """A point to measure next, with the reason a scientist would read afterwards."""

    point: Mapping[str, float]
    reason: str
    planner: str = ""
    #: How much the planner expects to learn there (higher first); used by the arbiter.
    score: float = 0.0


@dataclass(frozen=True)
class StopRequest:
    """A planner's request to end (or pause) the plan before its budget is spent."""

    reason: str
    planner: str = ""
    action: Literal["stop", "pause"] = "stop"


@dataclass
class PlanContext:
    """One adaptive plan as a planner sees it.

    ``axes`` maps each scanned axis to its (low, high) limits; a suggestion
    outside them is clamped or rejected by the plan, with the reason recorded.
    ``state`` is private to the planner for this plan. ``options`` are the plan's
    settings a planner may read (e.g. ``{"resolution": 0.5}``, ``{"target": {"j1": 0.005}}``),
    the same for every planner of the plan.
    """

    uid: str
    axes: Mapping[str, tuple[float, float]]
    budget: int
    measured: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@hookspec
def smartlab_planner_describe() -> PlannerInfo:
    """Describe this planner: name, version, the plugins whose results it reads.

    Called once when the planner is registered. Every planner must implement it.
    """


@hookspec
def smartlab_ingest(plan: PlanContext, observations: list[Observation]) -> None:
    """Learn from new results (in the order they arrived); return nothing.

    Called with each batch of observations from the plugins in ``reads``, on the
    plan's planning thread, never on the RunEngine's event loop. May be slow: the
    plan goes on with its fallback sequence meanwhile.
    """


@hookspec
def smartlab_suggest(plan: PlanContext, n: int) -> list[Suggestion]:
    """Propose up to ``n`` points to measure next, best first, each with a reason.

    Return an empty list when there is nothing to propose; the plan then falls
    back to its documented default sequence. Points outside ``plan.axes``, or
    with NaN, are clamped or rejected by the plan (and the reason recorded).
    """


@hookspec
def smartlab_should_stop(plan: PlanContext) -> StopRequest | None:
    """Say whether the plan has learned enough (a stopping criterion), or None to go on.

    Called after each ingest. A ``stop`` request ends the plan cleanly (its run
    gets a stop document with exit status ``success``); a ``pause`` request asks the
    RunEngine to pause, as a user would.
    """
