"""The in-loop adaptive plans with a real RunEngine, real devices, real plugins and real Tiled."""

from __future__ import annotations

import threading

import pytest
from bluesky.utils import RunEngineInterrupted
from decision_rows import decisions
from sample_planners import Fixed, Pausing, Raising, Silent, Slow

from smartlab_plugins.adaptive.arbiter import Arbiter
from smartlab_plugins.adaptive.manager import PlannerManager
from smartlab_plugins.adaptive.plans import adaptive_map, adaptive_ramp, count_until_precise
from smartlab_plugins.devices import ins, mpb

START, STOP = 475.0, 575.0  # around T_up = 535.4 K of the seed-11 sample


def manager_with(*planners) -> PlannerManager:
    manager = PlannerManager()
    for planner in planners:
        manager.register(planner)
    return manager


#: How long a plan waits for a point's results before deciding without them: generous, so a
#: busy machine (a model loading for the first time) does not change what a test checks; a
#: plan waits only until the results come.
RESULTS_WAIT_S = 60.0


def stop_of(client, uid):
    return client[uid].metadata["stop"]


def test_adaptive_ramp_brackets_the_heating_transition_with_few_points_and_resets_across_the_loop(
    RE, feed, smartlab, client, ramp_devices
):
    detector, controller = ramp_devices
    t_up = detector.truth["t_up"]
    (uid,) = RE(
        adaptive_ramp(
            [detector], controller, START, STOP, feed=feed, resolution=1.0, wait=RESULTS_WAIT_S
        )
    )
    smartlab.flush()

    stop = stop_of(client, uid)
    assert stop["exit_status"] == "success"
    assert stop["reason"].startswith("converged: transition at")
    rows = decisions(client, uid)
    finish = rows[-1]
    assert finish["action"] == "finish"
    summary = finish["detail"]["summary"]
    assert summary["outcome"] == "converged" and summary["planner"] == "transition_bracket"
    estimate = summary["planners"]["transition_bracket"]
    assert estimate["half_width"] <= 0.5
    assert abs(estimate["temperature"] - t_up) < 1.5  # eta -> 0 at T_up: the line fades just below
    measured = client[uid]["primary"]["temperature"].read()
    assert len(measured) == summary["points"] <= 14  # a uniform 1 K ramp would take 101
    # every point behind the furthest one since the last reset went through a reset first
    resets = [r for r in rows if r["action"] == "reset"]
    assert resets and summary["resets"] == len(resets)
    assert all(r["point"] == {"temperature": START} for r in resets)
    for row in rows:
        if row["action"] == "measure" and row["source"] == "planner":
            assert row["planner"] == "transition_bracket" and row["reason"]
            assert row["detail"]["run_uid"] == uid
            assert row["detail"]["arbiter"]["candidates"][0]["planner"] == "transition_bracket"
    # the decisions name the observations they came from: seq_nums of transition_lstm's results
    seen = [n for r in rows for n in r["detail"].get("ingested", {}).get("transition_lstm", [])]
    assert seen == list(range(1, len(measured) + 1))


def test_a_cooling_ramp_resets_above_the_loop_and_finds_t_down(
    RE, feed, smartlab, client, ramp_devices
):
    detector, controller = ramp_devices
    t_down = detector.truth["t_down"]
    (uid,) = RE(
        adaptive_ramp(
            [detector], controller, 560.0, 480.0, feed=feed, resolution=0.5, wait=RESULTS_WAIT_S
        )
    )
    smartlab.flush()
    summary = decisions(client, uid)[-1]["detail"]["summary"]
    estimate = summary["planners"]["transition_bracket"]
    # the tilt jumps at T_down, but the grains transform over T_down +- 2 sigma of coexistence
    # (0.6 K for this sample): the edge is a step within about a kelvin
    assert abs(estimate["temperature"] - t_down) <= 1.0
    assert summary["resets"] >= 1


def test_budget_exhausted_ends_the_run_cleanly_with_the_reason(
    RE, feed, smartlab, client, ramp_devices
):
    detector, controller = ramp_devices
    (uid,) = RE(adaptive_ramp([detector], controller, START, STOP, feed=feed, budget=4))
    smartlab.flush()
    stop = stop_of(client, uid)
    assert stop["exit_status"] == "success" and stop["reason"].startswith("budget exhausted")
    assert stop["num_events"]["primary"] == 4
    assert decisions(client, uid)[-2]["source"] == "budget"


