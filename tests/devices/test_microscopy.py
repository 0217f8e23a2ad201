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
    Imaging,
    MicroscopyConfig,
    MicrostructureConfig,
    SEMCamera,
    XYStage,
    acquire_frames,
    apply_psf,
    boundary_segments,
    decorated_boundaries,
    detect,
    draw_imaging,
    frame_yield,
    lamella_pattern,
    make_devices,
    particle_mask,
    phase_fractions,
    respond,
    simulate,
    specimen,
)

SMALL = MicrostructureConfig(size_px=512, grain_size_um=2.0)
CONFIG = MicroscopyConfig(frame_size=64, n_structures=2, structure=SMALL)
LEVELS = (0.25, 0.65, 0.9, 0.5)  # ferrite, particle, film, lamella


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


def whole(structure, levels=LEVELS) -> np.ndarray:
    """The noiseless SE yield of a whole specimen at the given levels, before the blur."""
    return structure.se_yield(np.asarray(levels), (slice(None), slice(None)))


def test_noiseless_grey_levels_follow_the_constituents_of_each_phase() -> None:
    structure = specimen(SMALL, 0, 0)
    clean = whole(structure)
    for k in range(N_PHASES):
        assert (structure.labels == k).sum() > 1000, f"phase {k} barely present"
    # Particles and films are cementite at their frame's level (texture rms 3 %).
    for phase, level in ((1, LEVELS[1]), (2, LEVELS[2])):
        assert clean[structure.labels == phase].mean() == pytest.approx(level, rel=0.01)
    ferrite = clean[structure.labels == 0]
    assert ferrite.mean() == pytest.approx(LEVELS[0], rel=0.03)  # grain contrast averages out
    assert 0.05 < ferrite.std() / ferrite.mean() < 0.15  # grain contrast 8 %, texture 3 %
    # Pearlite is ferrite and cementite lamellae: a mix at the lamella share (0.3).
    pearlite = clean[structure.labels == 3]
    mix = 0.3 * LEVELS[3] + 0.7 * LEVELS[0]
    assert pearlite.mean() == pytest.approx(mix, rel=0.05)
    lamellae = structure.constituents[structure.labels == 3]
    assert set(np.unique(lamellae)) == {0, 3}
    assert (lamellae == 3).mean() == pytest.approx(0.3, abs=0.03)


def test_phase_brightness_is_drawn_per_frame_so_films_and_particles_overlap() -> None:
    imaging = draw_imaging(MicroscopyConfig(), 2000, np.random.default_rng(0))
    ferrite, particle, film, lamella = imaging.levels.T
    # Cementite is always brighter than ferrite (contrast 2-4x, spread 15 %) ...
    assert (np.minimum(particle, film) > ferrite).all()
    # ... but particles, films and lamellae share one distribution: no level tells them apart.
    assert 0.45 < (film > particle).mean() < 0.55
    assert 0.45 < (lamella > particle).mean() < 0.55
    for a, b in ((film, particle), (lamella, film)):
        assert np.quantile(a, 0.1) < np.quantile(b, 0.5) < np.quantile(a, 0.9)
    # The old fixed levels (films 0.90, particles 0.65) are both inside the common range.
    assert particle.min() < 0.65 < particle.max() and film.min() < 0.9 < film.max()
    # Detector settings too: gain 0.5-2, offset -0.05-0.1, gamma 0.6-1.6, uniform.
    assert imaging.gain.min() >= 0.5 and imaging.gain.max() <= 2.0
    assert imaging.gamma.min() >= 0.6 and imaging.gamma.max() <= 1.6
    assert np.median(imaging.gamma) == pytest.approx(1.1, abs=0.05)


