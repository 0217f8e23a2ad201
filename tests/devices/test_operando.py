"""Physics, device and generator tests for the operando temperature-ramp instrument."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.utils import LimitError, ReadOnlyError
from scipy.optimize import curve_fit

from smartlab_plugins.devices import operando as op

T_C, BETA, HYSTERESIS = 450.0, 0.3, 12.0
T_UP, T_DOWN = T_C + HYSTERESIS / 2, T_C - HYSTERESIS / 2


@pytest.fixture
def devices() -> tuple[op.TemperatureController, op.OperandoDetector]:
    """A controller at 300 K and a detector on a sample with known transition."""
    controller = op.TemperatureController()
    detector = op.OperandoDetector(
        controller=controller, seed=5, t_c=T_C, beta=BETA, hysteresis=HYSTERESIS
    )
    return controller, detector


def run(plan: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``plan`` in a fresh RunEngine; return the descriptor's data keys and event data."""
    documents: list[tuple[str, dict[str, Any]]] = []
    engine = RunEngine({})
    engine.subscribe(lambda name, doc: documents.append((name, doc)))
    engine(plan)
    keys = [doc["data_keys"] for name, doc in documents if name == "descriptor"]
    events = [doc["data"] for name, doc in documents if name == "event"]
    return (keys[0] if keys else {}), events


def superlattice_signal(patterns: np.ndarray, two_theta: np.ndarray) -> tuple[np.ndarray, ...]:
    """Background-subtracted counts of the (1/2 1/2 1/2) peak and their z-score."""
    window = (two_theta > 18.7) & (two_theta < 19.7)
    sides = ((two_theta > 17.6) & (two_theta < 18.4)) | ((two_theta > 20.0) & (two_theta < 20.8))
    patterns = np.asarray(patterns, dtype=float)
    total = patterns[..., window].sum(-1)
    excess = total - patterns[..., sides].mean(-1) * window.sum()
    return excess, excess / np.sqrt(total)


def centroid(pattern: np.ndarray, two_theta: np.ndarray, centre: float, half: float) -> float:
    """Background-subtracted intensity-weighted mean 2theta of the peak near ``centre``."""
    window = np.abs(two_theta - centre) < half
    weights = pattern[window] - np.median(pattern[(np.abs(two_theta - centre) < 2 * half)])
    weights = np.clip(weights, 0.0, None)
    return float((weights * two_theta[window]).sum() / weights.sum())


# --- generator -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ramps() -> Any:
    """A modest simulated set shared by the generator tests."""
    return op.simulate(160, seed=11)


def test_simulate_shapes_dtypes_and_ranges(ramps: Any) -> None:
    config = op.OperandoConfig()
    n, frames, points = 160, config.n_frames, config.n_points
    assert ramps.case == "operando" and len(ramps) == n
    assert ramps.inputs["patterns"].shape == (n, frames, points)
    assert ramps.inputs["patterns"].dtype == np.float32
    assert ramps.inputs["temperatures"].shape == (n, frames)
    assert ramps.coords["two_theta"].shape == (points,)
    labels = ramps.labels
    for key in ("transformed", "ordered", "eta"):
        assert labels[key].shape == (n, frames)
    for key, (low, high) in (
        ("tc", config.tc_range),
        ("beta", config.beta_range),
        ("hysteresis", config.hysteresis_range),
        ("ramp_rate", config.ramp_rate_range),
    ):
        assert np.all((labels[key] >= low) & (labels[key] <= high)), key
    temperatures = ramps.inputs["temperatures"]
    assert temperatures.min() >= 100.0 and temperatures.max() <= 800.0
    steps = np.diff(temperatures.astype(float), axis=1)
    assert np.all(np.sign(steps) == labels["direction"][:, None])
    late_rate = steps[:, -1] / config.frame_time * 60.0
    np.testing.assert_allclose(np.abs(late_rate), labels["ramp_rate"], rtol=1e-3)
    assert np.all(ramps.inputs["patterns"] >= 0)
    assert np.all(labels["eta"][~labels["ordered"]] == 0)
    assert ramps.config["tc_range"] == list(config.tc_range)


