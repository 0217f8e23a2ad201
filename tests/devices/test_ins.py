"""Tests of the spin-wave spectrometer: LSWT physics, the generator and the ophyd device."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.utils import LimitError

from smartlab_plugins.devices import ins

CONFIG = ins.SpinWaveConfig()
MAGNETIC_ONLY = ins.SpinWaveConfig(background_rate=0.0, elastic_rate=0.0)
FWHM = ins.resolution_fwhm(CONFIG.ei, CONFIG.resolution_fraction)
Q_AF = np.sqrt(2.0) * np.pi / CONFIG.lattice_a  # |Q| of the AF point (pi/a, pi/a), 1/angstrom


def mean_counts(
    j1: float, j2: float, d: float, config: ins.SpinWaveConfig = MAGNETIC_ONLY, **settings: float
) -> np.ndarray:
    """Noise-free counts map for one truth at the config's settings, some overridden."""
    merged = {
        "ei": config.ei,
        "temperature": config.temperature,
        "counting_time": config.counting_time,
    } | settings
    truth = (np.array([j1]), np.array([j2]), np.array([d]))
    return ins.expected_counts(*truth, config=config, **merged)[0]


def upper_edge(j1: float, j2: float, d: float) -> float:
    """Highest energy (meV) where the |Q|-summed magnetic spectrum is above half its maximum."""
    spectrum = mean_counts(j1, j2, d).sum(axis=0)
    return float(ins.energy_axis(CONFIG)[np.nonzero(spectrum >= 0.5 * spectrum.max())[0][-1]])


@pytest.fixture(scope="module")
def small_set() -> ins.SimulatedSet:
    """A small generated set shared by the generator tests."""
    return ins.simulate(64, seed=3)


# ---------------------------------------------------------------- dispersion and intensities


@pytest.mark.parametrize(("j1", "j2", "d"), [(0.5, 0.1, 0.05), (1.0, 0.2, 0.1), (1.2, 0.06, 0.15)])
def test_dispersion_gap_at_zone_centre_and_af_point(j1: float, j2: float, d: float) -> None:
    g = np.pi / CONFIG.lattice_a
    omega = ins.dispersion(np.array([0.0, g]), np.array([0.0, g]), j1, j2, d)
    expected = 2 * 2.5 * np.sqrt(d * (4 * j1 + d))
    np.testing.assert_allclose(omega, [expected, expected], rtol=1e-9)
    np.testing.assert_allclose(ins.anisotropy_gap(j1, d), expected, rtol=1e-12)


@pytest.mark.parametrize("ratio", [0.0, 0.15, 0.3])
def test_band_top_is_maximum_of_dispersion(ratio: float) -> None:
    k = np.linspace(-np.pi, np.pi, 241) / CONFIG.lattice_a
    qx, qy = np.meshgrid(k, k)
    omega = ins.dispersion(qx, qy, 1.0, ratio, 0.08)
    assert omega.max() == pytest.approx(float(ins.band_top(1.0, ratio, 0.08)), rel=1e-6)
    assert omega.min() == pytest.approx(float(ins.anisotropy_gap(1.0, 0.08)), rel=1e-6)


def test_velocity_near_af_point_matches_expansion_and_scales_with_j1() -> None:
    g = np.pi / CONFIG.lattice_a
    q = 0.01  # 1/angstrom from the AF point along (1, 0)
    slopes = []
    for j1 in (0.5, 1.0):
        j2, d = 0.15 * j1, 0.1 * j1
        omega = float(ins.dispersion(g + q, g, j1, j2, d))
        gap = float(ins.anisotropy_gap(j1, d))
        slope = np.sqrt(omega**2 - gap**2) / q
        assert slope == pytest.approx(float(ins.spin_wave_velocity(j1, j2, d)), rel=2e-3)
        slopes.append(slope)
    assert slopes[1] / slopes[0] == pytest.approx(2.0, rel=1e-6)


def test_intensity_strong_at_af_point_weak_at_nuclear_zone_centre() -> None:
    lam = mean_counts(0.8, 0.1, 0.08)
    q, e = ins.q_axis(CONFIG), ins.energy_axis(CONFIG)
    at_gap = np.abs(e - ins.anisotropy_gap(0.8, 0.08)) < 0.5 * FWHM
    af = lam[np.argmin(np.abs(q - Q_AF)), at_gap].sum()
    zone_centre = lam[np.argmin(np.abs(q - 2 * np.pi / CONFIG.lattice_a)), at_gap].sum()
    # (A - B)/omega: 8 S J1 / gap at the AF point, 2 S D / gap at the zone centre.
    assert af > 10 * zone_centre


def test_mn2_form_factor_values() -> None:
    assert ins.mn2_form_factor(0.0) == pytest.approx(0.9992, abs=1e-4)
    values = ins.mn2_form_factor(np.array([0.5, 1.0, 2.0, 3.0]))
    assert np.all(np.diff(values) < 0)
    assert ins.mn2_form_factor(4 * np.pi * 0.25) == pytest.approx(
        0.4220 * np.exp(-17.684 / 16)
        + 0.5948 * np.exp(-6.005 / 16)
        + 0.0043 * np.exp(0.609 / 16)
        - 0.0219
    )