def test_measured_film_and_particle_grey_levels_overlap_across_frames() -> None:
    data = simulate(200, seed=2, config=CONFIG)
    means = {}
    for phase in (1, 2):
        values = []
        for image, mask in zip(data.inputs["images"], data.labels["masks"], strict=True):
            inner = ndimage.binary_erosion(mask == phase, iterations=1)
            if inner.sum() >= 5:
                values.append(image[inner].mean())
        means[phase] = np.asarray(values)
    particle, film = means[1], means[2]
    assert len(particle) > 30 and len(film) > 30
    # Interquartile ranges overlap: a frame's film may well be darker than another's particles.
    assert np.quantile(film, 0.25) < np.quantile(particle, 0.75)
    assert np.quantile(particle, 0.25) < np.quantile(film, 0.75)


def test_detector_response_is_increasing_with_gain_offset_and_gamma() -> None:
    signal = np.linspace(0.0, 1.5, 64, dtype=np.float32).reshape(1, 8, 8)
    out = respond(signal, np.array([1.7]), np.array([0.05]), np.array([0.6]))
    np.testing.assert_allclose(out, 0.05 + 1.7 * signal**0.6, rtol=1e-6)
    assert (np.diff(out.ravel()) > 0).all()
    np.testing.assert_array_equal(
        respond(signal, *np.ones((1, 1)), np.zeros(1), np.ones(1)), signal
    )


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
    # Per-segment thickness: each of three boundaries has its own constant width.
    strips = np.repeat(np.arange(4, dtype=np.int32), 40)[None].repeat(30, axis=0)
    film = decorated_boundaries(strips, 1.0, (1.0, 4.0), np.random.default_rng(3))
    widths = [film[:, s - 20 : s + 20].sum(axis=1) for s in (40, 80, 120)]
    assert all(len(set(w)) == 1 for w in widths)
    assert len({int(w[0]) for w in widths}) > 1
    assert all(3 <= w[0] <= 9 for w in widths)


