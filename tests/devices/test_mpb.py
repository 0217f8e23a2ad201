"""Tests of the MPB diffraction instrument: lattice metric, Bragg peaks on the detector,
the phase diagram and its labels, the generator and the ophyd devices."""

from __future__ import annotations

from dataclasses import replace

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.utils import LimitError
from scipy.signal import find_peaks

from smartlab_plugins.devices import mpb

CONFIG = mpb.MPBConfig()
LAMBDA = CONFIG.wavelength
NOMINAL_2THETA = mpb.pixel_angles(np.zeros((1, 2)), CONFIG)[0][0].astype(float)
PIXEL_DEG = float(np.degrees(CONFIG.pixel_size / CONFIG.distance))  # 2-theta per px at centre


def clean_nuisance(n: int = 1, **overrides: np.ndarray) -> dict[str, np.ndarray]:
    """Nuisance with no jitter, no texture, sharp peaks, unit scale and no background."""
    nuisance = {
        "beam_shift": np.zeros((n, 2)),
        "crystallite_size": np.full(n, 200.0),
        "texture_amplitude": np.zeros((n, 3)),
        "texture_phase": np.zeros((n, 3)),
        "scale": np.ones(n),
        "background": np.zeros(n),
    }
    return nuisance | overrides


def clean_image(x: float, temperature: float = 300.0, **overrides: np.ndarray) -> np.ndarray:
    """Noise-free expected counts for one composition and temperature."""
    nuisance = clean_nuisance(**overrides)
    return mpb.mean_counts(np.array([x]), np.array([temperature]), nuisance, CONFIG)[0]


