"""Tests of the spin-wave spectrometer: LSWT physics, the generator and the ophyd device."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.utils import LimitError
from scipy.special import ndtr

from smartlab_plugins.devices import ins

CONFIG = ins.SpinWaveConfig()
MAGNETIC_ONLY = ins.SpinWaveConfig(background_rate=0.0, elastic_rate=0.0)
IN_PLANE = ins.SpinWaveConfig(average="in_plane")
MAGNETIC_IN_PLANE = ins.SpinWaveConfig(background_rate=0.0, elastic_rate=0.0, average="in_plane")
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
    # The in-plane average: there a |Q| bin holds only Q_par = |Q|, so the two points are apart.
    # (In the powder average the Warren tail of the AF point fills the zone-centre |Q|.)
    lam = mean_counts(0.8, 0.1, 0.08, config=MAGNETIC_IN_PLANE)
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
    """The onset of scattering is the gap, in either average.

    In-plane: the cut at |Q| = Q_AF rises to half its maximum at the gap. Powder:
    a bin at |Q| holds every Q_par ≤ |Q|, and the Warren edge at Q_par = |Q| puts
    the maximum higher up the dispersion, so the gap is where the spectrum summed
    over Q_AF < |Q| < Q_AF + 0.2 Å^-1 (each bin holds the AF point) reaches 20 %
    of its maximum.
    """
    q, e = ins.q_axis(CONFIG), ins.energy_axis(CONFIG)
    gap = ins.anisotropy_gap(j1, d)
    cut = mean_counts(j1, 0.1 * j1, d, config=MAGNETIC_IN_PLANE)[np.argmin(np.abs(q - Q_AF))]
    assert abs(e[np.argmax(cut >= 0.5 * cut.max())] - gap) <= 0.5 * FWHM
    above = (q > Q_AF) & (q < Q_AF + 0.2)
    spectrum = mean_counts(j1, 0.1 * j1, d)[above].sum(axis=0)
    assert abs(e[np.argmax(spectrum >= 0.2 * spectrum.max())] - gap) <= 0.5 * FWHM


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


# ---------------------------------------------------------------- the orientational average

# Noise-free counts of the in-plane average at the defaults (then the only average), computed
# with the code before the 3-D powder average was added: truths (0.8, 0.1, 0.08) and
# (0.5, 0.12, 0.03) meV; (sample, |Q| bin, energy bin) -> counts, and the map totals.
IN_PLANE_BEFORE = {
    (0, 26, 24): 203.17142591903018,
    (0, 26, 60): 77.75910043598495,
    (0, 70, 30): 104.38749228788228,
    (1, 26, 15): 286.58885536218816,
}
IN_PLANE_TOTALS_BEFORE = (587864.2951046, 649120.99139276)
IN_PLANE_SIMULATE_TOTAL_BEFORE = 9258342  # simulate(16, seed=3).inputs["sqw"].sum()


def test_in_plane_average_reproduces_the_maps_from_before_the_powder_average() -> None:
    truth = (np.array([0.8, 0.5]), np.array([0.1, 0.12]), np.array([0.08, 0.03]))
    lam = ins.expected_counts(*truth, 20.0, 5.0, 600.0, IN_PLANE)
    for index, value in IN_PLANE_BEFORE.items():
        assert lam[index] == pytest.approx(value, rel=1e-6), index
    np.testing.assert_allclose(lam.sum(axis=(1, 2)), IN_PLANE_TOTALS_BEFORE, rtol=1e-6)
    made = ins.simulate(16, seed=3, config=IN_PLANE)
    assert int(made.inputs["sqw"].sum()) == IN_PLANE_SIMULATE_TOTAL_BEFORE
    rng = np.random.default_rng(3)
    drawn = ins.draw_truth(16, rng, IN_PLANE)
    lam = ins.expected_counts(drawn["j1"], drawn["j2"], drawn["d"], 20.0, 5.0, 600.0, IN_PLANE)
    assert np.array_equal(made.inputs["sqw"], rng.poisson(lam).astype(np.float32))


def brute_force_powder(
    q_bin: int, j1: float, j2: float, d: float, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Monte-Carlo ⟨(n+1) S (A-B)/ω F² (1 + cos²θ)⟩ kf/ki of one |Q| bin, per energy bin.

    Independent of the module's averaging code: |Q| uniform in the bin, directions
    uniform on the sphere (normalised Gaussian vectors), the 2-D spin waves at the
    in-plane part of Q, each mode spread over the energy bins by the Gaussian.
    """
    config, spin, a = MAGNETIC_ONLY, MAGNETIC_ONLY.spin, MAGNETIC_ONLY.lattice_a
    edges_q, edges_e = ins.q_edges(config), ins.e_edges(config)
    q = rng.uniform(edges_q[q_bin], edges_q[q_bin + 1], n)
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1)[:, None]
    cx, cy = np.cos(q * v[:, 0] * a), np.cos(q * v[:, 1] * a)
    big_a = spin * (4 * j1 - 4 * j2 * (1 - cx * cy) + 2 * d)
    big_b = 4 * spin * j1 * 0.5 * (cx + cy)
    omega = np.sqrt(big_a**2 - big_b**2)
    s2 = (q / (4 * np.pi)) ** 2
    form = (
        0.4220 * np.exp(-17.684 * s2)
        + 0.5948 * np.exp(-6.005 * s2)
        + 0.0043 * np.exp(0.609 * s2)
        - 0.0219
    )
    bose = 1.0 / (1.0 - np.exp(-omega / (ins.K_B * config.temperature)))
    weight = spin * np.sqrt((big_a - big_b) / (big_a + big_b)) * bose * form**2 * (1 + v[:, 2] ** 2)
    fine = np.arange(0.0, 18.0, 0.01)  # histogram the modes at 0.01 meV, then the Gaussian
    hist, _ = np.histogram(omega, bins=np.append(fine, 18.0), weights=weight)
    sigma = config.resolution_fraction * config.ei / (2 * np.sqrt(2 * np.log(2)))
    spread = np.diff(ndtr((edges_e[None, :] - fine[:, None] - 0.005) / sigma), axis=1)
    centres = 0.5 * (edges_e[1:] + edges_e[:-1])
    return hist / n @ spread * np.sqrt(1 - centres / config.ei)


