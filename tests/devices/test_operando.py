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

T_C, HYSTERESIS = 450.0, 12.0
T_UP, T_DOWN = T_C + HYSTERESIS / 2, T_C - HYSTERESIS / 2
STATIC = op.OperandoConfig(exposure_substeps=1)


@pytest.fixture
def devices() -> tuple[op.TemperatureController, op.OperandoDetector]:
    """A controller at 300 K and a detector on a first-order SrTiO3 sample with known transition."""
    controller = op.TemperatureController()
    detector = op.OperandoDetector(
        controller=controller,
        seed=5,
        t_c=T_C,
        kind="first_order",
        hysteresis=HYSTERESIS,
        material="SrTiO3",
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


def bragg(d: float, wavelength: float) -> float:
    """2theta (deg) of spacing ``d`` (angstrom)."""
    return 2 * math.degrees(math.asin(wavelength / (2 * d)))


def superlattice_signal(
    patterns: np.ndarray, two_theta: np.ndarray, a: float
) -> tuple[np.ndarray, np.ndarray]:
    """Background-subtracted counts of the (3/2 1/2 1/2) doublet of lattice ``a``, and their z."""
    offset = two_theta - bragg(2 * a / math.sqrt(11), 1.54056)
    window = (offset > -0.35) & (offset < 0.45)
    sides = ((offset > -1.3) & (offset < -0.7)) | ((offset > 0.65) & (offset < 0.95))
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


def _sample(**changes: float) -> op.SampleParameters:
    """A single SrTiO3 sample (a0a0c-, second order), overridden by ``changes``."""
    values = dict(
        kind=2, t_c=T_C, hysteresis=0.0, supercooling=np.nan, coexistence=0.0, material=0,
        tilt_system=0, tilt0=6.0, strain_coupling=0.4, lattice=3.905, expansion=1.2e-5,
        scale=1.0,
    )  # fmt: skip
    values.update(changes)
    return op.SampleParameters(**{k: np.array([v]) for k, v in values.items()})


# --- generator -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ramps() -> Any:
    """A modest simulated set shared by the generator tests."""
    return op.simulate(200, seed=11)


def test_simulate_shapes_dtypes_and_ranges(ramps: Any) -> None:
    config = op.OperandoConfig()
    n, frames, points = 200, config.n_frames, config.n_points
    assert ramps.case == "operando" and len(ramps) == n
    assert ramps.inputs["patterns"].shape == (n, frames, points)
    assert ramps.inputs["patterns"].dtype == np.float32
    assert ramps.inputs["temperatures"].shape == (n, frames)
    assert ramps.coords["two_theta"].shape == (points,)
    labels = ramps.labels
    for key in ("transformed", "tilted_fraction", "tilt"):
        assert labels[key].shape == (n, frames)
    for key, (low, high) in (
        ("tc", config.tc_range),
        ("tilt0", config.tilt_range),
        ("ramp_rate", config.ramp_rate_range),
    ):
        assert np.all((labels[key] >= low) & (labels[key] <= high)), key
    first = labels["kind"] == 0
    assert set(np.unique(labels["kind"])) == {0, 1, 2}
    assert len(np.unique(labels["material"])) == len(op.MATERIALS)
    assert set(np.unique(labels["tilt_system"])) == {0, 1}
    assert np.all((labels["hysteresis"][first] >= 4) & (labels["hysteresis"][first] <= 20))
    assert np.all(labels["hysteresis"][~first] == 0) and np.all(labels["coexistence"][~first] == 0)
    np.testing.assert_array_equal(labels["beta"][labels["kind"] == 1], 0.25)
    np.testing.assert_array_equal(labels["beta"][labels["kind"] == 2], 0.5)
    temperatures = ramps.inputs["temperatures"]
    assert temperatures.min() >= 100.0 and temperatures.max() <= 800.0
    steps = np.diff(temperatures.astype(float), axis=1)
    assert np.all(np.sign(steps) == labels["direction"][:, None])
    late_rate = steps[:, -1] / config.frame_time * 60.0
    np.testing.assert_allclose(np.abs(late_rate), labels["ramp_rate"], rtol=1e-3)
    assert np.all(ramps.inputs["patterns"] >= 0)
    assert np.all(labels["tilt"][labels["tilted_fraction"] == 0] == 0)
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
    step = np.abs(np.diff(temperatures, axis=1)).max(axis=1)
    for i in np.flatnonzero(onset >= 0):
        edge = labels["t_up"][i] if heating[i] else labels["t_down"][i]
        before, at = temperatures[i, onset[i] - 1], temperatures[i, onset[i]]
        # a frame's temperature is its exposure's mean, and the grains' transformation
        # temperatures are spread: the branch lies between the two frames, give or take
        # half a step
        low, high = min(before, at) - step[i] / 2, max(before, at) + step[i] / 2
        assert low <= edge <= high, (i, before, edge, at)
        fraction = labels["tilted_fraction"][i]
        assert (fraction[onset[i]] <= 0.5) if heating[i] else (fraction[onset[i]] >= 0.5)


def test_simulate_is_deterministic() -> None:
    first, again, other = op.simulate(6, seed=4), op.simulate(6, seed=4), op.simulate(6, seed=5)
    for key in first.inputs:
        np.testing.assert_array_equal(first.inputs[key], again.inputs[key])
    for key in first.labels:
        np.testing.assert_array_equal(first.labels[key], again.labels[key])
    assert not np.array_equal(first.inputs["patterns"], other.inputs["patterns"])


def test_first_order_ramps_pass_through_two_phase_coexistence(ramps: Any) -> None:
    labels = ramps.labels
    fraction = labels["tilted_fraction"]
    first = (labels["kind"] == 0) & (labels["onset"] >= 0)
    continuous = (labels["kind"] > 0) & (labels["onset"] >= 0)
    mixed = ((fraction > 0.02) & (fraction < 0.98)).sum(axis=1)
    assert (mixed[first] >= 2).mean() > 0.3, "first-order crossings pass through coexistence"
    # a continuous transition has no two-phase range: only the frame whose exposure
    # straddles T_c is partly tilted
    assert mixed[continuous].max() <= 1


# --- physics functions ---------------------------------------------------------------------


def test_superlattice_intensity_is_the_oxygen_structure_factor_a_few_tenths_of_a_percent() -> None:
    """(3/2 1/2 1/2) of a0a0c- SrTiO3 against the closed form, relative to the cubic (110)."""
    config = replace(STATIC, ka2_ratio=0.0, debye_waller_slope=0.0)
    groups = op._config_groups(config, 0)
    sample = _sample(expansion=0.0)
    at = np.array([300.0])
    _, _, cubic = op.reflections(
        at, at * 0, np.zeros((1, 1)), np.ones((1, 1)), sample, config, groups
    )
    k = groups["h2"].size
    parent = np.flatnonzero((groups["h2"] == 2.0) & ~groups["superlattice"])
    family = np.flatnonzero(np.isclose(groups["h2"], 11 / 4) & groups["superlattice"])
    assert groups["multiplicity"][family].sum() == 16, "(1/2 1/2 3/2) along the tilt axis is absent"
    assert not np.any(np.isclose(groups["h2"], 3 / 4) & groups["superlattice"])
    a = 3.905
    s_sl, s_110 = math.sqrt(11) / (4 * a), math.sqrt(2) / (2 * a)

    def lorentz_polarisation(s: float) -> float:
        theta = math.asin(config.wavelength * s)
        return (1 + math.cos(2 * theta) ** 2) / (math.sin(theta) ** 2 * math.cos(theta))

    f = {e: float(op.form_factor(e, s)) for e, s in (("O", s_sl), ("Sr", s_110), ("Ti", s_110))}
    f_o_110 = float(op.form_factor("O", s_110))
    i_110 = 12 * (f["Sr"] + f["Ti"] - f_o_110) ** 2 * lorentz_polarisation(s_110)
    assert cubic[0, parent].sum() == pytest.approx(config.intensity_scale * i_110, rel=1e-9)
    ratios = []
    for tilt in (3.0, 4.0, 6.0):
        _, _, tilted = op.reflections(
            at, at * 0, np.array([[tilt]]), np.ones((1, 1)), sample, config, groups
        )
        phi = math.radians(tilt)
        closed = (math.sin(math.pi * phi / 2) + math.sin(3 * math.pi * phi / 2)) ** 2
        i_sl = 16 * f["O"] ** 2 * closed * lorentz_polarisation(s_sl)
        assert tilted[0, family].sum() == pytest.approx(config.intensity_scale * i_sl, rel=1e-9)
        assert tilted[0, :k][groups["superlattice"]].sum() > 0
        ratios.append(i_sl / i_110)
    assert ratios[0] >= 0.001 and ratios[-1] <= 0.01, ratios  # 0.1-1 % for tilts of 3-6 deg
    assert ratios[1] / ratios[0] == pytest.approx((4 / 3) ** 2, rel=0.02), "|F|^2 ~ tilt^2"


@pytest.mark.parametrize("material", [m.name for m in op.MATERIALS])
def test_every_material_and_tilt_system_gives_superlattice_lines_below_one_percent(material):
    """At 4 degrees of tilt the strongest superlattice line is 0.1-1 % of the strongest line."""
    config = replace(STATIC, ka2_ratio=0.0)
    grid = op.two_theta_grid(config)
    index = [m.name for m in op.MATERIALS].index(material)
    for system in (0, 1):
        sample = _sample(material=index, tilt_system=system, lattice=op.MATERIALS[index].lattice)
        groups = op._config_groups(config, system)
        at = np.array([300.0])
        centres, _, areas = op.reflections(
            at, at * 0, np.array([[4.0]]), np.ones((1, 1)), sample, config, groups
        )
        k = groups["h2"].size  # K-alpha1 rows
        centres, areas = centres[0, :k], areas[0, :k]
        on = (centres > grid[0]) & (centres < grid[-1])
        parent = ~groups["superlattice"] & on
        lines = {h2: areas[parent & (groups["h2"] == h2)].sum() for h2 in groups["h2"][parent]}
        ratio = areas[groups["superlattice"] & on].max() / max(lines.values())
        assert 0.0005 < ratio < 0.01, (material, system, ratio)


def test_k_alpha_doublet_follows_braggs_law_with_half_the_intensity() -> None:
    config = replace(STATIC, debye_waller_slope=0.0)
    groups = op._config_groups(config, 0)
    sample = _sample(expansion=0.0)
    at = np.array([300.0])
    centres, fwhm, areas = op.reflections(
        at, at * 0, np.zeros((1, 1)), np.ones((1, 1)), sample, config, groups, False
    )
    k = centres.shape[1] // 2
    h2 = groups["h2"][~groups["superlattice"]]
    for row in np.flatnonzero(h2 == 4.0)[:1]:  # (200), d = a / 2
        d = 3.905 / 2
        assert centres[0, row] == pytest.approx(bragg(d, 1.54056), abs=1e-9)
        assert centres[0, k + row] == pytest.approx(bragg(d, 1.54439), abs=1e-9)
        separation = centres[0, k + row] - centres[0, row]
        theta = math.radians(centres[0, row] / 2)
        assert separation == pytest.approx(
            math.degrees(2 * math.tan(theta) * (1.54439 - 1.54056) / 1.54056), rel=0.01
        )
        assert 0.1 < separation < 0.15  # 0.12 deg at 46.5 deg: a resolved shoulder at 0.2 deg FWHM
        assert areas[0, k + row] / areas[0, row] == pytest.approx(0.5, rel=0.01)
        assert fwhm[0, k + row] == pytest.approx(fwhm[0, row], rel=0.01)


def test_order_parameter_shapes_first_order_jump_and_continuous_power_laws() -> None:
    temperature = np.linspace(300.0, 600.0, 3001)
    for kind, beta in ((1, 0.25), (2, 0.5)):
        sample = _sample(kind=kind, tilt0=6.0)
        tilt = op.tilt_angle(temperature, sample)
        below = temperature < T_C - 1
        assert np.all(tilt[temperature >= T_C] == 0)
        slope = np.polyfit(np.log(1 - temperature[below] / T_C), np.log(tilt[below]), 1)[0]
        assert slope == pytest.approx(beta, abs=1e-6)
    supercooling = 40.0
    sample = _sample(kind=0, hysteresis=HYSTERESIS, supercooling=supercooling, coexistence=1.0)
    tilt = op.tilt_angle(np.array([0.0, T_C - 1e-9, T_C]), sample)
    assert tilt[0] == pytest.approx(6.0)
    assert 0.4 < tilt[1] / tilt[0] < 0.8, "the tilt jumps to Q_c at T_c"
    # the branch is Landau's 2-4-6 minimum: dG/dQ = 0, and G(Q_c) = 0 at T_c
    a_coef, c_coef = 1.0, 1.0
    b_coef = -math.sqrt(16 * a_coef * c_coef * supercooling / 3)
    t_0 = T_C - supercooling
    q_c2 = -3 * b_coef / (4 * c_coef)
    q0_2 = (2 / 3) * q_c2 * (1 + math.sqrt(1 + 0.75 * t_0 / supercooling))
    for t in (300.0, 400.0, T_C - 5, T_C, T_UP):
        q2 = q0_2 * (op.tilt_angle(np.array([t]), sample)[0] / 6.0) ** 2
        assert a_coef * (t - t_0) + b_coef * q2 + c_coef * q2**2 == pytest.approx(0, abs=1e-9)
    g_c = a_coef * (T_C - t_0) * q_c2 / 2 + b_coef * q_c2**2 / 4 + c_coef * q_c2**3 / 6
    assert g_c == pytest.approx(0, abs=1e-9)
    assert q0_2 * (op.tilt_angle(np.array([T_C]), sample)[0] / 6.0) ** 2 == pytest.approx(q_c2)


def test_relay_grains_give_hysteresis_and_a_gaussian_coexistence_range() -> None:
    history = np.array([470.0, 450.0, 445.0, 443.0, 450.0, 455.0, 457.0, 450.0])
    states = op.relay_states(history, False, T_DOWN, T_UP)
    assert states.tolist() == [False, False, False, True, True, True, False, False]
    sample = _sample(kind=0, hysteresis=HYSTERESIS, supercooling=40.0, coexistence=1.5)
    cooling = np.linspace(470.0, 430.0, 401)
    grains0 = op.grains_on_arrival(np.array([470.0]), np.array([False]), sample)
    fraction = op.grain_states(cooling[None], grains0, sample)[0].mean(axis=0)
    assert fraction[0] == 0 and fraction[-1] == 1
    assert np.all(np.diff(fraction) >= 0)
    half = cooling[np.argmax(fraction >= 0.5)]
    assert half == pytest.approx(T_DOWN, abs=0.2)
    spread = cooling[np.argmax(fraction >= 0.8)] - cooling[np.argmax(fraction >= 0.2)]
    assert spread == pytest.approx(-2 * 0.84 * 1.5, abs=0.5)  # 20-80 %: +-0.84 sigma


def test_splitting_grows_with_the_spontaneous_strain_as_tilt_squared() -> None:
    config = STATIC
    groups = op._config_groups(config, 0)
    sample = _sample(strain_coupling=0.5)
    at = np.full(3, 300.0)
    tilts = np.array([0.0, 4.0, 8.0])
    strain = op.spontaneous_strain(tilts, 0.5)
    sample3 = sample.take(np.zeros(3, dtype=int))
    centres, _, _ = op.reflections(
        at, strain, tilts[:, None], np.ones((3, 1)), sample3, config, groups
    )
    parent = np.flatnonzero(~groups["superlattice"] & (groups["h2"] == 4.0))
    low, high = centres[:, parent].min(axis=1), centres[:, parent].max(axis=1)
    splitting = high - low  # (200) and (002), K-alpha1
    assert splitting[0] == pytest.approx(0.0, abs=1e-9)
    assert splitting[2] / splitting[1] == pytest.approx(4.0, rel=0.01), "e ~ tilt^2"
    theta = math.radians(low[2] / 2)
    assert splitting[2] == pytest.approx(math.degrees(2 * math.tan(theta) * strain[2]), rel=0.03)


def test_a_frame_averages_the_exposure() -> None:
    """A frame exposed over several temperatures holds the mean intensity of the static frames."""
    config = op.OperandoConfig(exposure_substeps=4)
    grid = op.two_theta_grid(config)
    sample = _sample(kind=1, tilt0=6.0)
    temperatures = np.array([[T_C - 6.0, T_C - 4.0, T_C - 2.0, T_C + 0.5]])
    fraction = (temperatures < T_C).astype(float)
    frame = op.expected_pattern(grid, temperatures, fraction, sample, config)[0]
    static = [
        op.expected_pattern(grid, t[None, None], f[None, None], sample, STATIC)[0]
        for t, f in zip(temperatures[0], fraction[0], strict=True)
    ]
    background = op.background_profile(grid, config)
    a = 3.905 * (1 + 1.2e-5 * (T_C - 300))
    near = np.abs(grid - bragg(2 * a / math.sqrt(11), 1.54056)) < 0.8
    averaged = np.mean([(s - background)[near].sum() for s in static])
    assert (frame - background)[near].sum() == pytest.approx(averaged, rel=0.01)
    assert (frame - background).sum() == pytest.approx(
        np.mean([(s - background).sum() for s in static]), rel=1e-3
    )


def test_debye_waller_decrease_matches_exp_minus_2bts2() -> None:
    config = STATIC
    sample = _sample(expansion=0.0, kind=2)
    grid = op.two_theta_grid(config)
    cold, hot = 500.0, 800.0
    patterns = op.expected_pattern(
        grid, np.array([[cold], [hot]]), np.zeros((2, 1)), sample, config
    )
    peaks = patterns - op.background_profile(grid, config)
    for index_sq in (1, 2, 5):
        d = 3.905 / math.sqrt(index_sq)
        centre = bragg(d, config.wavelength)
        window = np.abs(grid - centre) < 0.8
        ratio = peaks[1, window].sum() / peaks[0, window].sum()
        s2 = 1 / (4 * d**2)
        expected = math.exp(-2 * config.debye_waller_slope * (hot - cold) * s2)
        assert ratio == pytest.approx(expected, rel=2e-3), index_sq
        assert ratio < 1.0


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
    truth = detector.truth
    assert truth["t_c"] == T_C and truth["kind"] == "first_order"
    assert truth["material"] == "SrTiO3" and truth["ordered"] is False
    assert truth["t_up"] == T_UP and truth["t_down"] == T_DOWN


def test_continuous_superlattice_zero_above_t_c_and_its_tilt_law_below() -> None:
    controller = op.TemperatureController()
    detector = op.OperandoDetector(
        controller=controller, seed=5, t_c=T_C, kind="tricritical", material="SrTiO3"
    )
    _, events = run(bp.scan([detector], controller, 300, 500, 101))
    temps = np.array([e["operando_temperature"] for e in events])
    a = detector.sample.lattice[0] * (1 + detector.sample.expansion[0] * (400.0 - 300.0))
    excess, z = superlattice_signal(
        [e["operando_pattern"] for e in events], detector.two_theta, float(a)
    )
    above = temps > T_C
    assert np.all(np.abs(z[above]) < 5), "no superlattice in the cubic phase, within noise"
    assert np.all(z[temps < T_C - 20] > 10)
    below = temps < T_C - 2

    def law(t: np.ndarray, amplitude: float, t_c: float, beta: float) -> np.ndarray:
        return amplitude * np.clip(1 - t / t_c, 1e-12, None) ** (2 * beta)

    (amplitude, t_c, beta), _ = curve_fit(
        law, temps[below], excess[below], p0=(excess.max(), T_C + 5, 0.3)
    )
    assert t_c == pytest.approx(T_C, abs=3.0)
    assert beta == pytest.approx(0.25, abs=0.04)  # intensity ~ tilt^2 ~ (1 - T/T_c)^(2 beta)
    assert amplitude > 0


def test_first_order_hysteresis_heating_transition_above_cooling_transition(
    devices: tuple[op.TemperatureController, op.OperandoDetector],
) -> None:
    controller, detector = devices
    _, cooling = run(bp.scan([detector], controller, 480, 420, 61))
    _, heating = run(bp.list_scan([detector], controller, list(np.arange(420.0, 481.0))))
    a = float(detector.sample.lattice[0] * (1 + detector.sample.expansion[0] * 150.0))

    def edges(events: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        temps = np.array([e["operando_temperature"] for e in events])
        excess, _ = superlattice_signal(
            [e["operando_pattern"] for e in events], detector.two_theta, a
        )
        return temps, excess > 0.5 * excess.max()

    temps, ordered = edges(cooling)
    t_cool = temps[np.argmax(ordered)]
    assert not ordered[0] and ordered[-1]
    temps, ordered = edges(heating)
    t_heat = temps[np.argmin(ordered)]
    assert ordered[0] and not ordered[-1]
    coexistence = detector.truth["coexistence"]
    assert abs(t_cool - T_DOWN) < 2 * coexistence + 1.5
    assert abs(t_heat - T_UP) < 2 * coexistence + 1.5
    assert t_heat - t_cool == pytest.approx(HYSTERESIS, abs=4 * coexistence + 2.5)


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
            d = a / math.sqrt(index_sq)
            one, two = bragg(d, config.wavelength), bragg(d, config.wavelength_ka2)
            doublet = (one + config.ka2_ratio * two) / (1 + config.ka2_ratio)
            measured.append(
                centroid(np.asarray(event["operando_pattern"]), detector.two_theta, doublet, 0.45)
            )
            expected.append(doublet)
        assert measured[0] == pytest.approx(expected[0], abs=0.01), name
        shift, expected_shift = measured[1] - measured[0], expected[1] - expected[0]
        assert expected_shift < -0.05
        assert shift == pytest.approx(expected_shift, abs=0.004), name


def test_count_during_ramp_exposes_along_the_ramp_as_the_generator_does() -> None:
    config = op.OperandoConfig()
    controller = op.TemperatureController()
    detector = op.OperandoDetector(controller=controller, seed=3, t_c=420.0, kind="first_order")
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
    exposures = op.ramp_temperatures(plan, config)[0]
    np.testing.assert_allclose(temps, exposures.mean(axis=1), atol=1e-9)
    sample = detector.sample
    grains0 = op.grains_on_arrival(np.array([300.0]), np.array([True]), sample)
    fraction = op.grain_states(exposures.reshape(1, -1), grains0, sample)[0].mean(axis=0)
    fraction = fraction.reshape(exposures.shape)
    ordered = fraction.mean(axis=1) >= 0.5
    np.testing.assert_array_equal([e["operando_ordered"] for e in events], ordered)
    assert ordered[0] and not ordered[-1]
    patterns = np.array([e["operando_pattern"] for e in events], dtype=float)
    expected = op.expected_pattern(detector.two_theta, exposures, fraction, sample, config)
    chi2 = ((patterns - expected) ** 2 / expected).sum(-1)
    assert np.all(np.abs(chi2 - config.n_points) < 6 * math.sqrt(2 * config.n_points))


def test_the_detector_refuses_an_unknown_material_or_kind() -> None:
    controller = op.TemperatureController()
    with pytest.raises(ValueError, match="material must be one of"):
        op.OperandoDetector(controller=controller, material="BaTiO3")
    with pytest.raises(ValueError, match="kind must be one of"):
        op.OperandoDetector(controller=controller, kind="weakly_first_order")
    with pytest.raises(ValueError, match="hysteresis applies to a first-order sample"):
        op.OperandoDetector(controller=controller, kind="second_order", hysteresis=5.0)


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
    with pytest.raises(ValueError, match="tilt_range"):
        op.OperandoConfig(tilt_range=(8.0, 4.0))
    with pytest.raises(ValueError, match="kind_fractions"):
        op.OperandoConfig(kind_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="materials"):
        op.OperandoConfig(materials=("BaTiO3",))
    with pytest.raises(ValueError, match="supercooling_range"):
        op.OperandoConfig(supercooling_range=(10.0, 90.0))
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
