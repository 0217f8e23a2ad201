"""The agent's decisions without any service: bad suggestions are clamped or rejected, with
the reason recorded, and the agent falls back to the target's default sequence."""

from __future__ import annotations

import logging
import math

import pytest

from smartlab_plugins.adaptive.agent import QueueAgent, QueueTarget, decision_uid
from smartlab_plugins.adaptive.protocol import PlannerInfo, Suggestion, hookimpl

TARGET = QueueTarget(
    plan="measure_compositions",
    axes={"sample_x": (0.3, 0.6)},
    fallback=[{"sample_x": 0.3}, {"sample_x": 0.6}, {"sample_x": 0.45}],
)


class Returns:
    """A planner whose suggest returns (or raises) what it was given."""

    def __init__(self, answer) -> None:
        self.answer = answer

    @hookimpl
    def smartlab_planner_describe(self) -> PlannerInfo:
        return PlannerInfo("returns", "0.1", reads=("phase_cnn",))

    @hookimpl
    def smartlab_suggest(self, plan, n):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def decide(answer, n: int = 2):
    agent = QueueAgent(
        Returns(answer),
        TARGET,
        experiment="offline",
        zmq_control_addr="tcp://127.0.0.1:1",
        tiled_uri="http://127.0.0.1:1",
        points_per_round=n,
    )
    return agent.decide(0)


def test_a_point_outside_the_limits_is_clamped_and_the_reason_recorded(caplog) -> None:
    caplog.set_level(logging.WARNING)
    decision = decide(
        [Suggestion({"sample_x": 0.9}, "far out"), Suggestion({"sample_x": 0.5}, "in")]
    )
    assert decision.points == [{"sample_x": 0.6}, {"sample_x": 0.5}]
    assert decision.reasons == ["far out", "in"]
    assert not decision.fallback
    assert decision.corrections == [
        {
            "point": {"sample_x": 0.9},
            "action": "clamped",
            "reason": "sample_x = 0.9 outside [0.3, 0.6], clamped to 0.6",
        }
    ]
    assert "clamped to 0.6" in caplog.text
    assert decision.uid == decision_uid("offline", 0)


@pytest.mark.parametrize(
    ("answer", "why", "reason"),
    [
        ([Suggestion({"sample_x": math.nan}, "nan")], "every suggestion was rejected",
         "sample_x = nan is not finite"),
        ([Suggestion({"sample_x": math.inf}, "inf")], "every suggestion was rejected",
         "sample_x = inf is not finite"),
        ([Suggestion({"temperature": 300.0}, "wrong axis")], "every suggestion was rejected",
         "no value for axis sample_x (expected ['sample_x'])"),
        ([Suggestion({"sample_x": "middle"}, "text")], "every suggestion was rejected",
         "sample_x = 'middle' is not a number"),
        ([{"sample_x": 0.4}], "every suggestion was rejected", "not a Suggestion"),
        ([], "the planner suggested nothing", None),
        (None, "the planner suggested nothing", None),
        (RuntimeError("model diverged"), "the planner failed: RuntimeError('model diverged')",
         None),
    ],
)  # fmt: skip
def test_unusable_suggestions_fall_back_to_the_default_sequence(answer, why, reason) -> None:
    decision = decide(answer)
    assert decision.fallback
    assert decision.points == [{"sample_x": 0.3}, {"sample_x": 0.6}]
    assert decision.why == why
    assert decision.reasons == [f"fallback sequence: {why}"] * 2
    assert [c["reason"] for c in decision.corrections] == ([reason] if reason else [])
    assert all(c["action"] == "rejected" for c in decision.corrections)


def test_the_decision_record_is_json_clean() -> None:
    import json

    decision = decide([Suggestion({"sample_x": math.nan}, "nan")])
    record = json.loads(json.dumps(decision.metadata(), allow_nan=False))
    assert record["corrections"][0]["point"] == {"sample_x": "nan"}
    assert record["experiment"] == "offline" and record["round"] == 0
