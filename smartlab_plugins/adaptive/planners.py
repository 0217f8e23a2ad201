"""SmartLab's built-in planners, one per adaptive plan; each implements only the hooks it needs.

``transition_bracket`` (for :func:`~smartlab_plugins.adaptive.plans.adaptive_ramp`)
    Reads ``transition_lstm``'s ``p_transition``: at or above ``threshold`` (0.5)
    the sample has left the phase it started in. Steps on by ``coarse_step`` (K)
    until a frame shows the transition, then bisects the bracket between the last
    untransformed and the first transformed temperature until it is at most
    ``resolution`` (K) wide, and stops. Estimate: the bracket's middle, ± half its width.
``phase_boundary`` (for :func:`~smartlab_plugins.adaptive.plans.adaptive_map`)
    Reads ``phase_cnn``'s class probabilities (``p_<phase>``) along one axis. After
    an ``initial`` coarse grid, proposes the middle of the gap between neighbouring
    points scored by width times (1 if their classes differ) plus their mean
    normalised entropy, i.e. where the classifier is least certain, until every
    class change is located to within ``resolution``.
``precision_target`` (for :func:`~smartlab_plugins.adaptive.plans.count_until_precise`)
    Reads ``spinwave_cnn``'s values and ``*_std``; combines the counts so far by
    inverse-variance weighting and stops once every parameter in ``target``
    (e.g. ``{"j1": 0.005}`` meV) has a combined standard deviation below it.

All three **ignore results their plugin flagged out of distribution**
(``in_distribution`` 0, see docs/models/ood.md): such an answer may be wrong
whatever uncertainty it states, so it neither moves a bracket, nor places a
class boundary, nor enters a combined estimate. The summary counts them
(``ignored_out_of_distribution``); ``phase_boundary`` does not propose a flagged
point again, and leaves unresolved a gap that holds one.

Settings come from the plan's ``options``
(:class:`~smartlab_plugins.adaptive.protocol.PlanContext`).
Each planner leaves a JSON-clean ``plan.state["summary"]`` (its estimate), which the
plan records with its last decision.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from smartlab_plugins.adaptive.protocol import (
    Observation,
    PlanContext,
    PlannerInfo,
    StopRequest,
    Suggestion,
    hookimpl,
)

VERSION = "1.1.0"  # 1.1: results flagged out of distribution are ignored


def trusted(plan: PlanContext, observation: Observation) -> bool:
    """False for a result flagged ``in_distribution`` 0, which is counted in ``plan.state``."""
    flag = observation.values.get("in_distribution")
    if flag is None or bool(flag):
        return True
    plan.state["ignored_out_of_distribution"] = plan.state.get("ignored_out_of_distribution", 0) + 1
    plan.state.setdefault("untrusted_positions", []).append(dict(observation.position))
    return False


def _with_ignored(plan: PlanContext, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with the number of results ignored as out of distribution."""
    return {
        **summary,
        "ignored_out_of_distribution": plan.state.get("ignored_out_of_distribution", 0),
    }


def _axis(plan: PlanContext) -> str:
    """The axis a one-axis planner works along: ``options["axis"]``, else the plan's only one."""
    axis = plan.options.get("axis")
    if axis:
        return str(axis)
    if len(plan.axes) != 1:
        raise ValueError(
            f"expected a plan with one axis or options['axis'], got axes {sorted(plan.axes)}"
        )
    return next(iter(plan.axes))