# ---------------------------------------------------------------- the simulated map


@pytest.mark.parametrize(
    ("j1", "d"), [(0.5, 0.05), (1.0, 0.1), (0.6, 0.03), (1.2, 0.15), (0.4, 0.02)]
)
def test_simulated_gap_equals_analytic_anisotropy_gap(j1: float, d: float) -> None:
    q = ins.q_axis(CONFIG)
    cut = mean_counts(j1, 0.1 * j1, d)[np.argmin(np.abs(q - Q_AF))]
    onset = ins.energy_axis(CONFIG)[np.argmax(cut >= 0.5 * cut.max())]
    assert abs(onset - ins.anisotropy_gap(j1, d)) <= 0.5 * FWHM


def test_band_edge_scales_linearly_with_j1() -> None:
    edges = [upper_edge(j1, 0.05 * j1, 0.05 * j1) for j1 in (0.55, 1.1)]
    for j1, edge in zip((0.55, 1.1), edges, strict=True):
        top = float(ins.band_top(j1, 0.05 * j1, 0.05 * j1))
        assert top - FWHM <= edge <= top + 0.1
    assert edges[1] / edges[0] == pytest.approx(2.0, abs=0.08)


def test_bose_factor_raises_low_energy_intensity_with_temperature() -> None:
    e = ins.energy_axis(CONFIG)
    cold = mean_counts(0.8, 0.1, 0.08, temperature=5.0).sum(axis=0)
    hot = mean_counts(0.8, 0.1, 0.08, temperature=100.0).sum(axis=0)
    near = np.argmin(np.abs(e - 4.0))
    expected = ins.bose_factor(e[near], 100.0) / ins.bose_factor(e[near], 5.0)
    assert hot[near] / cold[near] == pytest.approx(expected, rel=0.03)
    rng = np.random.default_rng(0)
    maps = [ins.measure(0.8, 0.1, 0.08, rng, CONFIG, temperature=t)[0] for t in (5.0, 100.0)]
    low = (e > 2.0) & (e < 5.0)
    assert maps[1][:, low].sum() > 1.5 * maps[0][:, low].sum()


def test_kinematic_mask_matches_scattering_triangle() -> None:
    ki = np.sqrt(20.0 / ins.E_PER_K2)
    q = np.array([2 * ki * np.sin(np.radians(1.4)), 2 * ki * np.sin(np.radians(1.6))])
    mask = ins.kinematic_mask(q, np.array([0.0, 25.0]), 20.0, 3.0, 135.0)
    assert mask.tolist() == [[False, False], [True, False]]
    lam = mean_counts(0.8, 0.1, 0.08, config=CONFIG)
    expected = ins.kinematic_mask(ins.q_axis(CONFIG), ins.energy_axis(CONFIG), 20.0, 3.0, 135.0)
    assert np.array_equal(lam > 0, expected)
    assert 0.5 < expected.mean() < 1.0


def test_counts_scale_with_counting_time_and_poisson_noise_shrinks() -> None:
    rng = np.random.default_rng(1)
    rel_noise = []
    bright = mean_counts(0.8, 0.1, 0.08, config=CONFIG, counting_time=100.0) > 5
    for time in (100.0, 1600.0):
        lam = mean_counts(0.8, 0.1, 0.08, config=CONFIG, counting_time=time)
        counts = ins.measure(0.8, 0.1, 0.08, rng, CONFIG, counting_time=time)[0]
        residual = (counts[bright] - lam[bright]) / np.sqrt(lam[bright])
        assert residual.std() == pytest.approx(1.0, abs=0.05)
        assert counts.sum() / lam.sum() == pytest.approx(1.0, abs=0.01)
        rel_noise.append(np.std((counts[bright] - lam[bright]) / lam[bright]))
    assert rel_noise[0] / rel_noise[1] == pytest.approx(4.0, rel=0.1)
    np.testing.assert_allclose(
        mean_counts(0.8, 0.1, 0.08, counting_time=300.0),
        3 * mean_counts(0.8, 0.1, 0.08, counting_time=100.0),
        rtol=1e-6,
    )


# ---------------------------------------------------------------- the generator


def test_simulate_shapes_units_and_label_ranges(small_set: ins.SimulatedSet) -> None:
    sqw = small_set.inputs["sqw"]
    assert sqw.shape == (64, 96, 160) and sqw.dtype == np.float32
    assert np.all(sqw == np.round(sqw)) and sqw.min() >= 0
    assert small_set.coords["q"].shape == (96,) and small_set.coords["energy"].shape == (160,)
    labels = small_set.labels
    for key, bounds in (("j1", CONFIG.j1_range), ("j2", CONFIG.j2_range), ("d", CONFIG.d_range)):
        assert labels[key].shape == (64,)
        assert bounds[0] <= labels[key].min() and labels[key].max() <= bounds[1]
    assert np.all(labels["j2"] <= CONFIG.max_j2_over_j1 * labels["j1"] + 1e-6)
    assert small_set.case == "ins" and small_set.units["j1"] == "meV"
    assert small_set.config["ei"] == CONFIG.ei