def test_onset_labels_match_transformed_flags(ramps: Any) -> None:
    labels = ramps.labels
    transformed, onset = labels["transformed"], labels["onset"]
    for flags, first in zip(transformed, onset, strict=True):
        hits = np.flatnonzero(flags)
        assert first == (hits[0] if hits.size else -1)
        if hits.size:
            assert np.all(flags[first:]), "a monotonic ramp transforms once and stays transformed"
    assert np.array_equal(labels["has_transition"], onset >= 0)
    low, high = op.OperandoConfig().onset_window
    assert np.all((onset[onset >= 0] >= low) & (onset[onset >= 0] <= high))
    no_transition = np.mean(onset < 0)
    assert 0.12 < no_transition < 0.38, "about no_transition_fraction = 0.25 of the ramps"
    temperatures = ramps.inputs["temperatures"].astype(float)
    heating = labels["direction"] > 0
    for i in np.flatnonzero(onset >= 0):
        edge = labels["t_up"][i] if heating[i] else labels["t_down"][i]
        before, at = temperatures[i, onset[i] - 1], temperatures[i, onset[i]]
        assert (before <= edge < at) if heating[i] else (before >= edge > at)


def test_simulate_is_deterministic() -> None:
    first, again, other = op.simulate(6, seed=4), op.simulate(6, seed=4), op.simulate(6, seed=5)
    for key in first.inputs:
        np.testing.assert_array_equal(first.inputs[key], again.inputs[key])
    for key in first.labels:
        np.testing.assert_array_equal(first.labels[key], again.labels[key])
    assert not np.array_equal(first.inputs["patterns"], other.inputs["patterns"])


def test_transition_visible_within_two_frames_without_false_alarms(ramps: Any) -> None:
    """A plain superlattice threshold finds onsets within 2 frames and no false alarms."""
    _, z = superlattice_signal(ramps.inputs["patterns"], ramps.coords["two_theta"])
    present = z > 8.0
    changed = present != present[:, :1]
    flagged = np.where(changed.any(1), changed.argmax(1), -1)
    onset = ramps.labels["onset"]
    crossing = onset >= 0
    delay = flagged[crossing] - onset[crossing]
    assert np.mean((delay >= 0) & (delay <= 2)) >= 0.95
    assert np.all(flagged[~crossing] == -1)


# --- physics functions ---------------------------------------------------------------------


def _sample(**changes: float) -> op.SampleParameters:
    """A single sample with mid-range parameters, overridden by ``changes``."""
    values = dict(
        t_c=T_C, beta=BETA, hysteresis=HYSTERESIS, lattice=4.0, expansion=1.2e-5,
        strain_max=0.012, superlattice=0.6, scale=1.0,
    )  # fmt: skip
    values.update(changes)
    return op.SampleParameters(**{k: np.array([v]) for k, v in values.items()})


def test_relay_hysteresis_and_order_parameter_law() -> None:
    history = np.array([470.0, 450.0, 445.0, 443.0, 450.0, 455.0, 457.0, 450.0])
    states = op.relay_states(history, False, T_DOWN, T_UP)
    assert states.tolist() == [False, False, False, True, True, True, False, False]
    t = np.array([300.0, 400.0, 455.0, T_UP, 500.0])
    expected = np.clip(1 - t / T_UP, 0, None) ** BETA
    np.testing.assert_allclose(op.order_parameter(t, T_UP, BETA), expected)
    assert op.order_parameter(T_UP + 1, T_UP, BETA) == 0.0


def test_debye_waller_decrease_matches_exp_minus_2bts2() -> None:
    config = op.OperandoConfig()
    sample = _sample(expansion=0.0)
    grid = op.two_theta_grid(config)
    cold, hot = 500.0, 800.0
    patterns = op.expected_pattern(grid, np.array([cold, hot]), np.zeros(2), sample, config)
    peaks = patterns - op.background_profile(grid, config)
    for index_sq in (1, 2, 5):
        d = 4.0 / math.sqrt(index_sq)
        centre = 2 * math.degrees(math.asin(config.wavelength / (2 * d)))
        window = np.abs(grid - centre) < 0.8
        ratio = peaks[1, window].sum() / peaks[0, window].sum()
        s2 = 1 / (4 * d**2)
        expected = math.exp(-2 * config.debye_waller_slope * (hot - cold) * s2)
        assert ratio == pytest.approx(expected, rel=2e-3), index_sq
        assert ratio < 1.0