class TransitionBracket:
    """Brackets a transition temperature by coarse steps, then bisection (see the module)."""

    name = "transition_bracket"

    @hookimpl
    def smartlab_planner_describe(self) -> PlannerInfo:
        return PlannerInfo(
            name=self.name,
            version=VERSION,
            reads=("transition_lstm",),
            summary="coarse steps until the transition shows, then bisection of the bracket",
        )

    @hookimpl
    def smartlab_ingest(self, plan: PlanContext, observations: list[Observation]) -> None:
        axis = _axis(plan)
        indicator = plan.options.get("indicator", "p_transition")
        threshold = float(plan.options.get("threshold", 0.5))
        seen = plan.state.setdefault("seen", [])
        for observation in observations:
            if not trusted(plan, observation):
                continue
            value = observation.values.get(indicator)
            if axis in observation.position and value is not None and math.isfinite(value):
                seen.append((observation.position[axis], value >= threshold, observation.seq_num))

    def _state(self, plan: PlanContext) -> dict[str, Any]:
        """Where things stand, in the ramp's own coordinate ``u`` (= T heating, -T cooling)."""
        sign = -1.0 if plan.options.get("direction") == "cooling" else 1.0
        low, high = plan.axes[_axis(plan)]
        end = high if sign > 0 else -low
        seen = plan.state.get("seen", [])
        before = [sign * t for t, transformed, _ in seen if not transformed]
        last_before = max(before) if before else None
        after = [
            sign * t
            for t, transformed, _ in seen
            if transformed and (last_before is None or sign * t > last_before)
        ]
        first_after = min(after) if after else None
        return {"sign": sign, "end": end, "lo": last_before, "hi": first_after, "n": len(seen)}

    @hookimpl
    def smartlab_suggest(self, plan: PlanContext, n: int) -> list[Suggestion]:
        s = self._state(plan)
        axis, sign = _axis(plan), s["sign"]
        if s["lo"] is None or self._verdict(plan, s) is not None:
            return []
        if s["hi"] is None:
            step = float(plan.options.get("coarse_step", 8.0))
            u = min(s["lo"] + step, s["end"])
            reason = f"no transition seen up to {sign * s['lo']:.2f} K: {step:g} K further"
            return [Suggestion({axis: sign * u}, reason, score=step)]
        width = s["hi"] - s["lo"]
        middle = sign * (s["lo"] + s["hi"]) / 2
        bracket = sorted((sign * s["lo"], sign * s["hi"]))
        reason = (
            f"transition between {bracket[0]:.2f} and {bracket[1]:.2f} K "
            f"({width:.2f} K wide): bisect at {middle:.2f} K"
        )
        return [Suggestion({axis: middle}, reason, score=width)]

    @hookimpl
    def smartlab_should_stop(self, plan: PlanContext) -> StopRequest | None:
        s = self._state(plan)
        verdict = self._verdict(plan, s)
        return StopRequest(verdict) if verdict else None

    def _verdict(self, plan: PlanContext, s: dict[str, Any]) -> str | None:
        sign = s["sign"]
        if s["n"] and s["lo"] is None:
            return "already transformed at the first point: start further from the transition"
        if s["lo"] is None:
            return None
        if s["hi"] is None:
            if s["lo"] >= s["end"]:
                plan.state["summary"] = _with_ignored(
                    plan, {"transition": False, "up_to": sign * s["lo"]}
                )
                return f"no transition up to the end of the ramp ({sign * s['end']:.2f} K)"
            return None
        width = s["hi"] - s["lo"]
        estimate = sign * (s["lo"] + s["hi"]) / 2
        plan.state["summary"] = _with_ignored(
            plan,
            {
                "transition": True,
                "temperature": estimate,
                "half_width": width / 2,
                "bracket": sorted((sign * s["lo"], sign * s["hi"])),
            },
        )
        resolution = float(plan.options.get("resolution", 1.0))
        if width <= resolution:
            return (
                f"converged: transition at {estimate:.2f} ± {width / 2:.2f} K "
                f"(bracket {width:.2f} K <= resolution {resolution:g} K)"
            )
        return None


class PhaseBoundary:
    """Samples a line where the phase classifier is least certain (see the module)."""

    name = "phase_boundary"

    @hookimpl
    def smartlab_planner_describe(self) -> PlannerInfo:
        return PlannerInfo(
            name=self.name,
            version=VERSION,
            reads=("phase_cnn",),
            summary="samples where the phase class changes or its probabilities are uncertain",
        )

    @hookimpl
    def smartlab_ingest(self, plan: PlanContext, observations: list[Observation]) -> None:
        axis = _axis(plan)
        seen = plan.state.setdefault("seen", {})
        for observation in observations:
            names = sorted(k for k in observation.values if k.startswith("p_"))
            if axis not in observation.position or not names or not trusted(plan, observation):
                continue
            p = np.clip(np.array([float(observation.values[k]) for k in names]), 1e-12, 1.0)
            p = p / p.sum()
            entropy = float(-(p * np.log(p)).sum() / math.log(len(p))) if len(p) > 1 else 0.0
            seen[observation.position[axis]] = (names[int(p.argmax())][2:], entropy)

    def _candidates(self, plan: PlanContext) -> list[Suggestion]:
        axis = _axis(plan)
        low, high = plan.axes[axis]
        seen = plan.state.get("seen", {})
        untrusted = [p[axis] for p in plan.state.get("untrusted_positions", []) if axis in p]
        initial = int(plan.options.get("initial", 5))
        if len(seen) + len(untrusted) < initial:
            grid = np.linspace(low, high, initial)
            done = [*seen, *untrusted]
            todo = [x for x in grid if not any(abs(x - s) < 1e-9 for s in done)]
            return [
                Suggestion({axis: float(x)}, f"initial coarse grid of {initial} points", score=1.0)
                for x in todo
            ]
        resolution = float(plan.options.get("resolution", 0.005))
        span = high - low
        xs = sorted(seen)
        found = []
        for a, b in itertools.pairwise(xs):
            width = b - a
            (class_a, h_a), (class_b, h_b) = seen[a], seen[b]
            differ = class_a != class_b
            uncertainty = (h_a + h_b) / 2
            if width <= resolution or (not differ and uncertainty < 0.2):
                continue
            if any(a < u < b for u in untrusted):  # measured there; flagged: not again
                continue
            score = width / span * (float(differ) + uncertainty)
            why = (
                f"class {class_a} at {a:.4f}, {class_b} at {b:.4f}"
                if differ
                else f"uncertain class (mean entropy {uncertainty:.2f}) between {a:.4f} and {b:.4f}"
            )
            reason = f"{why}: gap {width:.4f} > resolution {resolution:g}"
            found.append(Suggestion({axis: (a + b) / 2}, reason, score=score))
        return sorted(found, key=lambda s: -s.score)

    @hookimpl
    def smartlab_suggest(self, plan: PlanContext, n: int) -> list[Suggestion]:
        return self._candidates(plan)[:n]

    @hookimpl
    def smartlab_should_stop(self, plan: PlanContext) -> StopRequest | None:
        seen = plan.state.get("seen", {})
        xs = sorted(seen)
        boundaries = [
            {"between": [seen[a][0], seen[b][0]], "at": (a + b) / 2, "half_width": (b - a) / 2}
            for a, b in itertools.pairwise(xs)
            if seen[a][0] != seen[b][0]
        ]
        plan.state["summary"] = _with_ignored(plan, {"boundaries": boundaries})
        untrusted = plan.state.get("untrusted_positions", [])
        if len(seen) + len(untrusted) < int(plan.options.get("initial", 5)):
            return None
        if self._candidates(plan):
            return None
        where = ", ".join(
            f"{b['between'][0]}|{b['between'][1]} at {b['at']:.4f}" for b in boundaries
        )
        resolution = float(plan.options.get("resolution", 0.005))
        return StopRequest(
            f"converged: {len(boundaries)} class change(s) located to within {resolution:g}"
            + (f" ({where})" if where else "")
        )


