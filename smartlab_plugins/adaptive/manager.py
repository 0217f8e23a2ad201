"""Planner discovery, registration and per-planner hook calls.

Planners load in layers, as analysis plugins do (:mod:`smartlab_plugins.manager`):
installed entry points of the ``smartlab.planners`` group (SmartLab's built-in
planners arrive this way too), then objects registered explicitly with
:meth:`PlannerManager.register`. Every hook is called for one planner at a time,
so a planner that raises is recorded against itself and the others are still heard.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pluggy

from smartlab_plugins.adaptive import protocol
from smartlab_plugins.adaptive.protocol import (
    Observation,
    PlanContext,
    PlannerInfo,
    StopRequest,
    Suggestion,
)

logger = logging.getLogger(__name__)


class UnknownPlannerError(KeyError):
    """A planner name that no installed or registered planner has."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = sorted(available)
        super().__init__(name)

    def __str__(self) -> str:
        listed = ", ".join(self.available) or "none"
        return f"unknown planner {self.name!r}; available planners: {listed}"


@dataclass(frozen=True)
class PlannerFailure:
    """One planner's exception in one hook call, as the decision record keeps it."""

    planner: str
    hook: str
    error: str
    message: str
    traceback: str

    def describe(self) -> str:
        return f"{self.planner}.{self.hook} raised {self.error}: {self.message}"


class PlannerManager:
    """SmartLab's planners: which exist, what they read, and calling them one at a time."""

    def __init__(self, load_entrypoints: bool = True) -> None:
        self._pm = pluggy.PluginManager(protocol.PROJECT_NAME)
        self._pm.add_hookspecs(protocol)
        self._infos: dict[str, PlannerInfo] = {}
        self._sources: dict[str, str] = {}
        self._callers: dict[tuple[str, str], Any] = {}
        if load_entrypoints:
            self._load_entrypoints()

    def _load_entrypoints(self) -> None:
        self._pm.load_setuptools_entrypoints(protocol.ENTRY_POINT_GROUP)
        self._pm.check_pending()
        for planner, dist in self._pm.list_plugin_distinfo():
            name = self._pm.get_name(planner)
            info = self._describe(name)
            if info.name != name:
                self._pm.unregister(planner)
                raise pluggy.PluginValidationError(
                    planner,
                    f"planner from entry point {name!r} of {dist.project_name} describes "
                    f"itself as {info.name!r}; the two names must match",
                )
            self._infos[name] = info
            self._sources[name] = f"{dist.project_name} {dist.version}"

    def register(self, planner: object, source: str = "registered in this session") -> str:
        """Register a planner object or module and return its name.

        Raises ``pluggy.PluginValidationError`` when it lacks
        ``smartlab_planner_describe``, or a hook implementation does not match
        its specification or names a hook that does not exist.
        """
        describe = getattr(planner, "smartlab_planner_describe", None)
        if describe is None:
            raise pluggy.PluginValidationError(
                planner,
                f"{planner!r} does not implement the required hook smartlab_planner_describe",
            )
        info = describe()
        if not isinstance(info, PlannerInfo):
            raise pluggy.PluginValidationError(
                planner,
                f"smartlab_planner_describe of {planner!r} returned {info!r}, not a PlannerInfo",
            )
        if info.name in self._infos:
            raise ValueError(f"a planner named {info.name!r} is already registered")
        self._pm.register(planner, name=info.name)
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError:
            self._pm.unregister(planner)
            raise
        self._infos[info.name] = info
        self._sources[info.name] = source
        self._callers.clear()
        return info.name

    def unregister(self, name: str) -> None:
        self._pm.unregister(name=self._check(name))
        del self._infos[name], self._sources[name]
        self._callers.clear()

    def names(self) -> list[str]:
        """Names of all planners, sorted."""
        return sorted(self._infos)

    def info(self, name: str) -> PlannerInfo:
        return self._infos[self._check(name)]

    def source(self, name: str) -> str:
        """Where a planner came from: its distribution and version, or this session."""
        return self._sources[self._check(name)]

    def resolve(self, names: Iterable[str]) -> list[str]:
        """Check planner names, raising :class:`UnknownPlannerError` for the first unknown one."""
        return [self._check(name) for name in names]

    def call(self, hook: str, name: str, **kwargs: Any) -> Any:
        """Call ``hook`` of one planner only; its return value, or None if it has none."""
        caller = self._callers.get((hook, name))
        if caller is None:
            others = [p for n, p in self._pm.list_name_plugin() if n != name]
            caller = self._pm.subset_hook_caller(hook, remove_plugins=others)
            self._callers[(hook, name)] = caller
        results = caller(**kwargs)
        return results[0] if results else None

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

    def _describe(self, name: str) -> PlannerInfo:
        info = self.call("smartlab_planner_describe", name)
        if not isinstance(info, PlannerInfo):
            raise pluggy.PluginValidationError(
                self._pm.get_plugin(name),
                f"planner {name!r} must implement smartlab_planner_describe returning a "
                f"PlannerInfo, got {info!r}",
            )
        return info

    def _check(self, name: str) -> str:
        if name not in self._infos:
            raise UnknownPlannerError(name, self._infos)
        return name


def _failure(name: str, hook: str, exc: BaseException) -> PlannerFailure:
    summary = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
    return PlannerFailure(name, hook, type(exc).__name__, str(exc), summary)


def _not_suggestions(answer: Any) -> TypeError:
    return TypeError(f"expected a list of Suggestion, got {answer!r}")


def _tagged(item: Any, name: str) -> Any:
    """``item`` (a Suggestion or StopRequest) with ``planner`` set to the planner that made it."""
    return replace(item, planner=name)