def test_a_raising_planner_is_recorded_and_the_plan_falls_back_to_uniform_steps(
    RE, feed, smartlab, client, ramp_devices
):
    detector, controller = ramp_devices
    manager = manager_with(Raising("broken", {}))
    (uid,) = RE(
        adaptive_ramp(
            [detector],
            controller,
            START,
            STOP,
            feed=feed,
            step=5.0,
            budget=4,
            planners=["broken"],
            manager=manager,
        )
    )
    smartlab.flush()
    rows = decisions(client, uid)
    failed = [r for r in rows if r["action"] == "planner_failed"]
    assert failed and "RuntimeError: this planner is broken" in failed[0]["reason"]
    temperatures = [r["point"]["temperature"] for r in rows if r["action"] == "measure"]
    assert temperatures == [475.0, 480.0, 485.0, 490.0]  # the default sequence: uniform steps
    assert all(r["source"] == "default" for r in rows if r["action"] == "measure")
    assert stop_of(client, uid)["exit_status"] == "success"


@pytest.mark.parametrize(
    ("point", "kept"),
    [
        ({"temperature": float("nan")}, None),
        ({"temperature": 900.0}, STOP),  # clamped onto the ramp's limit
        ({"elsewhere": 500.0}, None),
        (None, None),  # nothing at all
    ],
    ids=["nan", "out-of-limits", "unknown-axis", "nothing"],
)
def test_bad_suggestions_are_clamped_or_rejected_with_a_reason_and_the_plan_goes_on(
    RE, feed, smartlab, client, ramp_devices, point, kept
):
    detector, controller = ramp_devices
    planner = Silent("quiet", {}) if point is None else Fixed("odd", point)
    manager = manager_with(planner)
    (uid,) = RE(
        adaptive_ramp(
            [detector],
            controller,
            START,
            STOP,
            feed=feed,
            step=5.0,
            budget=3,
            planners=[planner.name],
            manager=manager,
        )
    )
    smartlab.flush()
    rows = decisions(client, uid)
    second = [r for r in rows if r["action"] == "measure"][1]
    arbiter = second["detail"]["arbiter"]
    if kept is None:
        assert second["source"] == "default" and second["point"] == {"temperature": 480.0}
        if point is None:
            assert second["reason"] == "fallback: no suggestion"
        else:
            assert arbiter["rejected"][0]["why"]
            assert second["reason"] == "fallback: every suggestion was rejected"
    else:
        assert second["source"] == "planner" and second["point"] == {"temperature": kept}
        assert "clamped to 575" in arbiter["clamped"][0]["why"]
    assert stop_of(client, uid)["exit_status"] == "success"


def test_a_slow_planner_does_not_hold_up_the_plan(RE, feed, smartlab, client, ramp_devices):
    detector, controller = ramp_devices
    manager = manager_with(Slow("sluggish", 2.0))
    (uid,) = RE(
        adaptive_ramp(
            [detector],
            controller,
            START,
            STOP,
            feed=feed,
            step=5.0,
            budget=3,
            wait=0.2,
            planners=["sluggish"],
            manager=manager,
        )
    )
    smartlab.flush()
    rows = decisions(client, uid)
    fallbacks = [r for r in rows if r["reason"].startswith("fallback: no decision within 0.2 s")]
    assert len(fallbacks) >= 2
    assert stop_of(client, uid)["exit_status"] == "success"


def test_a_user_abort_from_another_thread_ends_the_run_with_an_abort_stop_document(
    RE, feed, smartlab, client, ramp_devices
):
    detector, controller = ramp_devices
    uids = []

    def abort_after_three_points(name, doc):
        if name == "start":
            uids.append(doc["uid"])
        if name == "event" and doc["seq_num"] == 3 and "temperature" in doc["data"]:
            threading.Thread(target=RE.abort, args=("user abort",)).start()

    RE.subscribe(abort_after_three_points)
    with pytest.raises(RunEngineInterrupted):
        RE(adaptive_ramp([detector], controller, START, STOP, feed=feed, step=1.0, budget=30))
    smartlab.flush()
    stop = stop_of(client, uids[0])
    assert stop["exit_status"] == "abort"
    assert client[uids[0]]["primary"]["temperature"].read().size < 30


