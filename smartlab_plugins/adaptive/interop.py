"""bluesky-adaptive's optimizers and agents as SmartLab planners.

bluesky-adaptive 1.0 calls its planners *optimizers*
(:class:`bluesky_adaptive.protocols.Optimizer`): ``suggest(num_points)`` returns
mappings of parameter values, each with a hashable ``"_id"``, and
``ingest(points)`` takes mappings of parameters and outcomes, with the ``"_id"``
of the suggestion they answer when there is one. Its 0.x agents spoke
``ingest(x, y)`` (one independent and one dependent value per call) and
``suggest(batch_size)`` (returning the documents and the points). Either wraps
into a planner for :class:`~smartlab_plugins.adaptive.agent.QueueAgent` or the
in-loop plans::

    planner = OptimizerPlanner(optimizer, name="ax", reads=("phase_cnn",), outcomes=("confidence",))

The wrapper only translates: observations become points (position, then the
``outcomes`` of the plugin's values), suggestions keep their ``"_id"`` in the
reason a scientist reads, and an optimizer with ``should_stop()`` (bluesky-adaptive's
``SupportsStoppingCriteria``) stops the plan.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
from bluesky_adaptive.protocols import ID_KEY, SupportsStoppingCriteria

from smartlab_plugins.adaptive.protocol import (
    Observation,
    PlanContext,
    PlannerInfo,
    StopRequest,
    Suggestion,
    hookimpl,
)


class OptimizerPlanner:
    """A bluesky-adaptive optimizer (1.0) or agent (0.x) behind SmartLab's planner hooks."""

    def __init__(
        self,
        optimizer: Any,
        *,
        name: str,
        reads: Sequence[str],
        outcomes: Sequence[str],
        version: str = "1.0",
    ) -> None:
        self.optimizer = optimizer
        self.info = PlannerInfo(
            name, version, tuple(reads), f"bluesky-adaptive {type(optimizer).__name__}"
        )
        self.outcomes = tuple(outcomes)
        #: 0.x agents take ``ingest(x, y)``; 1.0 optimizers ``ingest(points)``.
        self.legacy = len(inspect.signature(optimizer.ingest).parameters) == 2
        self._ids: dict[tuple[float, ...], Any] = {}

    @hookimpl
    def smartlab_planner_describe(self) -> PlannerInfo:
        return self.info

    @hookimpl
    def smartlab_ingest(self, plan: PlanContext, observations: list[Observation]) -> None:
        axes = list(plan.axes)
        for obs in observations:
            if not all(key in obs.values for key in self.outcomes):
                continue
            x = [float(obs.position[axis]) for axis in axes]
            y = [float(obs.values[key]) for key in self.outcomes]
            if self.legacy:
                self.optimizer.ingest(_one_or_array(x), _one_or_array(y))
                continue
            point: dict[str, Any] = {**dict(zip(axes, x, strict=True))}
            point.update(zip(self.outcomes, y, strict=True))
            if (trial := self._ids.pop(_key(x), None)) is not None:
                point[ID_KEY] = trial
            self.optimizer.ingest([point])

    @hookimpl
    def smartlab_suggest(self, plan: PlanContext, n: int) -> list[Suggestion]:
        axes = list(plan.axes)
        source = type(self.optimizer).__name__
        if self.legacy:
            answer = self.optimizer.suggest(n)
            points = answer[1] if isinstance(answer, tuple) and len(answer) == 2 else answer
            out = []
            for raw in points:
                values = np.atleast_1d(np.asarray(raw, dtype=float))
                point = dict(zip(axes, values.tolist(), strict=True))
                out.append(Suggestion(point, f"suggested by {source}", self.info.name))
            return out
        out = []
        for mapping in self.optimizer.suggest(n):
            point = {axis: float(mapping[axis]) for axis in axes if axis in mapping}
            trial = mapping.get(ID_KEY)
            if trial is not None and len(point) == len(axes):
                self._ids[_key([point[axis] for axis in axes])] = trial
            reason = f"suggested by {source}" + (f" (trial {trial})" if trial is not None else "")
            out.append(Suggestion(point, reason, self.info.name))
        return out

    @hookimpl
    def smartlab_should_stop(self, plan: PlanContext) -> StopRequest | None:
        if not isinstance(self.optimizer, SupportsStoppingCriteria):
            return None
        stop, reason = self.optimizer.should_stop()
        return (
            StopRequest(reason or "the optimizer's stopping criterion", self.info.name)
            if stop
            else None
        )


def _key(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 9) for v in values)


def _one_or_array(values: list[float]) -> float | np.ndarray:
    return values[0] if len(values) == 1 else np.asarray(values)