def test_simulate_is_deterministic(small_set: ins.SimulatedSet) -> None:
    again = ins.simulate(64, seed=3)
    other = ins.simulate(4, seed=4)
    assert np.array_equal(again.inputs["sqw"], small_set.inputs["sqw"])
    assert np.array_equal(again.labels["j1"], small_set.labels["j1"])
    assert not np.array_equal(other.inputs["sqw"], small_set.inputs["sqw"][:4])


def test_truth_draw_is_uniform_on_allowed_region() -> None:
    truth = ins.draw_truth(20000, np.random.default_rng(0), CONFIG)
    assert truth["d"].mean() == pytest.approx(np.mean(CONFIG.d_range), rel=0.02)
    hist, _ = np.histogram(truth["d"], bins=5, range=CONFIG.d_range)
    assert hist.min() > 0.9 * hist.max()


def test_config_refuses_out_of_range_settings() -> None:
    with pytest.raises(ValueError, match="ei=60"):
        ins.SpinWaveConfig(ei=60.0)
    with pytest.raises(ValueError, match="max_j2_over_j1"):
        ins.SpinWaveConfig(max_j2_over_j1=0.6)


# ---------------------------------------------------------------- the ophyd device


def test_device_uses_the_generator_code_path() -> None:
    device = ins.SpinWaveSpectrometer(seed=5, truth=(0.7, 0.1, 0.05))
    device.trigger()
    rng = np.random.default_rng(5)
    ins.draw_truth(1, rng, CONFIG)
    expected = ins.measure(0.7, 0.1, 0.05, rng, CONFIG)[0]
    assert np.array_equal(device.sqw.get(), expected)


def test_device_is_deterministic_for_a_seed() -> None:
    first, second = ins.SpinWaveSpectrometer(seed=2), ins.SpinWaveSpectrometer(seed=2)
    assert first.sample.truth == second.sample.truth
    first.trigger()
    second.trigger()
    assert np.array_equal(first.sqw.get(), second.sqw.get())


def test_describe_and_hidden_truth() -> None:
    device = ins.make_devices(seed=0)["ins"]
    desc = device.describe()["ins_sqw"]
    assert desc["shape"] == [96, 160] and desc["dtype"] == "array"
    assert desc["dtype_numpy"] == "<f4"
    assert set(device.read()) == {"ins_sqw", "ins_ei", "ins_temperature", "ins_counting_time"}
    truth = device.sample.truth
    assert CONFIG.j1_range[0] <= truth["j1"] <= CONFIG.j1_range[1]
    device.sample.j1.kind = "normal"
    assert device.read()["ins_sample_j1"]["value"] == truth["j1"]


@pytest.mark.parametrize(
    ("setting", "value"), [("ei", 60.0), ("temperature", 0.5), ("counting_time", 0.0)]
)
def test_out_of_range_settings_raise_before_motion(setting: str, value: float) -> None:
    device = ins.SpinWaveSpectrometer()
    positioner = getattr(device, setting)
    before = positioner.position
    with pytest.raises(LimitError, match=f"ins_{setting}={value}"):
        positioner.set(value)
    assert positioner.position == before
    with pytest.raises(LimitError):
        RunEngine({})(bp.scan([device], positioner, before, value, 2))


def test_set_truth_refuses_unstable_neel_state() -> None:
    device = ins.SpinWaveSpectrometer()
    with pytest.raises(ValueError, match="J2 < J1/2"):
        device.sample.set_truth(0.5, 0.3, 0.05)


def test_scan_and_count_in_run_engine() -> None:
    device = ins.SpinWaveSpectrometer(seed=1, truth=(0.8, 0.1, 0.08))
    docs: list[tuple[str, dict]] = []
    engine = RunEngine({})
    engine.subscribe(lambda name, doc: docs.append((name, doc)))
    engine(bp.scan([device], device.temperature, 5.0, 150.0, 3))
    engine(bp.count([device], num=2))
    engine(bp.grid_scan([device], device.ei, 15.0, 25.0, 2, device.counting_time, 60.0, 120.0, 2))
    events = [doc for name, doc in docs if name == "event"]
    assert len(events) == 9
    assert [event["data"]["ins_ei"] for event in events[5:]] == [15.0, 15.0, 25.0, 25.0]
    maps = [np.asarray(event["data"]["ins_sqw"]) for event in events]
    assert all(m.shape == (96, 160) and m.dtype == np.float32 for m in maps)
    assert [event["data"]["ins_temperature"] for event in events[:3]] == [5.0, 77.5, 150.0]
    low = (ins.energy_axis(CONFIG) > 2.0) & (ins.energy_axis(CONFIG) < 5.0)
    assert maps[2][:, low].sum() > maps[0][:, low].sum()
    descriptor = next(doc for name, doc in docs if name == "descriptor")
    assert descriptor["data_keys"]["ins_sqw"]["shape"] == [96, 160]
