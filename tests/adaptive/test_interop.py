"""bluesky-adaptive's optimizers (1.0) and agents (0.x) as SmartLab planners."""

from __future__ import annotations

from bluesky_adaptive.protocols import Optimizer, SupportsStoppingCriteria

from smartlab_plugins.adaptive.agent import QueueAgent, QueueTarget
from smartlab_plugins.adaptive.interop import OptimizerPlanner
from smartlab_plugins.adaptive.protocol import Observation, PlanContext

TARGET = QueueTarget("measure_compositions", {"sample_x": (0.3, 0.6)}, [{"sample_x": 0.3}])
CONTEXT = PlanContext("e", {"sample_x": (0.3, 0.6)}, budget=4)


class Optimizer10:
    """bluesky-adaptive 1.0's Optimizer protocol, the way its docs describe it."""

    def __init__(self) -> None:
        self.ingested = []
        self.stop = False

    def suggest(self, num_points=None):
        return [{"_id": f"t{i}", "sample_x": 0.4 + 0.05 * i} for i in range(num_points or 1)]

    def ingest(self, points):
        self.ingested.extend(points)

    def get_best_points(self):
        return []

    def should_stop(self):
        return self.stop, "converged" if self.stop else None


class Agent0x:
    """bluesky-adaptive 0.x's agent convention: ingest(x, y), suggest(batch_size)."""

    def __init__(self) -> None:
        self.told = []

    def ingest(self, x, y):
        self.told.append((x, y))

    def suggest(self, batch_size):
        return [{"doc": i} for i in range(batch_size)], [0.5 + 0.01 * i for i in range(batch_size)]


def observation(x: float, confidence: float) -> Observation:
    return Observation("run", 1, "phase_cnn", {"sample_x": x}, {"confidence": confidence})


def test_a_1_0_optimizer_suggests_through_the_agent_and_gets_its_trial_ids_back() -> None:
    optimizer = Optimizer10()
    assert isinstance(optimizer, Optimizer) and isinstance(optimizer, SupportsStoppingCriteria)
    planner = OptimizerPlanner(
        optimizer, name="opt", reads=("phase_cnn",), outcomes=("confidence",)
    )
    agent = QueueAgent(
        planner, TARGET, experiment="e", zmq_control_addr="tcp://127.0.0.1:1", tiled_uri="x"
    )
    decision = agent.decide(0)
    assert decision.points == [{"sample_x": 0.4}, {"sample_x": 0.45}]
    assert decision.reasons == [
        "suggested by Optimizer10 (trial t0)",
        "suggested by Optimizer10 (trial t1)",
    ]
    planner.smartlab_ingest(CONTEXT, [observation(0.45, 0.9), observation(0.33, 0.7)])
    assert optimizer.ingested == [
        {"sample_x": 0.45, "confidence": 0.9, "_id": "t1"},
        {"sample_x": 0.33, "confidence": 0.7},  # measured without a suggestion: a baseline
    ]
    assert planner.smartlab_should_stop(CONTEXT) is None
    optimizer.stop = True
    assert planner.smartlab_should_stop(CONTEXT).reason == "converged"


def test_a_0x_agent_is_told_x_and_y_and_asked_for_a_batch() -> None:
    legacy = Agent0x()
    planner = OptimizerPlanner(legacy, name="old", reads=("phase_cnn",), outcomes=("confidence",))
    assert planner.legacy
    planner.smartlab_ingest(CONTEXT, [observation(0.45, 0.9)])
    assert legacy.told == [(0.45, 0.9)]
    suggestions = planner.smartlab_suggest(CONTEXT, 2)
    assert [s.point for s in suggestions] == [{"sample_x": 0.5}, {"sample_x": 0.51}]
    assert planner.smartlab_should_stop(CONTEXT) is None