@pytest.mark.parametrize("q_value", [1.1, 1.6, 2.4, 2.9])
def test_powder_average_agrees_with_brute_force_sphere_average(q_value: float) -> None:
    """Every energy bin within 4 % of the cut's peak, the cut's sum within 1 %.

    The tolerance covers the default quadrature (n_phi = 24 directions in the
    plane: ≤ 2.6 % near the AF point (3π/a, π/a) at 2.4 Å^-1, ≤ 0.5 % with 96)
    and the Monte-Carlo noise of 400,000 directions (≈ 0.5 %).
    """
    j1, j2, d = 0.8, 0.12, 0.08
    q_bin = int(np.argmin(np.abs(ins.q_axis(CONFIG) - q_value)))
    counts = mean_counts(j1, j2, d)[q_bin]
    model = counts / (CONFIG.counting_time * CONFIG.signal_rate)
    expected = brute_force_powder(q_bin, j1, j2, d, 400_000, np.random.default_rng(q_bin))
    inside = counts > 0  # kinematically accessible
    assert np.abs(model - expected)[inside].max() <= 0.04 * expected[inside].max()
    assert model[inside].sum() == pytest.approx(expected[inside].sum(), rel=0.01)


def test_powder_average_has_the_warren_line_shape_at_the_gap() -> None:
    """At the gap energy the AF point becomes a Warren line: a sharp edge, a tail to high |Q|.

    At E = Δ the 2-D spectrum is a rod at Q_par = Q0 = Q_AF of some weight M. A
    powder bin at |Q| averages over u = cos θ uniform in [0, 1] with Q_par =
    |Q| sqrt(1 - u²) and the polarisation factor 1 + u², so
    I(|Q|) = F(|Q|)² ∫ du (1 + u²) M δ(|Q| sqrt(1 - u²) - Q0)
           = M F(|Q|)² (2 - Q0²/|Q|²) Q0 / (|Q| sqrt(|Q|² - Q0²))   for |Q| > Q0,
    and 0 for |Q| < Q0 (sin θ ≤ 1: no orientation brings Q_par up to Q0). The
    in-plane average has the rod at |Q| = Q0 only. Checked on 1.2-2.0 Å^-1, at least
    0.12 Å^-1 from the zone centre (2π/a, 0) = 1.50 Å^-1: the in-plane cut is empty
    (< 1 % of its peak) while the powder cut keeps > 8 % of its peak, and the powder
    cut divided by F² (2 - Q0²/|Q|²) Q0 / (|Q| sqrt(|Q|² - Q0²)) is constant (max/min
    < 1.12; 1.04 today). Below the edge (0.6-0.9 Å^-1), where only the weak
    zone-centre spin waves (Q_par ≈ 0) reach the gap, the powder has < 3 % of its peak.
    """
    j1, j2, d = 0.8, 0.1, 0.08
    q, e = ins.q_axis(CONFIG), ins.energy_axis(CONFIG)
    at_gap = np.abs(e - ins.anisotropy_gap(j1, d)) < 0.5 * FWHM
    powder = mean_counts(j1, j2, d)[:, at_gap].sum(axis=1)
    in_plane = mean_counts(j1, j2, d, config=MAGNETIC_IN_PLANE)[:, at_gap].sum(axis=1)
    tail = (q > 1.2) & (q < 2.0) & (np.abs(q - 2 * np.pi / CONFIG.lattice_a) > 0.12)
    assert in_plane[tail].max() < 0.01 * in_plane.max()
    warren = (2 - Q_AF**2 / q**2) * Q_AF / (q * np.sqrt(np.clip(q**2 - Q_AF**2, 1e-12, None)))
    ratio = powder[tail] / (ins.mn2_form_factor(q[tail]) ** 2 * warren[tail])
    assert ratio.max() / ratio.min() < 1.12
    assert powder[tail].min() > 0.08 * powder.max()  # a tail where the in-plane map is empty
    below = (q > 0.6) & (q < 0.9)
    assert powder[below].max() < 0.03 * powder.max()


