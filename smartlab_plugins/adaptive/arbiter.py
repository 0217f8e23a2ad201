"""Choosing one next point when several planners suggest at once, and saying why.

Every suggestion is vetted first (:func:`vet`): a point with a missing, unknown
or non-finite coordinate is rejected; a coordinate outside the plan's limits is
clamped onto them (``out_of_limits="clamp"``, the default) or the point rejected
(``"reject"``). Then the :class:`Arbiter` picks among the valid suggestions by
its policy:

``"priority"``
    Planners in ``order`` (earlier first; unlisted ones after, by name): the
    first planner with a valid suggestion wins, with its best (first) one.
``"round_robin"``
    Planners take turns in ``order``: each choice starts with the planner after
    the previous winner, skipping planners with nothing valid to offer.

Both record what they chose among (:class:`Choice`): every candidate with its
planner, point, reason and score, every rejection and clamp with its reason, and
one sentence saying why the winner won.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from smartlab_plugins.adaptive.protocol import Suggestion

logger = logging.getLogger(__name__)

POLICIES = ("priority", "round_robin")
OUT_OF_LIMITS = ("clamp", "reject")


@dataclass(frozen=True)
class Vetted:
    """A suggestion after the limits check: the point to use (None: rejected) and why."""

    suggestion: Suggestion
    point: dict[str, float] | None
    note: str = ""


@dataclass(frozen=True)
class Choice:
    """What the arbiter chose, among what, and why."""

    suggestion: Suggestion | None
    point: dict[str, float] | None
    policy: str
    reason: str
    candidates: tuple[Suggestion, ...] = ()
    rejected: tuple[Vetted, ...] = ()
    clamped: tuple[Vetted, ...] = ()

    def record(self) -> dict[str, Any]:
        """The JSON-clean form kept in the run's decision stream."""
        return {
            "policy": self.policy,
            "why": self.reason,
            "candidates": [_suggestion_record(s) for s in self.candidates],
            "rejected": [
                {**_suggestion_record(v.suggestion), "why": v.note} for v in self.rejected
            ],
            "clamped": [
                {**_suggestion_record(v.suggestion), "to": v.point, "why": v.note}
                for v in self.clamped
            ],
        }


def vet(
    suggestion: Suggestion,
    axes: Mapping[str, tuple[float, float]],
    out_of_limits: str = "clamp",
) -> Vetted:
    """Check a suggested point against the plan's axes and limits (see the module's text).

    An empty point is valid for a plan without axes (e.g. "count again").
    """
    point = suggestion.point
    if not isinstance(point, Mapping):
        return Vetted(suggestion, None, f"point {point!r} is not a mapping of axis to value")
    unknown = sorted(set(point) - set(axes))
    if unknown:
        return Vetted(suggestion, None, f"unknown axis {', '.join(unknown)}; axes: {sorted(axes)}")
    missing = sorted(set(axes) - set(point))
    if missing:
        return Vetted(suggestion, None, f"no value for axis {', '.join(missing)}")
    clean: dict[str, float] = {}
    notes = []
    for axis, value in point.items():
        low, high = axes[axis]
        try:
            number = float(value)
        except (TypeError, ValueError):
            return Vetted(suggestion, None, f"{axis}={value!r} is not a number")
        if not math.isfinite(number):
            return Vetted(suggestion, None, f"{axis}={number} is not finite")
        if not low <= number <= high:
            if out_of_limits == "reject":
                return Vetted(
                    suggestion, None, f"{axis}={number:g} is outside the limits [{low:g}, {high:g}]"
                )
            clamped = min(max(number, low), high)
            notes.append(f"{axis}={number:g} clamped to {clamped:g} (limits [{low:g}, {high:g}])")
            number = clamped
        clean[axis] = number
    return Vetted(suggestion, clean, "; ".join(notes))


@dataclass
class Arbiter:
    """Picks one suggestion among several planners' (see the module's text for the policies).

    ``order`` ranks the planners (earlier first); ``out_of_limits`` is ``"clamp"``
    or ``"reject"``. A round-robin arbiter remembers the last winner, so use one
    arbiter per plan.
    """

    policy: str = "priority"
    order: Sequence[str] = ()
    out_of_limits: str = "clamp"
    _last: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"arbiter policy must be one of {POLICIES}, got {self.policy!r}")
        if self.out_of_limits not in OUT_OF_LIMITS:
            raise ValueError(
                f"out_of_limits must be one of {OUT_OF_LIMITS}, got {self.out_of_limits!r}"
            )

    def ranked(self, names: Sequence[str]) -> list[str]:
        """``names`` in this arbiter's order: listed ones first, the rest by name."""
        listed = [n for n in self.order if n in names]
        return listed + sorted(n for n in names if n not in listed)

    def choose(
        self,
        suggestions: Mapping[str, Sequence[Suggestion]],
        axes: Mapping[str, tuple[float, float]],
    ) -> Choice:
        """Vet every suggestion, then pick one by the policy; None when nothing is valid."""
        candidates = tuple(s for name in self.ranked(list(suggestions)) for s in suggestions[name])
        valid: dict[str, list[Vetted]] = {}
        rejected, clamped = [], []
        for suggestion in candidates:
            vetted = vet(suggestion, axes, self.out_of_limits)
            if vetted.point is None:
                rejected.append(vetted)
                logger.warning(
                    "rejected a suggestion of planner %s (%s): %s",
                    suggestion.planner,
                    dict(suggestion.point) if isinstance(suggestion.point, Mapping) else "?",
                    vetted.note,
                )
                continue
            if vetted.note:
                clamped.append(vetted)
                logger.warning("suggestion of planner %s: %s", suggestion.planner, vetted.note)
            valid.setdefault(suggestion.planner, []).append(vetted)
        common = {
            "policy": self.policy,
            "candidates": candidates,
            "rejected": tuple(rejected),
            "clamped": tuple(clamped),
        }
        if not valid:
            why = "no suggestion" if not candidates else "every suggestion was rejected"
            return Choice(None, None, reason=why, **common)
        winner, why = self._winner(list(valid))
        chosen = valid[winner][0]
        self._last = winner
        return Choice(chosen.suggestion, chosen.point, reason=why, **common)

    def _winner(self, offering: list[str]) -> tuple[str, str]:
        ranked = self.ranked(offering)
        if self.policy == "priority":
            others = ", ".join(ranked[1:])
            beaten = f" over {others}" if others else " (the only planner with a valid suggestion)"
            return ranked[0], f"priority: {ranked[0]} ranks first{beaten}"
        known = [*self.order, *offering, *([self._last] if self._last else [])]
        everyone = self.ranked(list(dict.fromkeys(known)))
        start = everyone.index(self._last) + 1 if self._last in everyone else 0
        turn = everyone[start:] + everyone[:start]
        winner = next(name for name in turn if name in offering)
        skipped = turn[: turn.index(winner)]
        note = f" ({', '.join(skipped)} had nothing valid)" if skipped else ""
        after = f" after {self._last}" if self._last else " first"
        return winner, f"round_robin: {winner}'s turn{after}{note}"


def _suggestion_record(suggestion: Suggestion) -> dict[str, Any]:
    point = suggestion.point if isinstance(suggestion.point, Mapping) else {}
    return {
        "planner": suggestion.planner,
        "point": {k: _json_number(v) for k, v in point.items()},
        "reason": suggestion.reason,
        "score": _json_number(suggestion.score),
    }


def _json_number(value: Any) -> Any:
    """A number JSON can carry (NaN and infinities as their names), or its repr."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return repr(value)
    return number if math.isfinite(number) else str(number)
