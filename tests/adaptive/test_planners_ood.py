"""The built-in planners ignore results flagged out of distribution, and say how many."""

from __future__ import annotations

from smartlab_plugins.adaptive.planners import PhaseBoundary, PrecisionTarget, TransitionBracket
from smartlab_plugins.adaptive.protocol import Observation, PlanContext


def observation(
    seq_num: int, plugin: str, position: dict, values: dict, inside: int
) -> Observation:
    return Observation("run", seq_num, plugin, position, {**values, "in_distribution": inside})


def test_transition_bracket_is_not_moved_by_a_flagged_frame() -> None:
    planner = TransitionBracket()
    plan = PlanContext("run", {"temperature": (400.0, 600.0)}, 20, options={"resolution": 1.0})
    planner.smartlab_ingest(
        plan,
        [
            observation(1, "transition_lstm", {"temperature": 450.0}, {"p_transition": 0.01}, 1),
            # a garbage frame that happens to read "transformed": not a transition
            observation(2, "transition_lstm", {"temperature": 458.0}, {"p_transition": 0.99}, 0),
        ],
    )

    (suggestion,) = planner.smartlab_suggest(plan, 1)
    assert "no transition seen up to 450.00 K" in suggestion.reason  # steps on, no bisection
    assert planner.smartlab_should_stop(plan) is None
    assert plan.state["ignored_out_of_distribution"] == 1


def test_phase_boundary_neither_places_a_boundary_on_nor_remeasures_a_flagged_point() -> None:
    planner = PhaseBoundary()
    plan = PlanContext("run", {"x": (0.0, 1.0)}, 20, options={"initial": 3, "resolution": 0.01})
    rhombohedral = {"p_rhombohedral": 0.98, "p_tetragonal": 0.02}
    tetragonal = {"p_rhombohedral": 0.02, "p_tetragonal": 0.98}
    planner.smartlab_ingest(
        plan,
        [
            observation(1, "phase_cnn", {"x": 0.0}, rhombohedral, 1),
            observation(2, "phase_cnn", {"x": 0.5}, tetragonal, 0),  # flagged
            observation(3, "phase_cnn", {"x": 1.0}, rhombohedral, 1),
        ],
    )

    assert planner.smartlab_suggest(plan, 5) == []  # the initial grid is done, 0.5 not again
    stop = planner.smartlab_should_stop(plan)
    assert stop is not None and "0 class change(s)" in stop.reason
    assert plan.state["summary"] == {"boundaries": [], "ignored_out_of_distribution": 1}


def test_precision_target_leaves_flagged_counts_out_of_its_combined_estimate() -> None:
    planner = PrecisionTarget()
    plan = PlanContext("run", {}, 10, options={"target": {"j1": 0.01}})
    planner.smartlab_ingest(
        plan,
        [
            observation(1, "spinwave_cnn", {}, {"j1": 0.62, "j1_std": 0.02}, 1),
            observation(2, "spinwave_cnn", {}, {"j1": 0.48, "j1_std": 0.001}, 0),  # a blank map
        ],
    )

    assert planner.smartlab_should_stop(plan) is None  # 0.02 from the trusted count only
    summary = plan.state["summary"]
    assert summary["j1"] == {"value": 0.62, "std": 0.02, "counts": 1}
    assert summary["ignored_out_of_distribution"] == 1
