"""Physics and device tests for the SEM microstructure simulator."""

from __future__ import annotations

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
from ophyd import Kind
from ophyd.utils import LimitError
from scipy import ndimage

from smartlab_plugins.devices.microscopy import (
    N_PHASES,
    MicroscopyConfig,
    MicrostructureConfig,
    SEMCamera,
    XYStage,
    acquire_frames,
    apply_psf,
    blurred_specimen,
    decorated_boundaries,
    detect,
    lamella_pattern,
    make_devices,
    particle_mask,
    phase_fractions,
    simulate,
    specimen,
)

SMALL = MicrostructureConfig(size_px=512, grain_size_um=2.0)
CONFIG = MicroscopyConfig(frame_size=64, n_structures=2, structure=SMALL)


@pytest.fixture
def devices() -> tuple[XYStage, SEMCamera]:
    """A stage and camera over the small test specimen."""
    stage = XYStage(travel_um=CONFIG.travel_um)
    return stage, SEMCamera(stage, seed=5, config=CONFIG)


@pytest.fixture
def run_engine() -> RunEngine:
    """A RunEngine without the interactive context."""
    return RunEngine({}, call_returns_result=True)


def collect(run_engine: RunEngine, plan: object) -> list[tuple[str, dict]]:
    """Run ``plan`` and return every (name, document) pair it emitted."""
    docs: list[tuple[str, dict]] = []
    run_engine(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def test_noiseless_phase_grey_levels_match_documented_intensities() -> None:
    structure = specimen(SMALL, 0, 0)
    expected = SMALL.phase_intensities
    for k in range(N_PHASES):
        region = structure.labels == k
        assert region.sum() > 1000, f"phase {k} barely present"
        assert structure.clean[region].mean() == pytest.approx(expected[k], abs=0.01)
    # Far from phase edges the probe blur keeps the grey levels (particles, films, pearlite).
    blurred = blurred_specimen(SMALL, 0, 0, CONFIG.psf_sigma_um)
    interior = ndimage.binary_erosion(structure.labels == 2, iterations=2)
    assert blurred[interior].mean() == pytest.approx(SMALL.intensity_gb_carbide, abs=0.03)
    ferrite = ndimage.binary_erosion(structure.labels == 0, iterations=4)
    assert blurred[ferrite].mean() == pytest.approx(SMALL.intensity_ferrite, abs=0.01)


def test_specimen_composition_and_geometry() -> None:
    structure = specimen(SMALL, 0, 0)
    fractions = structure.fractions
    assert fractions.sum() == pytest.approx(1.0)
    # Pearlite is whole grains: its share follows pearlite_fraction (order 0.25).
    assert 0.1 < fractions[3] < 0.45
    assert np.all(fractions > 0.02)
    # Every pearlite pixel belongs to a grain that is entirely pearlite or carbide/film.
    grains = structure.grains[structure.labels == 3]
    other = structure.labels[np.isin(structure.grains, np.unique(grains))]
    assert np.all(np.isin(other, (2, 3)))


def test_carbide_film_thickness_on_a_straight_boundary() -> None:
    grains = np.zeros((40, 60), dtype=np.int32)
    grains[:, 30:] = 1
    film = decorated_boundaries(grains, 1.0, 2.0, np.random.default_rng(0))
    assert np.all(film.sum(axis=1) == 5)  # 2 * half_width + 1 pixels across
    none = decorated_boundaries(grains, 0.0, 2.0, np.random.default_rng(0))
    assert not none.any()


def test_particle_area_matches_ellipse() -> None:
    centres = np.array([[50, 50], [50, 150]])
    semi_axes = np.array([[12.0, 8.0], [6.0, 6.0]])
    mask = particle_mask((100, 200), centres, semi_axes, np.array([0.3, 0.0]))
    labelled, count = ndimage.label(mask)
    assert count == 2
    areas = ndimage.sum(mask, labelled, [1, 2])
    np.testing.assert_allclose(areas, np.pi * semi_axes.prod(axis=1), rtol=0.04)


def test_lamella_period_and_cementite_share() -> None:
    grains = np.zeros((64, 256), dtype=np.int32)
    region = np.ones_like(grains, dtype=bool)
    pattern = lamella_pattern(
        grains, region, np.array([7.3]), np.array([0.0]), np.array([0.1]), 0.3
    )
    profile = pattern[0].astype(float)
    assert profile.mean() == pytest.approx(0.3, abs=0.02)
    spectrum = np.abs(np.fft.rfft(profile - profile.mean()))
    assert 256 / spectrum.argmax() == pytest.approx(7.3, rel=0.02)
    np.testing.assert_array_equal(pattern[0], pattern[-1])  # angle 0: lamellae along y


def test_psf_width_measured_on_an_edge() -> None:
    sigma_px = CONFIG.psf_sigma_um / SMALL.pixel_size_um
    step = np.zeros((8, 200), dtype=np.float32)
    step[:, 100:] = 1.0
    edge = apply_psf(step, sigma_px)[4]
    line_spread = np.diff(edge)
    x = np.arange(line_spread.size) + 0.5
    centre = (x * line_spread).sum() / line_spread.sum()
    width = np.sqrt(((x - centre) ** 2 * line_spread).sum() / line_spread.sum())
    assert width == pytest.approx(sigma_px, rel=0.05)
    # 10-90 % rise of a Gaussian edge is 2.563 sigma (a wide PSF, so pixels resolve it).
    wide = apply_psf(step, 4.0)[4]
    rise = np.interp([0.1, 0.9], wide, np.arange(wide.size))
    assert rise[1] - rise[0] == pytest.approx(2.563 * 4.0, rel=0.03)
    # The camera's blurred specimen is this same blur of the clean SE yield.
    structure = specimen(SMALL, 0, 0)
    np.testing.assert_allclose(
        blurred_specimen(SMALL, 0, 0, CONFIG.psf_sigma_um), apply_psf(structure.clean, sigma_px)
    )


@pytest.mark.parametrize("dose", [50.0, 400.0, 3200.0])
def test_shot_noise_variance_scales_inversely_with_dose(dose: float) -> None:
    flat = np.full((256, 256), 0.5)
    image = detect(flat, dose, 0.0, np.random.default_rng(1))
    assert image.mean() == pytest.approx(0.5, rel=0.01)
    assert image.var() == pytest.approx(0.5 / dose, rel=0.03)
    with_readout = detect(flat, dose, 0.02, np.random.default_rng(1))
    assert with_readout.var() == pytest.approx(0.5 / dose + 0.02**2, rel=0.03)


def test_camera_noise_follows_dose(devices: tuple[XYStage, SEMCamera]) -> None:
    stage, camera = devices
    stage.x.move(5.0)
    stage.y.move(3.0)
    row, col = camera.pixel_position()
    mean = camera.blurred[row : row + 64, col : col + 64]
    variances = {}
    for dose in (100.0, 1600.0):
        camera.dose.set(dose).wait()
        camera.readout_noise.set(0.0).wait()
        residuals = []
        for _ in range(4):
            camera.trigger().wait()
            residuals.append(camera.image.get() - mean)
        variances[dose] = np.var(residuals) / mean.mean()
    assert variances[100.0] == pytest.approx(1 / 100.0, rel=0.05)
    assert variances[1600.0] == pytest.approx(1 / 1600.0, rel=0.05)


def test_mask_is_the_crop_of_the_global_label_map(devices: tuple[XYStage, SEMCamera]) -> None:
    stage, camera = devices
    stage.x.move(7.32)
    stage.y.move(12.0)
    camera.trigger().wait()
    row, col = round(12.0 / 0.05), round(7.32 / 0.05)
    assert camera.pixel_position() == (row, col)
    expected = camera.specimen.labels[row : row + 64, col : col + 64]
    np.testing.assert_array_equal(camera.truth["mask"], expected)
    np.testing.assert_allclose(camera.truth["fractions"], phase_fractions(expected[None])[0])
    # The image is the noisy version of the same region, not of another one.
    residual = camera.image.get() - camera.blurred[row : row + 64, col : col + 64]
    assert abs(residual.mean()) < 0.01
    assert residual.std() < 0.06


def test_fractions_from_masks_reproduce_the_global_map() -> None:
    data = simulate(400, seed=3, config=CONFIG)
    fractions = data.labels["fractions"]
    np.testing.assert_allclose(fractions.sum(axis=1), 1.0)
    np.testing.assert_allclose(fractions, phase_fractions(data.labels["masks"]))
    global_fractions = np.mean([specimen(SMALL, 3, k).fractions for k in range(2)], axis=0)
    np.testing.assert_allclose(fractions.mean(axis=0), global_fractions, atol=0.03)
    # Frames tiling the whole specimen give exactly the global statistics.
    structure = specimen(SMALL, 3, 0)
    starts = np.arange(0, 512, 64)
    rows, cols = (g.ravel() for g in np.meshgrid(starts, starts, indexing="ij"))
    blurred = blurred_specimen(SMALL, 3, 0, CONFIG.psf_sigma_um)
    _, masks = acquire_frames(
        blurred, structure.labels, rows, cols, 64, 400.0, 0.0, np.random.default_rng(0)
    )
    np.testing.assert_allclose(phase_fractions(masks).mean(axis=0), structure.fractions)


def test_simulate_shapes_ranges_and_positions() -> None:
    data = simulate(12, seed=4, config=CONFIG)
    assert data.case == "microscopy"
    assert len(data) == 12
    assert data.inputs["images"].shape == (12, 64, 64)
    assert data.inputs["images"].dtype == np.float32
    assert data.labels["masks"].dtype == np.uint8
    assert data.labels["masks"].max() < N_PHASES
    assert data.labels["fractions"].shape == (12, 4)
    positions = data.labels["positions"]
    assert positions.min() >= 0.0
    assert positions.max() <= CONFIG.travel_um + 1e-9
    assert set(np.unique(data.labels["structure"])) <= {0, 1}
    assert data.coords["pixel_x"][1] == pytest.approx(SMALL.pixel_size_um)
    assert data.config["frame_size"] == 64
    assert data.config["structure"]["size_px"] == 512
    # Every frame is the crop of its specimen at the recorded position.
    for i in range(3):
        structure = specimen(SMALL, 4, int(data.labels["structure"][i]))
        col, row = np.rint(positions[i] / SMALL.pixel_size_um).astype(int)
        np.testing.assert_array_equal(
            data.labels["masks"][i], structure.labels[row : row + 64, col : col + 64]
        )


def test_simulate_is_deterministic_and_seed_dependent() -> None:
    first = simulate(6, seed=7, config=CONFIG)
    again = simulate(6, seed=7, config=CONFIG)
    other = simulate(6, seed=8, config=CONFIG)
    np.testing.assert_array_equal(first.inputs["images"], again.inputs["images"])
    np.testing.assert_array_equal(first.labels["masks"], again.labels["masks"])
    assert not np.array_equal(first.inputs["images"], other.inputs["images"])
    specimen.cache_clear()
    blurred_specimen.cache_clear()
    rebuilt = simulate(6, seed=7, config=CONFIG)
    np.testing.assert_array_equal(first.inputs["images"], rebuilt.inputs["images"])


def test_simulate_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="frame_size"):
        simulate(1, config=MicroscopyConfig(frame_size=1024, structure=SMALL))
    with pytest.raises(ValueError, match="dose"):
        simulate(1, config=MicroscopyConfig(dose=0.0, structure=SMALL))