def test_splitting_linear_and_superlattice_quadratic_in_eta() -> None:
    config = op.OperandoConfig()
    sample = _sample()
    eta = np.array([0.0, 0.5, 1.0])
    centres, _, areas = op.reflections(np.full(3, 300.0), eta, sample, config)
    rows = op._config_reflections(config)
    a200 = np.flatnonzero((rows["hk2"] == 4) & (rows["l2"] == 0))[0]
    c002 = np.flatnonzero((rows["hk2"] == 0) & (rows["l2"] == 4))[0]
    splitting = centres[:, a200] - centres[:, c002]
    assert splitting[0] == pytest.approx(0.0, abs=1e-9)
    assert splitting[1] / splitting[2] == pytest.approx(0.5, rel=0.02)
    theta = math.radians(centres[0, a200] / 2)
    assert splitting[2] == pytest.approx(math.degrees(2 * math.tan(theta) * 0.012), rel=0.03)
    half = np.flatnonzero(rows["superlattice"] & (rows["hk2"] == 0.5) & (rows["l2"] == 0.25))[0]
    assert areas[0, half] == 0.0
    assert areas[1, half] / areas[2, half] == pytest.approx(0.25, rel=0.01)


# --- temperature controller ----------------------------------------------------------------


def test_readback_lags_setpoint_with_first_order_time_constant() -> None:
    controller = op.TemperatureController()
    controller.ramp_rate.put(6.0)
    controller.time_constant.put(40.0)
    rate, tau = 6.0 / 60.0, 40.0
    controller.target.put(700.0)
    for elapsed in (tau, 3 * tau, 10 * tau):
        controller.advance(elapsed - controller.clock.get())
        setpoint, readback = controller.setpoint.get(), controller.position
        assert setpoint == pytest.approx(300.0 + rate * elapsed)
        expected_lag = rate * tau * (1 - math.exp(-elapsed / tau))
        assert setpoint - readback == pytest.approx(expected_lag, rel=1e-9)
    assert setpoint - readback == pytest.approx(rate * tau, rel=1e-4)
    assert (rate * tau * (1 - math.exp(-1))) == pytest.approx(0.632 * rate * tau, rel=1e-3)


def test_move_settles_in_simulated_time_not_wall_time() -> None:
    controller = op.TemperatureController()
    controller.ramp_rate.put(0.5)
    started = time.perf_counter()
    status = controller.set(700.0)
    assert status.done and status.success
    assert time.perf_counter() - started < 5  # the ramp is 800 simulated minutes
    assert abs(controller.position - 700.0) <= controller.settle_tolerance.get() + 1e-9
    ramp = 400.0 / (0.5 / 60.0)
    lag = (0.5 / 60.0) * 30.0
    expected = ramp + 30.0 * math.log(lag / 0.1)
    assert controller.clock.get() == pytest.approx(expected, rel=1e-6)


def test_out_of_range_settings_raise_before_motion(
    devices: tuple[op.TemperatureController, op.OperandoDetector],
) -> None:
    controller, detector = devices
    before = (controller.position, controller.setpoint.get(), controller.clock.get())
    with pytest.raises(LimitError, match=r"temperature setpoint 900\.0 K .*\[100\.0, 800\.0\] K"):
        controller.set(900.0)
    with pytest.raises(LimitError, match="temperature_target"):
        controller.target.set(50.0)
    with pytest.raises(LimitError, match="outside"):
        controller.set(float("nan"))
    with pytest.raises(LimitError, match="temperature_ramp_rate"):
        controller.ramp_rate.set(100.0)
    with pytest.raises(LimitError, match="operando_frame_time"):
        detector.frame_time.set(-1.0)
    with pytest.raises(LimitError):
        run(bps.mv(controller, 20.0))
    with pytest.raises(ReadOnlyError):
        controller.readback.put(500.0)
    assert (controller.position, controller.setpoint.get(), controller.clock.get()) == before
    assert controller.target.get() == 300.0 and controller.ramp_rate.get() == 10.0