class PrecisionTarget:
    """Stops repeated counting once combined uncertainties are below their targets."""

    name = "precision_target"

    @hookimpl
    def smartlab_planner_describe(self) -> PlannerInfo:
        return PlannerInfo(
            name=self.name,
            version=VERSION,
            reads=("spinwave_cnn",),
            summary="counts again until the inverse-variance combined *_std are below target",
        )

    @staticmethod
    def _target(plan: PlanContext) -> Mapping[str, float]:
        target = plan.options.get("target")
        if not isinstance(target, Mapping) or not target:
            raise ValueError(
                "precision_target needs the plan option 'target', e.g. {'j1': 0.005}, "
                f"got {target!r}"
            )
        return target

    @hookimpl
    def smartlab_ingest(self, plan: PlanContext, observations: list[Observation]) -> None:
        target = self._target(plan)
        seen = plan.state.setdefault("seen", {name: [] for name in target})
        for observation in observations:
            if not trusted(plan, observation):
                continue
            for name in target:
                value = observation.values.get(name)
                std = observation.values.get(f"{name}_std")
                if value is not None and std is not None and std > 0 and math.isfinite(std):
                    seen[name].append((float(value), float(std)))

    def _combined(self, plan: PlanContext) -> dict[str, tuple[float, float, int]]:
        combined = {}
        for name, pairs in plan.state.get("seen", {}).items():
            if pairs:
                values, stds = np.array(pairs).T
                weights = 1.0 / stds**2
                combined[name] = (
                    float((weights * values).sum() / weights.sum()),
                    float(1.0 / math.sqrt(weights.sum())),
                    len(pairs),
                )
        return combined

    @hookimpl
    def smartlab_suggest(self, plan: PlanContext, n: int) -> list[Suggestion]:
        target, combined = self._target(plan), self._combined(plan)
        worst = max(
            target,
            key=lambda k: combined[k][1] / target[k] if k in combined else math.inf,
        )
        if worst not in combined:
            return [Suggestion({}, f"no estimate of {worst} yet: count again", score=1.0)]
        mean, std, counts = combined[worst]
        needed = math.ceil(counts * (std / target[worst]) ** 2) - counts
        reason = (
            f"{worst} = {mean:.4f} ± {std:.4f} after {counts} count(s), target ± {target[worst]:g}:"
            f" about {max(needed, 1)} more"
        )
        return [Suggestion({}, reason, score=std / target[worst])]

    @hookimpl
    def smartlab_should_stop(self, plan: PlanContext) -> StopRequest | None:
        target, combined = self._target(plan), self._combined(plan)
        plan.state["summary"] = _with_ignored(
            plan,
            {
                name: {"value": mean, "std": std, "counts": counts}
                for name, (mean, std, counts) in combined.items()
            },
        )
        if set(combined) >= set(target) and all(combined[k][1] < target[k] for k in target):
            met = ", ".join(f"{k} = {combined[k][0]:.4f} ± {combined[k][1]:.4f}" for k in target)
            counts = max(c for _, _, c in combined.values())
            return StopRequest(f"converged: {met} after {counts} count(s), below target")
        return None


transition_bracket = TransitionBracket()
phase_boundary = PhaseBoundary()
precision_target = PrecisionTarget()
