"""Planner discovery, registration and per-planner hook calls.

Planners load in layers, as analysis plugins do, through the same
:class:`~smartlab_plugins.registry.Registry`: installed entry points of the
``smartlab.planners`` group (SmartLab's built-in planners arrive this way too),
then objects registered explicitly with :meth:`PlannerManager.register`. Every
hook is called for one planner at a time, so a planner that raises is recorded
against itself and the others are still heard.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from smartlab_plugins.adaptive import protocol
from smartlab_plugins.adaptive.protocol import (
    Observation,
    PlanContext,
    PlannerInfo,
    StopRequest,
    Suggestion,
)
from smartlab_plugins.registry import Kind, Registry, UnknownNameError

logger = logging.getLogger(__name__)


class UnknownPlannerError(UnknownNameError):
    """A planner name that no installed or registered planner has."""

    noun = "planner"


#: Planners: the hooks of :mod:`~smartlab_plugins.adaptive.protocol`, in ``smartlab.planners``.
PLANNERS = Kind(
    protocol,
    protocol.ENTRY_POINT_GROUP,
    "smartlab_planner_describe",
    PlannerInfo,
    UnknownPlannerError,
)


@dataclass(frozen=True)
class PlannerFailure:
    """One planner's exception in one hook call, as the decision record keeps it."""

    planner: str
    hook: str
    error: str
    message: str
    traceback: str

    def describe(self) -> str:
        """One line for the log and the decision record: who failed, in which hook, how."""
        return f"{self.planner}.{self.hook} raised {self.error}: {self.message}"


class PlannerManager(Registry[PlannerInfo]):
    """SmartLab's planners: which exist, what they read, and calling them one at a time."""

    def __init__(self, load_entrypoints: bool = True) -> None:
        super().__init__(PLANNERS, load_entrypoints)

    # -- the hooks, for several planners of one plan, failures kept apart ------

    def ingest(
        self,
        names: Sequence[str],
        contexts: Mapping[str, PlanContext],
        observations: Sequence[Observation],
    ) -> list[PlannerFailure]:
        """Give each planner the new observations of the plugins it reads."""
        failures = []
        for name in names:
            wanted = set(self.info(name).reads)
            mine = [o for o in observations if not wanted or o.plugin in wanted]
            if not mine:
                continue
            failure = self._guarded(
                "smartlab_ingest", name, plan=contexts[name], observations=mine
            )[1]
            if failure:
                failures.append(failure)
        return failures

    def suggest(
        self, names: Sequence[str], contexts: Mapping[str, PlanContext], n: int
    ) -> tuple[dict[str, list[Suggestion]], list[PlannerFailure]]:
        """Each planner's suggestions (tagged with its name) and the failures."""
        suggestions: dict[str, list[Suggestion]] = {}
        failures = []
        for name in names:
            answer, failure = self._guarded("smartlab_suggest", name, plan=contexts[name], n=n)
            if failure:
                failures.append(failure)
                continue
            if answer is None:
                continue
            if not isinstance(answer, (list, tuple)) or not all(
                isinstance(s, Suggestion) for s in answer
            ):
                failures.append(_failure(name, "smartlab_suggest", _not_suggestions(answer)))
                continue
            suggestions[name] = [_tagged(s, name) for s in answer]
        return suggestions, failures

    def should_stop(
        self, names: Sequence[str], contexts: Mapping[str, PlanContext]
    ) -> tuple[list[StopRequest], list[PlannerFailure]]:
        """The stop (or pause) requests of the planners, in order, and the failures."""
        requests, failures = [], []
        for name in names:
            answer, failure = self._guarded("smartlab_should_stop", name, plan=contexts[name])
            if failure:
                failures.append(failure)
            elif isinstance(answer, StopRequest):
                requests.append(answer if answer.planner else _tagged(answer, name))
            elif answer is not None:
                failures.append(
                    _failure(
                        name,
                        "smartlab_should_stop",
                        TypeError(f"expected a StopRequest or None, got {answer!r}"),
                    )
                )
        return requests, failures

    def _guarded(self, hook: str, name: str, **kwargs: Any) -> tuple[Any, PlannerFailure | None]:
        try:
            return self.call(hook, name, **kwargs), None
        except Exception as exc:
            failure = _failure(name, hook, exc)
            logger.warning("planner %s", failure.describe())
            return None, failure


def _failure(name: str, hook: str, exc: BaseException) -> PlannerFailure:
    summary = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
    return PlannerFailure(name, hook, type(exc).__name__, str(exc), summary)


def _not_suggestions(answer: Any) -> TypeError:
    return TypeError(f"expected a list of Suggestion, got {answer!r}")


def _tagged(item: Any, name: str) -> Any:
    """``item`` (a Suggestion or StopRequest) with ``planner`` set to the planner that made it."""
    return replace(item, planner=name)