# --- detector in a RunEngine ---------------------------------------------------------------


def test_scan_events_shapes_and_truth_hidden(
    devices: tuple[op.TemperatureController, op.OperandoDetector],
) -> None:
    controller, detector = devices
    keys, events = run(bp.scan([detector], controller, 300, 600, 61))
    assert keys["operando_pattern"]["shape"] == [512]
    assert keys["operando_pattern"]["dtype"] == "array"
    assert keys["operando_pattern"]["dtype_numpy"] == "<f4"
    assert keys["temperature"]["units"] == "K"
    assert "operando_order_parameter" not in keys and "operando_ordered" not in keys
    assert len(events) == 61
    assert all(np.asarray(e["operando_pattern"]).shape == (512,) for e in events)
    temps = np.array([e["operando_temperature"] for e in events])
    np.testing.assert_allclose(temps, np.linspace(300, 600, 61), atol=0.11)
    assert set(detector.truth) >= {"t_c", "beta", "hysteresis", "ordered"}
    assert detector.truth["t_c"] == T_C and detector.truth["ordered"] is False


def test_superlattice_zero_above_transition_power_law_below(
    devices: tuple[op.TemperatureController, op.OperandoDetector],
) -> None:
    controller, detector = devices
    _, events = run(bp.scan([detector], controller, 300, 500, 101))
    temps = np.array([e["operando_temperature"] for e in events])
    excess, z = superlattice_signal([e["operando_pattern"] for e in events], detector.two_theta)
    above = temps > T_UP
    assert np.all(np.abs(z[above]) < 5), "no superlattice in the cubic phase, within noise"
    assert np.all(z[temps < T_UP - 1] > 20)
    below = temps < T_UP - 0.5

    def law(t: np.ndarray, amplitude: float, t_up: float, beta: float) -> np.ndarray:
        return amplitude * np.clip(1 - t / t_up, 1e-12, None) ** (2 * beta)

    (amplitude, t_up, beta), _ = curve_fit(
        law, temps[below], excess[below], p0=(excess.max(), T_UP + 5, 0.25)
    )
    assert t_up == pytest.approx(T_UP, abs=1.5)
    assert beta == pytest.approx(BETA, abs=0.02)
    assert amplitude > 0