def test_a_planner_pause_request_pauses_and_the_plan_resumes(
    RE, feed, smartlab, client, ramp_devices
):
    detector, controller = ramp_devices
    manager = manager_with(Pausing("pauser", {"temperature": 500.0}))
    with pytest.raises(RunEngineInterrupted):
        RE(
            adaptive_ramp(
                [detector],
                controller,
                START,
                STOP,
                feed=feed,
                budget=3,
                planners=["pauser"],
                manager=manager,
            )
        )
    assert RE.state == "paused"
    (uid,) = RE.resume()
    smartlab.flush()
    actions = [r["action"] for r in decisions(client, uid)]
    assert "pause" in actions and actions[-1] == "finish"
    assert stop_of(client, uid)["exit_status"] == "success"


def test_arbiter_round_robin_alternates_and_priority_keeps_the_first(
    RE, feed, smartlab, client, ramp_devices
):
    detector, controller = ramp_devices
    planners = [Fixed("low", {"temperature": 500.0}), Fixed("high", {"temperature": 550.0})]
    chosen = {}
    for policy in ("priority", "round_robin"):
        manager = manager_with(*planners)
        (uid,) = RE(
            adaptive_ramp(
                [detector],
                controller,
                START,
                STOP,
                feed=feed,
                budget=5,
                planners=["low", "high"],
                manager=manager,
                arbiter=Arbiter(policy, order=["high", "low"]),
            )
        )
        smartlab.flush()
        rows = [r for r in decisions(client, uid) if r["source"] == "planner"]
        chosen[policy] = [r["planner"] for r in rows]
        assert all(len(r["detail"]["arbiter"]["candidates"]) == 2 for r in rows)
        assert all(r["detail"]["arbiter"]["policy"] == policy for r in rows)
    assert chosen["priority"] == ["high"] * 4
    assert chosen["round_robin"] == ["high", "low", "high", "low"]


def test_adaptive_map_locates_every_class_change_with_far_fewer_points_than_a_grid(
    RE, feed, smartlab, client
):
    devices = mpb.make_devices(seed=1)
    (uid,) = RE(
        adaptive_map(
            [devices["mpb"]],
            devices["sample"].x,
            0.3,
            0.7,
            feed=feed,
            budget=30,
            wait=RESULTS_WAIT_S,
        )
    )
    smartlab.flush()
    summary = decisions(client, uid)[-1]["detail"]["summary"]
    assert summary["outcome"] == "converged" and summary["points"] <= 20  # grid at 0.005: 81
    found = summary["planners"]["phase_boundary"]["boundaries"]
    truth = mpb.label_boundaries(300.0)
    assert len(found) == 4
    for boundary, true in zip(found, truth, strict=True):
        assert abs(boundary["at"] - true) <= 0.005


def test_adaptive_map_without_results_falls_back_to_a_coarse_to_fine_grid(
    RE, feed, smartlab, client
):
    devices = mpb.make_devices(seed=1)
    manager = manager_with(Silent("nothing", {}, reads=("phase_cnn",)))
    (uid,) = RE(
        adaptive_map(
            [devices["mpb"]],
            devices["sample"].x,
            0.3,
            0.7,
            feed=feed,
            budget=5,
            planners=["nothing"],
            manager=manager,
        )
    )
    smartlab.flush()
    xs = [r["point"]["sample_x"] for r in decisions(client, uid) if r["action"] == "measure"]
    assert xs == pytest.approx([0.3, 0.7, 0.5, 0.4, 0.6])


def test_count_until_precise_stops_once_the_combined_uncertainty_is_below_target(
    RE, feed, smartlab, client
):
    spectrometer = ins.make_devices(seed=1)["ins"]
    (uid,) = RE(
        count_until_precise(
            [spectrometer], feed=feed, target={"j1": 0.005}, budget=12, wait=RESULTS_WAIT_S
        )
    )
    smartlab.flush()
    stop = stop_of(client, uid)
    assert stop["exit_status"] == "success" and stop["reason"].startswith("converged: j1")
    summary = decisions(client, uid)[-1]["detail"]["summary"]
    j1 = summary["planners"]["precision_target"]["j1"]
    assert j1["std"] < 0.005 and 1 < j1["counts"] == summary["points"] < 12
    assert abs(j1["value"] - spectrometer.sample.truth["j1"]) < 0.05


def test_count_until_precise_with_an_unreachable_target_spends_its_budget(
    RE, feed, smartlab, client
):
    spectrometer = ins.make_devices(seed=1)["ins"]
    (uid,) = RE(count_until_precise([spectrometer], feed=feed, target={"j1": 1e-6}, budget=3))
    smartlab.flush()
    assert stop_of(client, uid)["reason"].startswith("budget exhausted")
    assert stop_of(client, uid)["num_events"]["primary"] == 3
