"""The arbiter: vetting (NaN, limits, axes), priority and round-robin, and what it records."""

from __future__ import annotations

import json
import math

import pytest

from smartlab_plugins.adaptive.arbiter import Arbiter, vet
from smartlab_plugins.adaptive.protocol import Suggestion

AXES = {"x": (0.0, 1.0)}


def s(planner, x, reason="because"):
    return Suggestion({"x": x}, reason, planner=planner)


@pytest.mark.parametrize(
    ("point", "why"),
    [
        ({"x": math.nan}, "not finite"),
        ({"x": math.inf}, "not finite"),
        ({"x": "left"}, "not a number"),
        ({"y": 0.5}, "unknown axis y"),
        ({}, "no value for axis x"),
    ],
)
def test_bad_points_are_rejected_with_a_reason(point, why):
    vetted = vet(Suggestion(point, "?"), AXES)
    assert vetted.point is None and why in vetted.note


def test_out_of_limits_is_clamped_or_rejected_as_configured():
    assert vet(s("a", 1.5), AXES).point == {"x": 1.0}
    assert "clamped to 1" in vet(s("a", 1.5), AXES).note
    assert vet(s("a", 1.5), AXES, "reject").point is None


def test_priority_takes_the_first_ranked_planner_with_a_valid_suggestion():
    arbiter = Arbiter("priority", order=["a", "b"])
    choice = arbiter.choose({"a": [s("a", math.nan)], "b": [s("b", 0.2), s("b", 0.3)]}, AXES)
    assert choice.suggestion.planner == "b" and choice.point == {"x": 0.2}
    record = choice.record()
    json.dumps(record)  # JSON-clean, NaN included
    assert [c["planner"] for c in record["candidates"]] == ["a", "b", "b"]
    assert record["rejected"][0]["planner"] == "a" and record["rejected"][0]["point"]["x"] == "nan"
    assert "priority: b ranks first" in record["why"]


def test_round_robin_takes_turns_and_skips_a_planner_with_nothing_valid():
    arbiter = Arbiter("round_robin", order=["a", "b", "c"])
    both = {"a": [s("a", 0.1)], "b": [s("b", 0.2)], "c": [s("c", 0.3)]}
    winners = [arbiter.choose(both, AXES).suggestion.planner for _ in range(4)]
    assert winners == ["a", "b", "c", "a"]
    choice = arbiter.choose({"a": [s("a", 0.1)], "b": [s("b", math.nan)], "c": []}, AXES)
    assert choice.suggestion.planner == "a" and "(b, c had nothing valid)" in choice.reason


def test_nothing_valid_gives_no_choice_and_says_why():
    arbiter = Arbiter()
    assert arbiter.choose({}, AXES).reason == "no suggestion"
    assert arbiter.choose({"a": [s("a", math.nan)]}, AXES).reason == "every suggestion was rejected"
    with pytest.raises(ValueError, match="policy"):
        Arbiter("loudest")