def test_hysteresis_heating_transition_above_cooling_transition(
    devices: tuple[op.TemperatureController, op.OperandoDetector],
) -> None:
    controller, detector = devices
    _, cooling = run(bp.scan([detector], controller, 480, 420, 61))
    _, heating = run(bp.list_scan([detector], controller, list(np.arange(420.0, 481.0))))

    def edges(events: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        temps = np.array([e["operando_temperature"] for e in events])
        _, z = superlattice_signal([e["operando_pattern"] for e in events], detector.two_theta)
        return temps, z > 8

    temps, ordered = edges(cooling)
    t_cool = temps[np.argmax(ordered)]
    assert not ordered[0] and ordered[-1]
    temps, ordered = edges(heating)
    t_heat = temps[np.argmin(ordered)]
    assert ordered[0] and not ordered[-1]
    assert t_heat > t_cool
    assert T_DOWN - 1.2 < t_cool < T_DOWN
    assert T_UP < t_heat < T_UP + 1.2
    assert t_heat - t_cool == pytest.approx(HYSTERESIS, abs=2.4)


def test_thermal_expansion_shifts_main_peaks(
    devices: tuple[op.TemperatureController, op.OperandoDetector],
) -> None:
    controller, detector = devices
    _, events = run(bp.list_scan([detector], controller, [550.0, 800.0]))
    sample, config = detector.sample, detector.config
    for index_sq, name in ((1, "100"), (4, "200")):
        measured, expected = [], []
        for event in events:
            temperature = event["operando_temperature"]
            a = sample.lattice[0] * (1 + sample.expansion[0] * (temperature - 300.0))
            bragg = 2 * math.degrees(math.asin(config.wavelength * math.sqrt(index_sq) / (2 * a)))
            measured.append(
                centroid(np.asarray(event["operando_pattern"]), detector.two_theta, bragg, 0.4)
            )
            expected.append(bragg)
        assert measured[0] == pytest.approx(expected[0], abs=0.01), name
        shift, expected_shift = measured[1] - measured[0], expected[1] - expected[0]
        assert expected_shift < -0.05
        assert shift == pytest.approx(expected_shift, abs=0.004), name


def test_count_during_ramp_follows_generator_code_path() -> None:
    config = op.OperandoConfig()
    controller = op.TemperatureController()
    detector = op.OperandoDetector(controller=controller, seed=3, t_c=420.0, beta=0.25)
    detector.order_parameter.kind = "normal"
    detector.ordered.kind = "normal"
    run(bps.mv(controller.ramp_rate, 6.0))
    run(bps.mv(controller.target, 700.0))
    keys, events = run(bp.count([detector], config.n_frames))
    assert "operando_order_parameter" in keys
    temps = np.array([e["operando_temperature"] for e in events])
    plan = op.RampPlan(
        direction=np.array([1]), rate=np.array([0.1]), start=np.array([300.0]),
        planned_transition=np.array([True]),
    )  # fmt: skip
    np.testing.assert_allclose(temps, op.ramp_temperatures(plan, config)[0], atol=1e-9)
    sample = detector.sample
    ordered = op.relay_states(temps, True, sample.t_down[0], sample.t_up[0])
    eta = op.order_parameter(temps, sample.t_up[0], sample.beta[0]) * ordered
    np.testing.assert_allclose([e["operando_order_parameter"] for e in events], eta)
    assert ordered[0] and not ordered[-1]
    patterns = np.array([e["operando_pattern"] for e in events], dtype=float)
    expected = op.expected_pattern(detector.two_theta, temps, eta, sample, config)
    chi2 = ((patterns - expected) ** 2 / expected).sum(-1)
    assert np.all(np.abs(chi2 - config.n_points) < 6 * math.sqrt(2 * config.n_points))


def test_device_is_deterministic_for_a_seed() -> None:
    frames = []
    for _ in range(2):
        controller = op.TemperatureController()
        detector = op.OperandoDetector(controller=controller, seed=9)
        _, events = run(bp.scan([detector], controller, 400, 500, 3))
        frames.append(np.array([e["operando_pattern"] for e in events]))
        truth = detector.truth
    np.testing.assert_array_equal(frames[0], frames[1])
    other = op.OperandoDetector(controller=op.TemperatureController(), seed=10)
    assert other.truth["t_c"] != truth["t_c"]
    devices = op.make_devices(seed=9)
    assert set(devices) == {"temperature", "operando"}
    assert devices["operando"].truth["t_c"] == truth["t_c"]


def test_config_validation_names_the_setting() -> None:
    with pytest.raises(ValueError, match="beta_range"):
        op.OperandoConfig(beta_range=(0.4, 0.2))
    with pytest.raises(ValueError, match="onset_window"):
        op.OperandoConfig(onset_window=(0, 10))
    assert replace(op.OperandoConfig(), n_frames=96).n_frames == 96


def test_the_ramp_plan_settles_then_exposes_along_a_continuous_ramp(
    devices: tuple[op.TemperatureController, op.OperandoDetector],
) -> None:
    controller, detector = devices
    with pytest.raises(LimitError, match=r"900\.0 K is outside"):
        run(op.ramp(detector, controller, 400.0, 900.0, 4.0, 10))
    assert controller.position == 300.0  # refused before anything moved

    _, events = run(op.ramp(detector, controller, 400.0, 500.0, 4.0, 10))
    temperatures = np.array([e["operando_temperature"] for e in events])
    assert len(events) == 10 and abs(temperatures[0] - 400.0) < 0.2
    steps = np.diff(temperatures)  # 4 K/min, 30 s frames: 2 K once the readback's lag is set
    assert (steps > 0).all() and (steps < 2.0 + 1e-6).all()
    np.testing.assert_allclose(steps[-3:], 2.0, atol=0.01)
    assert controller.ramp_rate.get() == 4.0
    # the RunEngine stops what the plan moved: the ramp holds where it was, short of 500 K
    assert controller.target.get() == controller.setpoint.get() < 500.0