def radial_profile(image: np.ndarray, step: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Mean intensity in 2-theta bins of the nominal pixel map (empty bins dropped)."""
    edges = np.arange(NOMINAL_2THETA.min(), NOMINAL_2THETA.max() + step, step)
    index = np.digitize(NOMINAL_2THETA.ravel(), edges)
    sums = np.bincount(index, weights=image.ravel().astype(float), minlength=edges.size + 1)
    counts = np.bincount(index, minlength=edges.size + 1)
    centres = np.concatenate([[edges[0] - step / 2], edges + step / 2])
    keep = counts > 0
    return centres[keep], sums[keep] / counts[keep]


def peaks_2theta(image: np.ndarray, rel_height: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Positions (deg) and heights of the local maxima of the radial profile."""
    tth, profile = radial_profile(image)
    found, _ = find_peaks(profile, prominence=rel_height * profile.max())
    return tth[found], profile[found]


def peaks_near(image: np.ndarray, centre: float, half: float = 1.5) -> tuple[np.ndarray, ...]:
    """Peaks of the radial profile within +-half deg of centre, sorted by 2-theta."""
    tth, height = peaks_2theta(image)
    near = np.abs(tth - centre) < half
    return tth[near], height[near]


def bragg(d: np.ndarray) -> np.ndarray:
    """2-theta (deg) from d (Angstrom) at the configured wavelength."""
    return np.degrees(2 * np.arcsin(LAMBDA / (2 * np.asarray(d))))


def tetragonal_cell(x: float, temperature: float = 300.0) -> tuple[float, float]:
    """(a, c) in Angstrom of the tetragonal phase, volume a_pc^3."""
    a_pc = float(mpb.pseudo_cubic_a(x, temperature))
    eta = float(mpb.tetragonality(x, temperature))
    a = a_pc / (1 + eta) ** (1 / 3)
    return a, a * (1 + eta)


def rhombohedral_d(hkl: tuple[int, int, int], a: float, alpha_deg: float) -> float:
    """Textbook rhombohedral d-spacing (Angstrom), independent of the metric-tensor code."""
    h, k, l = hkl  # noqa: E741
    ca = np.cos(np.radians(alpha_deg))
    num = (h * h + k * k + l * l) * (1 - ca**2) + 2 * (h * k + k * l + h * l) * (ca**2 - ca)
    den = a**2 * (1 - 3 * ca**2 + 2 * ca**3)
    return float(1 / np.sqrt(num / den))


def distinct(values: np.ndarray, tol: float = 1e-7) -> list[int]:
    """Multiplicities of the distinct values (sorted ascending), equal within tol."""
    values = np.sort(values)
    groups = np.split(values, np.flatnonzero(np.diff(values) > tol) + 1)
    return [len(g) for g in groups]


# ------------------------------------------------------------------ metric tensor, d-spacings


def test_cubic_cell_gives_textbook_d_spacings() -> None:
    cell = np.array([4.05, 4.05, 4.05, 90.0, 90.0, 90.0])
    d = mpb.d_spacings(cell)
    np.testing.assert_allclose(d, 4.05 / np.sqrt((mpb.REFLECTIONS**2).sum(axis=1)), rtol=1e-12)


@pytest.mark.parametrize(
    ("phase", "x", "expected"),
    [
        # d ascending within each family: multiplicities of the split members
        (mpb.RHOMBOHEDRAL, 0.2, {"111": [3, 1], "200": [3], "220": [3, 3]}),
        (mpb.TETRAGONAL, 0.8, {"111": [4], "200": [2, 1], "220": [2, 4]}),
        (mpb.MONOCLINIC, 0.475, {"111": [1, 2, 1], "200": [2, 1], "220": [1, 1, 2, 2]}),
    ],
)
def test_splitting_pattern_of_each_phase(phase: int, x: float, expected: dict) -> None:
    d = mpb.d_spacings(mpb.lattice_parameters(x, 300.0)[phase])
    for f, name in enumerate(mpb.FAMILY_NAMES):
        assert distinct(d[f == mpb.FAMILY_OF]) == expected[name], name


def test_rhombohedral_metric_matches_textbook_formula() -> None:
    cell = mpb.lattice_parameters(0.1, 250.0)[mpb.RHOMBOHEDRAL]
    d = mpb.d_spacings(cell)
    for hkl, value in zip(mpb.REFLECTIONS, d, strict=True):
        assert value == pytest.approx(rhombohedral_d(tuple(hkl), cell[0], cell[3]), rel=1e-10)
    # alpha < 90 deg: the (111) singlet has the larger d (lower 2-theta) than (11-1)
    assert d[0] > d[1]


def test_monoclinic_metric_matches_explicit_small_shear_expansion() -> None:
    cell = mpb.lattice_parameters(0.475, 300.0)[mpb.MONOCLINIC]
    a, c = cell[0], cell[2]
    eps_alpha, eps_gamma = np.radians(90.0 - cell[3]), np.radians(90.0 - cell[5])
    assert 0 < eps_gamma < eps_alpha  # P ~ [u u v] with u < v
    hkl = mpb.REFLECTIONS.astype(float)
    h, k, l = hkl.T  # noqa: E741
    shear = eps_gamma * h * k / a**2 + eps_alpha * (h + k) * l / (a * c)
    inv_d2 = (h**2 + k**2) / a**2 + l**2 / c**2 - 2 * shear
    np.testing.assert_allclose(mpb.d_spacings(cell), 1 / np.sqrt(inv_d2), rtol=2e-4)


# ----------------------------------------------------------------- Bragg peaks on the detector


def test_tetragonal_peaks_on_detector_follow_bragg_law() -> None:
    a, c = tetragonal_cell(0.8)
    expected = bragg(
        [
            a * c / np.sqrt(c**2 * 2 + a**2),
            c / 2,
            a / 2,
            a / np.sqrt(8),
            1 / np.sqrt(4 / a**2 + 4 / c**2),
        ]
    )
    found, _ = peaks_2theta(clean_image(0.8))
    assert found.size == expected.size
    np.testing.assert_allclose(np.sort(found), np.sort(expected), atol=PIXEL_DEG)


def test_rhombohedral_peaks_on_detector_follow_bragg_law() -> None:
    x = 0.1
    a = float(mpb.pseudo_cubic_a(x, 300.0))
    alpha = 90.0 - float(mpb.rhombohedral_shear(x, 300.0))
    hkls = [(1, 1, 1), (1, 1, -1), (2, 0, 0), (2, 2, 0), (2, -2, 0)]
    expected = bragg([rhombohedral_d(h, a, alpha) for h in hkls])
    found, _ = peaks_2theta(clean_image(x))
    assert found.size == expected.size
    np.testing.assert_allclose(np.sort(found), np.sort(expected), atol=PIXEL_DEG)


def test_monoclinic_200_doublet_follows_bragg_law() -> None:
    x = float(mpb.mpb_composition(300.0))
    cell = mpb.lattice_parameters(x, 300.0)[mpb.MONOCLINIC]
    d = mpb.d_spacings(cell)[mpb.FAMILY_OF == 1]
    expected = np.sort(bragg(np.unique(d.round(8))))
    found, height = peaks_near(clean_image(x), expected.mean())
    np.testing.assert_allclose(found, expected, atol=PIXEL_DEG)
    assert height[0] < height[1]  # (002) below (200)/(020): 1 member against 2


@pytest.mark.parametrize("x", [0.6, 0.8, 1.0])
def test_tetragonal_200_splitting_gives_c_over_a(x: float) -> None:
    a, c = tetragonal_cell(x)
    centre, half = (bragg(a / 2) + bragg(c / 2)) / 2, (bragg(a / 2) - bragg(c / 2)) / 2 + 0.7
    (low, high), (h_low, h_high) = peaks_near(clean_image(x), centre, half)
    # Bragg: c/a = sin(theta_200) / sin(theta_002)
    c_over_a = np.sin(np.radians(high / 2)) / np.sin(np.radians(low / 2))
    label = mpb.truth_labels(np.array([x]), np.array([300.0]))["c_over_a"][0]
    assert c_over_a == pytest.approx(c / a, abs=1e-3)
    assert c_over_a == pytest.approx(label, abs=1e-3)
    assert high - low == pytest.approx(bragg(a / 2) - bragg(c / 2), abs=PIXEL_DEG / 2)
    assert (high - low) / PIXEL_DEG > 5  # resolvable: several pixels
    assert h_low / h_high == pytest.approx(0.5, abs=0.08)  # (002):(200)+(020) = 1:2


@pytest.mark.parametrize("x", [0.0, 0.1, 0.3])
def test_rhombohedral_111_splitting_gives_angle(x: float) -> None:
    a = float(mpb.pseudo_cubic_a(x, 300.0))
    alpha = 90.0 - float(mpb.rhombohedral_shear(x, 300.0))
    centre = bragg(a / np.sqrt(3))
    (low, high), (h_low, h_high) = peaks_near(clean_image(x), centre, half=1.0)
    expected = bragg(rhombohedral_d((1, 1, -1), a, alpha)) - bragg(
        rhombohedral_d((1, 1, 1), a, alpha)
    )
    assert high - low == pytest.approx(expected, abs=PIXEL_DEG / 2)
    # small-shear limit: delta d / d = 4/3 (90 - alpha) in rad
    approx = 2 * np.tan(np.radians(centre / 2)) * 4 / 3 * np.radians(90 - alpha)
    assert np.radians(high - low) == pytest.approx(approx, rel=0.1)
    assert (high - low) / PIXEL_DEG > 2.0
    assert h_low / h_high == pytest.approx(1 / 3, abs=0.08)  # (111):(11-1)x3 = 1:3


def test_noisy_frame_still_shows_tetragonal_splitting_within_a_pixel() -> None:
    a, c = tetragonal_cell(0.7)
    config = replace(CONFIG, beam_jitter=0.0)
    frames, _ = mpb.generate_frames(
        np.array([0.7]), np.array([300.0]), np.random.default_rng(5), config
    )
    tth, profile = radial_profile(frames[0])
    window = (tth > bragg(c / 2) - 0.7) & (tth < bragg(a / 2) + 0.7)
    found, _ = find_peaks(profile[window], prominence=0.3 * profile[window].max())
    np.testing.assert_allclose(tth[window][found], bragg([c / 2, a / 2]), atol=PIXEL_DEG)


def test_beam_shift_moves_the_pixel_map_by_whole_pixels() -> None:
    base = mpb.pixel_angles(np.zeros((1, 2)), CONFIG)
    moved = mpb.pixel_angles(np.array([[3.0, 2.0]]), CONFIG)
    for before, after in zip(base, moved, strict=True):
        np.testing.assert_allclose(after[0, 3:, 2:], before[0, :-3, :-2], rtol=1e-5, atol=1e-4)
    _, col = mpb.beam_centre(CONFIG)
    assert col < 0  # the direct beam misses the detector: rings appear as arcs


def test_texture_modulates_the_ring_along_chi() -> None:
    x, amplitude, phase = 0.2, 0.3, 4.0
    plain = clean_image(x)
    textured = clean_image(
        x,
        texture_amplitude=np.array([[0.0, amplitude, 0.0]]),
        texture_phase=np.array([[0.0, phase, 0.0]]),
    )
    two_theta, chi, _ = mpb.pixel_angles(np.zeros((1, 2)), CONFIG)
    ring = (np.abs(two_theta[0] - bragg(float(mpb.pseudo_cubic_a(x, 300.0)) / 2)) < 0.1) & (
        plain > 0.5 * plain.max()
    )
    expected = 1 + amplitude * np.cos(2 * np.pi * (chi[0][ring] - phase) / CONFIG.texture_period)
    np.testing.assert_allclose(textured[ring] / plain[ring], expected, atol=0.02)
    assert np.ptp(expected) > 0.4  # the visible chi range spans most of a period


def test_detector_noise_is_poisson_plus_readout() -> None:
    mean = np.full((200, 97, 243), 20.0, dtype=np.float32)
    counts = mpb.add_detector_noise(mean, np.random.default_rng(1), CONFIG)
    assert counts.dtype == np.float32
    assert counts.mean() == pytest.approx(20.0, abs=0.02)
    assert counts.var() == pytest.approx(20.0 + CONFIG.readout_noise**2, rel=0.01)


# ------------------------------------------------------------------------- phase diagram


@pytest.mark.parametrize("temperature", [100.0, 200.0, 300.0])
def test_label_changes_only_at_documented_boundaries(temperature: float) -> None:
    x = np.linspace(0.0, 1.0, 100_001)
    labels = mpb.phase_label(mpb.phase_fractions(x, temperature))
    change = np.flatnonzero(np.diff(labels))
    sequence = [labels[0], *labels[change + 1]]
    assert sequence == [mpb.RHOMBOHEDRAL, mpb.MIXTURE, mpb.MONOCLINIC, mpb.MIXTURE, mpb.TETRAGONAL]
    boundaries = mpb.label_boundaries(temperature)
    # exact up to the other edge's tail, which a narrow band (300 K) feels at 1e-4
    np.testing.assert_allclose(
        x[change] + 5e-6, boundaries, atol=1e-5 if temperature < 300 else 2e-4
    )
    centre = boundaries.mean()
    assert centre == pytest.approx(float(mpb.mpb_composition(temperature)), abs=1e-12)


def test_monoclinic_band_closes_on_heating_as_noheda_measured() -> None:
    # PRB 63, 014103 (2001): x = 0.48 is monoclinic at 20 K and tetragonal at room temperature
    assert mpb.phase_label(mpb.phase_fractions(0.48, 20.0)) == mpb.MONOCLINIC
    assert mpb.phase_label(mpb.phase_fractions(0.48, 300.0)) == mpb.TETRAGONAL
    assert mpb.monoclinic_width(np.array([20.0, 300.0, 400.0, 600.0])) == pytest.approx(
        [0.06, 0.06 * 100 / 380, 0.0, 0.0]
    )
    x = np.linspace(0.0, 1.0, 100_001)
    labels = mpb.phase_label(mpb.phase_fractions(x, 450.0))
    sequence = [labels[0], *labels[np.flatnonzero(np.diff(labels)) + 1]]
    assert sequence == [mpb.RHOMBOHEDRAL, mpb.MIXTURE, mpb.TETRAGONAL]  # no band at 450 K


def test_curie_line_passes_through_published_points() -> None:
    # Jaffe, Cook & Jaffe (1971): PbZrO3 230 C, x = 0.48 386 C, PbTiO3 490 C
    t_c = mpb.curie_temperature(np.array([0.0, 0.48, 1.0]))
    np.testing.assert_allclose(t_c, [503.15, 659.15, 763.15], atol=1.0)
    x = np.linspace(0.0, 1.0, 100_001)
    labels = mpb.phase_label(mpb.phase_fractions(x, 700.0))
    change = np.flatnonzero(np.diff(labels))
    assert [labels[0], *labels[change + 1]] == [mpb.CUBIC, mpb.MIXTURE, mpb.TETRAGONAL]
    crossing = x[np.argmin(np.abs(mpb.curie_temperature(x) - 700.0))]
    assert x[change].mean() == pytest.approx(crossing, abs=2e-3)
    assert mpb.phase_label(mpb.phase_fractions(0.2, 650.0)) == mpb.CUBIC


def test_cells_match_published_pzt_structures() -> None:
    # Noheda et al., PRB 61, 8687 (2000): Cm cell of PbZr0.52Ti0.48O3 at 20 K
    a_pc, eta, shear, shear_gamma = mpb.monoclinic_from_cm(*mpb.NOHEDA_CM_CELL)
    assert a_pc == pytest.approx(4.0417, abs=1e-4) and eta == pytest.approx(0.0235, abs=1e-4)
    assert shear == pytest.approx(0.353, abs=2e-3) and shear_gamma == pytest.approx(0.125, abs=2e-3)
    a, _, c, alpha, _, gamma = mpb.lattice_parameters(0.48, 20.0)[mpb.MONOCLINIC]
    assert a == pytest.approx(a_pc, rel=0.005) and c == pytest.approx(4.1365, rel=0.005)
    assert 90 - alpha == pytest.approx(shear, abs=0.05)
    assert 90 - gamma == pytest.approx(shear_gamma, abs=0.02)
    # the same paper's tetragonal cell at 325 K: a = 4.046, c = 4.139 angstrom
    a, _, c, *_ = mpb.lattice_parameters(0.48, 325.0)[mpb.TETRAGONAL]
    assert (a, c) == pytest.approx((4.046, 4.139), rel=0.004)
    # PbTiO3 at room temperature: a = 3.904, c = 4.152 angstrom (Shirane et al. 1956)
    a, _, c, *_ = mpb.lattice_parameters(1.0, 300.0)[mpb.TETRAGONAL]
    assert (a, c) == pytest.approx((3.904, 4.152), rel=0.003)
    # cubic above T_C: one cell edge, right angles
    cubic = mpb.lattice_parameters(0.48, 700.0)[mpb.CUBIC]
    assert np.all(cubic[:3] == cubic[0]) and np.all(cubic[3:] == 90.0)


def test_boundary_moves_with_temperature_within_documented_band() -> None:
    centres = mpb.mpb_composition(np.array([20.0, 300.0, 500.0]))
    assert centres == pytest.approx((0.49, 0.465, 0.465), abs=1e-9)
    labels = [mpb.phase_label(mpb.phase_fractions(0.475, t)) for t in (100.0, 300.0, 500.0)]
    assert labels == [mpb.MONOCLINIC, mpb.MIXTURE, mpb.TETRAGONAL]


def test_fractions_are_a_smooth_partition() -> None:
    x = np.linspace(0, 1, 2001)
    for temperature in (300.0, 650.0):
        fractions = mpb.phase_fractions(x, temperature)
        assert fractions.shape == (2001, 4)
        np.testing.assert_allclose(fractions.sum(axis=1), 1.0, atol=1e-12)
    fractions = mpb.phase_fractions(x, 300.0)
    assert np.all(np.diff(fractions[:, 0]) <= 0) and np.all(np.diff(fractions[:, 2]) >= 0)
    centre = mpb.phase_fractions(mpb.mpb_composition(300.0), 300.0)
    assert centre[1] > 0.95
    assert mpb.phase_fractions(0.3, 300.0)[0] == pytest.approx(1.0)
    across = mpb.phase_fractions(0.3, np.linspace(500.0, 700.0, 201))[:, mpb.CUBIC]
    assert np.all(np.diff(across) >= 0) and across[0] < 1e-6 and across[-1] > 1 - 1e-6


def test_distortions_grow_away_from_boundary_and_vanish_at_the_curie_line() -> None:
    eta = mpb.tetragonality(np.array([0.5, 0.7, 0.9]), 300.0)
    shear = mpb.rhombohedral_shear(np.array([0.4, 0.2, 0.0]), 300.0)
    assert np.all(np.diff(eta) > 0) and np.all(np.diff(shear) > 0)
    assert mpb.tetragonality(0.8, 500.0) < mpb.tetragonality(0.8, 300.0)
    assert mpb.rhombohedral_shear(0.2, 500.0) < mpb.rhombohedral_shear(0.2, 300.0)
    # tricritical: strain ~ (T_C - T)^(1/2), zero above T_C
    t_c = float(mpb.curie_temperature(0.8))
    near = mpb.tetragonality(0.8, np.array([t_c - 100.0, t_c - 25.0, t_c + 10.0]))
    assert near[1] / near[0] == pytest.approx(0.5, rel=1e-6) and near[2] == 0.0
    eta_m, shear_m, _ = mpb.monoclinic_strains(np.array([0.47, 0.48, 0.49]), 150.0)
    assert np.all(np.diff(eta_m) > 0) and np.all(np.diff(shear_m) < 0)


# ------------------------------------------------------------------------------- generator


@pytest.fixture(scope="module")
def small_set() -> mpb.SimulatedSet:
    """A small generated set shared by the generator tests."""
    return mpb.simulate(40, seed=4)


def test_simulate_shapes_units_and_ranges(small_set: mpb.SimulatedSet) -> None:
    assert small_set.case == "mpb" and len(small_set) == 40
    image = small_set.inputs["mpb_image"]
    assert image.shape == (40, 97, 243) and image.dtype == np.float32
    labels = small_set.labels
    assert labels["phase"].dtype == np.int64 and set(labels["phase"]) <= {0, 1, 2, 3, 4}
    assert labels["fractions"].shape == (40, 4)
    assert np.all((labels["x"] >= 0) & (labels["x"] <= 1))
    assert np.all((labels["temperature"] >= 100) & (labels["temperature"] <= 800))
    assert np.all(labels["distance"] == CONFIG.distance)
    np.testing.assert_allclose(
        labels["boundary_distance"], np.abs(labels["x"] - labels["x_mpb"]), atol=1e-6
    )
    assert np.all(np.abs(labels["beam_shift"]) <= 3 * CONFIG.beam_jitter)
    assert small_set.coords["two_theta"].shape == (97, 243)
    assert set(small_set.labels) | {"mpb_image", "row", "col", "two_theta", "chi"} <= set(
        small_set.units
    )
    assert small_set.config["wavelength"] == LAMBDA


def test_simulated_tetragonal_frames_have_more_counts_where_bragg_says(
    small_set: mpb.SimulatedSet,
) -> None:
    labels = small_set.labels
    # well below T_C, where (002) stands clear of (200)
    tetragonal = np.flatnonzero(
        (labels["phase"] == mpb.TETRAGONAL) & (labels["curie_margin"] > 150)
    )
    assert tetragonal.size >= 5
    for i in tetragonal[:5]:  # at the nominal geometry (the default config draws none)
        x = float(small_set.labels["x"][i])
        temperature = float(small_set.labels["temperature"][i])
        a_pc = float(mpb.pseudo_cubic_a(x, temperature))
        eta = float(mpb.tetragonality(x, temperature))
        c = a_pc * (1 + eta) ** (2 / 3)
        # the (002) ring (column-wise maximum in the central row) sits at Bragg's angle
        shift = small_set.labels["beam_shift"][i]
        two_theta = mpb.pixel_angles(shift[None], CONFIG)[0][0][48]
        row = small_set.inputs["mpb_image"][i][48]
        window = np.abs(two_theta - bragg(c / 2)) < 0.4
        assert two_theta[window][np.argmax(row[window])] == pytest.approx(bragg(c / 2), abs=0.2)


def test_simulate_is_deterministic_and_independent_of_threads() -> None:
    one = mpb.simulate(6, seed=11, config=replace(CONFIG, chunk=2, workers=1))
    two = mpb.simulate(6, seed=11, config=replace(CONFIG, chunk=2, workers=2))
    other = mpb.simulate(6, seed=12, config=replace(CONFIG, chunk=2, workers=1))
    np.testing.assert_array_equal(one.inputs["mpb_image"], two.inputs["mpb_image"])
    np.testing.assert_array_equal(one.labels["x"], two.labels["x"])
    assert not np.array_equal(one.inputs["mpb_image"], other.inputs["mpb_image"])


def test_oversampling_near_the_boundary() -> None:
    config = replace(CONFIG, near_boundary_fraction=1.0, near_boundary_halfwidth=0.03)
    rng = np.random.default_rng(0)
    x, temperature = mpb.draw_conditions(rng, 2000, config)
    assert np.all(np.abs(mpb.boundary_offset(x, temperature)) <= 0.03 + 1e-12)
    uniform, t_uniform = mpb.draw_conditions(rng, 2000, CONFIG)
    near_share = np.mean(np.abs(mpb.boundary_offset(uniform, t_uniform)) <= 0.03)
    assert near_share == pytest.approx(0.06, abs=0.02)


def test_config_refuses_ranges_outside_limits() -> None:
    with pytest.raises(ValueError, match="x_range"):
        mpb.MPBConfig(x_range=(-0.1, 1.0))
    with pytest.raises(ValueError, match="temperature_range"):
        mpb.MPBConfig(temperature_range=(50.0, 300.0))


# --------------------------------------------------------------------------------- devices


def test_scan_over_composition_in_a_run_engine(RE: RunEngine) -> None:
    devices = mpb.make_devices(seed=1)
    stage, det = devices["sample"], devices["mpb"]
    docs: list[tuple[str, dict]] = []
    RE(bp.scan([det], stage.x, 0.3, 0.7, 21), lambda name, doc: docs.append((name, doc)))
    descriptor = next(doc for name, doc in docs if name == "descriptor")
    key = descriptor["data_keys"]["mpb_image"]
    assert key["shape"] == [97, 243] and key["dtype"] == "array"
    assert key["dtype_numpy"] == "<f4"
    events = [doc for name, doc in docs if name == "event"]
    assert len(events) == 21
    xs = [e["data"]["sample_x"] for e in events]
    np.testing.assert_allclose(xs, np.linspace(0.3, 0.7, 21))
    images = np.array([e["data"]["mpb_image"] for e in events])
    assert images.shape == (21, 97, 243) and images.dtype == np.float32
    assert not any(k in descriptor["data_keys"] for k in ("mpb_phase", "mpb_fractions"))
    # the (002) ring of the tetragonal end (x = 0.7) is absent from the rhombohedral start
    _, c_t = tetragonal_cell(0.7)
    col_002 = int(np.argmin(np.abs(NOMINAL_2THETA[48] - bragg(c_t / 2))))
    assert images[-1][40:57, col_002].mean() > 2 * images[0][40:57, col_002].mean()
    assert stage.x.position == pytest.approx(0.7)
    assert det.truth.phase == mpb.TETRAGONAL


def test_grid_scan_over_composition_and_temperature(RE: RunEngine) -> None:
    devices = mpb.make_devices(seed=2)
    stage, det = devices["sample"], devices["mpb"]
    det.phase.kind = "normal"
    events: list[dict] = []
    plan = bp.grid_scan([det], stage.x, 0.2, 0.76, 3, stage.temperature, 150.0, 750.0, 2)
    RE(plan, lambda name, doc: events.append(doc) if name == "event" else None)
    assert len(events) == 6
    phases = [e["data"]["mpb_phase"] for e in events]
    temps = {e["data"]["sample_temperature"] for e in events}
    assert temps == {150.0, 750.0}
    assert phases == [0, 3, 1, 3, 2, 3]  # x = 0.48 is monoclinic at 150 K; all cubic at 750 K


def test_out_of_range_settings_raise_before_motion(RE: RunEngine) -> None:
    devices = mpb.make_devices()
    stage, det = devices["sample"], devices["mpb"]
    stage.x.move(0.4)
    for bad in (-0.01, 1.2):
        with pytest.raises(LimitError, match=r"sample_x.*\[0.0, 1.0\]"):
            stage.x.set(bad)
        assert stage.x.position == pytest.approx(0.4)
    with pytest.raises(LimitError, match="sample_temperature"):
        RE(bps.mv(stage.temperature, 900.0))
    assert stage.temperature.position == pytest.approx(300.0)
    with pytest.raises(LimitError, match="mpb_count_time"):
        det.count_time.set(0.0)


def test_device_frames_are_seeded_and_use_the_generator_code_path() -> None:
    frames = []
    for _ in range(2):
        devices = mpb.make_devices(seed=9)
        devices["sample"].x.move(0.45)
        devices["sample"].temperature.move(220.0)
        devices["mpb"].count_time.put(0.5)
        devices["mpb"].trigger().wait(1)
        frames.append(devices["mpb"].read()["mpb_image"]["value"])
    np.testing.assert_array_equal(frames[0], frames[1])
    config = replace(CONFIG, count_time=0.5)
    rng = np.random.default_rng(9)
    expected, _ = mpb.generate_frames(np.array([0.45]), np.array([220.0]), rng, config)
    np.testing.assert_array_equal(frames[0], expected[0])


def test_truth_is_hidden_but_reachable() -> None:
    devices = mpb.make_devices()
    stage, det = devices["sample"], devices["mpb"]
    stage.x.move(0.466)
    stage.temperature.move(200.0)
    det.trigger()
    assert set(det.read()) == {"mpb_image"}
    truth = det.truth
    assert truth.phase == mpb.MONOCLINIC and truth.phase_name == "monoclinic"
    centre = float(mpb.mpb_composition(200.0))
    assert truth.boundary_distance == pytest.approx(abs(0.466 - centre), abs=1e-9)
    assert sum(truth.fractions) == pytest.approx(1.0)
    assert truth.curie_temperature == pytest.approx(float(mpb.curie_temperature(0.466)))
    assert det.phase.get() == mpb.MONOCLINIC
    assert det.boundary_distance.get() == pytest.approx(abs(0.466 - centre), abs=1e-9)


# -------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("distance", "arm", "shift"), [(130.0, 53.0, (0.0, 0.0)), (115.0, 51.0, (2.5, -3.0))]
)
def test_declared_poni_geometry_gives_pyfais_own_pixel_angles(
    distance: float, arm: float, shift: tuple[float, float]
) -> None:
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    config = replace(CONFIG, distance=distance, arm_two_theta=arm)
    geometry = mpb.poni_geometry(config, shift)
    detector = Detector(geometry["pixel1"], geometry["pixel2"], max_shape=mpb.DETECTOR_SHAPE)
    poni = {k: v for k, v in geometry.items() if not k.startswith("pixel")}
    integrator = AzimuthalIntegrator(detector=detector, **poni)
    two_theta, chi, _ = mpb.pixel_angles(np.array([shift]), config)
    theirs = np.degrees(integrator.center_array(mpb.DETECTOR_SHAPE, unit="2th_rad"))
    np.testing.assert_allclose(two_theta[0], theirs, atol=1e-3)
    theirs = np.degrees(integrator.center_array(mpb.DETECTOR_SHAPE, unit="chi_rad"))
    np.testing.assert_allclose(chi[0], theirs, atol=1e-3)


def test_the_image_data_key_declares_its_geometry(RE: RunEngine) -> None:
    config = replace(CONFIG, distance=120.0)
    devices = mpb.make_devices(seed=3, config=config)
    descriptors: list[dict] = []
    RE(bp.count([devices["mpb"]]), lambda n, d: descriptors.append(d) if n == "descriptor" else 0)
    geometry = descriptors[0]["data_keys"]["mpb_image"]["geometry"]
    assert geometry == mpb.poni_geometry(config)
    assert geometry["dist"] == pytest.approx(0.12) and geometry["wavelength"] == pytest.approx(
        1.5406e-10
    )


def test_geometry_is_drawn_per_chunk_when_the_config_gives_ranges() -> None:
    config = replace(CONFIG, chunk=4, distance_range=(115.0, 140.0), arm_range=(51.0, 55.0))
    made = mpb.simulate(12, seed=2, config=config)
    distance = made.labels["distance"].reshape(3, 4)
    assert np.all(distance == distance[:, :1]) and len(np.unique(distance[:, 0])) == 3
    assert np.all((distance >= 115.0) & (distance <= 140.0))