def test_device_is_deterministic_for_a_seed() -> None:
    frames = []
    for _ in range(2):
        stage = XYStage(travel_um=CONFIG.travel_um)
        camera = SEMCamera(stage, seed=11, config=CONFIG)
        stage.x.move(2.0)
        camera.trigger().wait()
        frames.append(camera.image.get())
    np.testing.assert_array_equal(frames[0], frames[1])


def test_out_of_range_settings_raise_before_motion(
    devices: tuple[XYStage, SEMCamera], run_engine: RunEngine
) -> None:
    stage, camera = devices
    stage.x.move(1.0)
    with pytest.raises(LimitError, match=r"xy_x=.* um is outside the allowed range \[0\.0, "):
        stage.x.move(CONFIG.travel_um + 0.1)
    with pytest.raises(LimitError, match="xy_y"):
        stage.y.move(-0.5)
    assert stage.x.position == 1.0
    assert stage.y.position == 0.0
    with pytest.raises(LimitError):
        run_engine(bps.mv(stage.x, -3.0))
    assert stage.x.position == 1.0
    with pytest.raises(ValueError, match="camera_dose"):
        camera.dose.set(0.0)
    with pytest.raises(ValueError, match="camera_readout_noise"):
        camera.readout_noise.set(2.0)
    assert camera.dose.get() == CONFIG.dose
    # A stage with more travel than the specimen allows: the camera refuses to image.
    wide = XYStage(name="wide", travel_um=100.0)
    off_camera = SEMCamera(wide, config=CONFIG)
    wide.x.move(50.0)
    with pytest.raises(ValueError, match="off the specimen"):
        off_camera.trigger()