def test_polarisation_factor_weights_out_of_plane_orientations() -> None:
    """With no magnetic Q dependence the powder average of 1 + cos²θ is 4/3 of the in-plane."""
    config = ins.SpinWaveConfig()
    matrix = ins.powder_matrix(config)
    form2 = ins.mn2_form_factor(ins.q_axis(config)) ** 2
    np.testing.assert_allclose(matrix.sum(axis=1), 4 / 3 * form2, rtol=2e-3)


def test_powder_average_converges_in_n_theta() -> None:
    """The default n_theta = 512 is within 0.1 Poisson sd of n_theta = 8192, even at 3600 s."""
    truth = (np.array([0.8, 1.2, 0.4]), np.array([0.12, 0.06, 0.12]), np.array([0.08, 0.02, 0.15]))
    maps = [
        ins.expected_counts(*truth, 20.0, 5.0, 3600.0, ins.SpinWaveConfig(n_theta=n))
        for n in (512, 8192)
    ]
    assert (np.abs(maps[0] - maps[1]) / np.sqrt(np.maximum(maps[1], 1.0))).max() < 0.1


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
    with pytest.raises(ValueError, match="average='3d'"):
        ins.SpinWaveConfig(average="3d")
    with pytest.raises(ValueError, match="n_theta"):
        ins.SpinWaveConfig(n_theta=0)


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
    assert desc["dims"] == ["q", "energy"]
    assert desc["coords"]["q"]["units"] == "1/angstrom"
    assert desc["coords"]["energy"]["units"] == "meV"
    np.testing.assert_allclose(desc["coords"]["q"]["values"], ins.q_axis(CONFIG))
    np.testing.assert_allclose(desc["coords"]["energy"]["values"], ins.energy_axis(CONFIG))
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
    assert descriptor["data_keys"]["ins_sqw"]["dims"] == ["q", "energy"]