def test_films_are_thin_and_long_particles_compact_and_some_on_boundaries() -> None:
    structure = specimen(SMALL, 0, 0)
    px = SMALL.pixel_size_um
    elongation = {}  # area / (pi r_in**2), r_in the largest inscribed radius: 1 for a disc
    for phase in (1, 2):
        pieces, count = ndimage.label(structure.labels == phase)
        index = range(1, count + 1)
        area = ndimage.sum(np.ones_like(pieces), pieces, index)
        inscribed = ndimage.maximum(ndimage.distance_transform_edt(pieces > 0), pieces, index)
        elongation[phase] = (area / (np.pi * inscribed**2), area)
    # Films: thin (0.15-0.35 um) and long: nearly all their area in pieces 4x longer than round.
    thickness = 2 * ndimage.distance_transform_edt(structure.labels == 2).max() * px
    assert thickness < 0.5
    shape, area = elongation[2]
    assert area[shape > 4].sum() > 0.95 * area.sum()
    # Particles: compact, nearly all their area in pieces no more than 2.5x a disc.
    shape, particle_area = elongation[1]
    assert particle_area[shape < 2.5].sum() > 0.95 * particle_area.sum()
    # Equivalent diameters: median 0.3-0.7 um (radii 0.15-0.45 um, some clipped by films).
    diameter = 2 * np.sqrt(particle_area / np.pi) * px
    assert 0.3 < np.median(diameter) < 0.7
    # Some particles sit on grain boundaries, like the films (position tells nothing).
    line = boundary_segments(structure.grains) >= 0
    particles, count = ndimage.label(structure.labels == 1)
    touching = ndimage.maximum(line, particles, range(1, count + 1))
    assert 0.2 < np.mean(touching) < 0.8


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
    # A frame's yield is the crop of the whole specimen's blurred yield (context at the edges).
    structure = specimen(SMALL, 0, 0)
    blurred = apply_psf(whole(structure), sigma_px)
    rows, cols = np.array([0, 200, 448]), np.array([448, 17, 0])
    frames = frame_yield(structure, rows, cols, 64, np.tile(LEVELS, (3, 1)), sigma_px)
    for frame, row, col in zip(frames, rows, cols, strict=True):
        np.testing.assert_allclose(frame, blurred[row : row + 64, col : col + 64], atol=1e-5)


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
    mean = camera.noiseless()
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
    residual = camera.image.get() - camera.noiseless()
    assert abs(residual.mean()) < 0.01
    assert residual.std() < 0.08
    # The detector settings map it: offset + gain * signal ** gamma, same noise draw.
    camera.gain.set(1.8).wait()
    camera.offset.set(0.05).wait()
    camera.gamma.set(0.7).wait()
    camera.trigger().wait()
    np.testing.assert_array_equal(camera.truth["mask"], expected)
    assert np.corrcoef(camera.image.get().ravel(), camera.noiseless().ravel())[0, 1] > 0.9
    assert camera.image.get().mean() > 1.2 * camera.noiseless().mean()


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
    _, masks = acquire_frames(
        structure,
        rows,
        cols,
        64,
        Imaging.fixed(LEVELS, n=len(rows)),
        400.0,
        0.0,
        CONFIG.psf_sigma_px,
        np.random.default_rng(0),
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
    assert data.labels["levels"].shape == (12, 4) and data.labels["gamma"].shape == (12,)
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
    rebuilt = simulate(6, seed=7, config=CONFIG)
    np.testing.assert_array_equal(first.inputs["images"], rebuilt.inputs["images"])


def test_simulate_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="frame_size"):
        simulate(1, config=MicroscopyConfig(frame_size=1024, structure=SMALL))
    with pytest.raises(ValueError, match="dose"):
        simulate(1, config=MicroscopyConfig(dose=0.0, structure=SMALL))
    with pytest.raises(ValueError, match=r"gamma=\(1.5, 0.8\) must be an interval"):
        simulate(1, config=MicroscopyConfig(gamma=(1.5, 0.8), structure=SMALL))
    with pytest.raises(ValueError, match="cementite is brighter than ferrite"):
        simulate(1, config=MicroscopyConfig(cementite_contrast=(0.5, 2.0), structure=SMALL))
    with pytest.raises(ValueError, match="imaging holds the conditions of 1 frames, expected 2"):
        simulate(2, config=CONFIG, imaging=Imaging.fixed(LEVELS))


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
    with pytest.raises(ValueError, match="camera_gamma"):
        camera.gamma.set(0.0)
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
    assert key["dims"] == ["row", "column"]
    assert key["pixel_size"] == SMALL.pixel_size_um and key["pixel_size_units"] == "um"
    events = [doc for name, doc in docs if name == "event"]
    assert len(events) == 6
    assert all("camera_mask" not in e["data"] for e in events)
    assert [e["data"]["xy_x"] for e in events[:3]] == [0.0, 4.5, 9.0]
    assert events[-1]["data"]["camera_image"].shape == (64, 64)
    config = descriptor["configuration"]["camera"]["data"]
    assert config["camera_dose"] == CONFIG.dose
    assert (config["camera_gain"], config["camera_offset"], config["camera_gamma"]) == (1, 0, 1)

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
    assert image[ferrite].mean() == pytest.approx(camera.levels[0], rel=0.15)
    assert np.corrcoef(image.ravel(), camera.noiseless().ravel())[0, 1] > 0.9


def test_count_with_default_devices(run_engine: RunEngine) -> None:
    found = make_devices(seed=0)
    camera = found["camera"]
    assert camera.describe()["camera_image"]["shape"] == [256, 256]
    assert camera.describe()["camera_image"]["pixel_size"] == 0.05
    assert "camera_mask" not in camera.read()
    assert found["xy"].x.limits == (0.0, pytest.approx(89.6))
    docs = collect(run_engine, bp.count([camera], num=2))
    events = [doc for name, doc in docs if name == "event"]
    assert len(events) == 2
    assert events[0]["data"]["camera_image"].dtype == np.float32
    assert not np.array_equal(events[0]["data"]["camera_image"], events[1]["data"]["camera_image"])