def test_grid_scan_events_and_hidden_mask(
    devices: tuple[XYStage, SEMCamera], run_engine: RunEngine
) -> None:
    stage, camera = devices
    docs = collect(run_engine, bp.grid_scan([camera], stage.y, 0.0, 6.0, 2, stage.x, 0.0, 9.0, 3))
    descriptor = next(doc for name, doc in docs if name == "descriptor")
    key = descriptor["data_keys"]["camera_image"]
    assert key["shape"] == [64, 64]
    assert key["dtype"] == "array"
    assert np.dtype(key["dtype_numpy"]) == np.float32
    events = [doc for name, doc in docs if name == "event"]
    assert len(events) == 6
    assert all("camera_mask" not in e["data"] for e in events)
    assert [e["data"]["xy_x"] for e in events[:3]] == [0.0, 4.5, 9.0]
    assert events[-1]["data"]["camera_image"].shape == (64, 64)
    config = descriptor["configuration"]["camera"]["data"]
    assert config["camera_dose"] == CONFIG.dose

    camera.mask.kind = Kind.normal
    docs = collect(run_engine, bp.list_scan([camera], stage.x, [2.0, 8.0], stage.y, [1.0, 5.0]))
    events = [doc for name, doc in docs if name == "event"]
    assert len(events) == 2
    last = events[-1]["data"]
    row, col = round(5.0 / 0.05), round(8.0 / 0.05)
    np.testing.assert_array_equal(
        last["camera_mask"], camera.specimen.labels[row : row + 64, col : col + 64]
    )
    image = last["camera_image"]
    ferrite = ndimage.binary_erosion(last["camera_mask"] == 0, iterations=3)
    assert image[ferrite].mean() == pytest.approx(SMALL.intensity_ferrite, abs=0.06)
    noiseless = camera.blurred[row : row + 64, col : col + 64]
    assert np.corrcoef(image.ravel(), noiseless.ravel())[0, 1] > 0.9


def test_count_with_default_devices(run_engine: RunEngine) -> None:
    found = make_devices(seed=0)
    camera = found["camera"]
    assert camera.describe()["camera_image"]["shape"] == [256, 256]
    assert "camera_mask" not in camera.read()
    assert found["xy"].x.limits == (0.0, pytest.approx(89.6))
    docs = collect(run_engine, bp.count([camera], num=2))
    events = [doc for name, doc in docs if name == "event"]
    assert len(events) == 2
    assert events[0]["data"]["camera_image"].dtype == np.float32
    assert not np.array_equal(events[0]["data"]["camera_image"], events[1]["data"]["camera_image"])
