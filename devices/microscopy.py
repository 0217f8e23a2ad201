"""SEM-like imaging of a synthetic multiphase (steel-like) microstructure.

A specimen is a large label map (default 2048 x 2048 pixels of 0.05 um, i.e.
102.4 um square) with four phases, generated once per seed:

* ``0`` ferrite matrix: Poisson-Voronoi grains, each with a small
  channelling-contrast offset to its grey level;
* ``1`` spheroidite: roughly round (elliptical) cementite particles with
  log-normal radii, sitting in the ferrite;
* ``2`` grain-boundary carbide: bright films of constant thickness along a
  random subset of the grain boundaries;
* ``3`` lamellar pearlite: whole grains filled with alternating cementite and
  ferrite lamellae of a per-colony spacing and orientation.

The phase map sets a secondary-electron yield image (one grey level per
phase, grain offsets, a smooth etch texture); the microscope blurs it with a
Gaussian probe and counts electrons (Poisson shot noise at a given dose plus
Gaussian readout noise). :class:`SEMCamera` returns the frame under the
current :class:`XYStage` position; :func:`simulate` returns frames from random
positions with their ground-truth masks and phase area fractions. Both use
:func:`acquire_frames`, so live frames and training frames are made by the same
code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device
from ophyd.status import DeviceStatus, StatusBase
from scipy import ndimage

from smartlab_plugins.devices.dataset import SimulatedSet, config_dict
from smartlab_plugins.devices.signals import ArraySignal, LimitedPositioner, RangeSignal

CASE = "microscopy"
PHASES: tuple[str, ...] = ("ferrite", "spheroidite", "gb_carbide", "pearlite")
N_PHASES = len(PHASES)
DOSE_RANGE: tuple[float, float] = (1.0, 1.0e6)
READOUT_NOISE_RANGE: tuple[float, float] = (0.0, 1.0)


@dataclass(frozen=True)
class MicrostructureConfig:
    """How a specimen is built; every length in um, grey levels in SE yield units.

    ``size_px`` x ``size_px`` pixels of ``pixel_size_um``. Grains: Poisson-Voronoi
    with mean grain area ``grain_size_um**2``; a fraction ``pearlite_fraction``
    of them are pearlite colonies. Pearlite lamella spacing per colony is drawn
    uniformly from ``lamella_spacing_um``, the orientation uniformly from
    [0, pi) and the cementite share of each period is
    ``lamella_cementite_fraction``. Grain-boundary carbide films
    ``gb_thickness_um`` thick decorate each boundary segment (grain pair) with
    probability ``gb_coverage``. Spheroidite particles: log-normal equivalent
    radius (median ``particle_radius_um``, log-sd ``particle_radius_log_sd``)
    clipped to ``particle_radius_range_um``, aspect ratio uniform in
    ``particle_aspect_range``, number chosen so that they would cover
    ``particle_area_fraction`` of the ferrite without overlaps. Grey levels:
    ``intensity_*`` per phase (pearlite lamellae alternate
    ``intensity_lamella_cementite`` and ferrite), ferrite grains get an offset
    with standard deviation ``grain_contrast``; a smooth multiplicative texture
    of rms ``texture_rms`` and correlation length ``texture_length_um``
    covers everything.
    """

    size_px: int = 2048
    pixel_size_um: float = 0.05
    grain_size_um: float = 6.0
    pearlite_fraction: float = 0.25
    lamella_spacing_um: tuple[float, float] = (0.30, 0.50)
    lamella_cementite_fraction: float = 0.30
    gb_thickness_um: float = 0.25
    gb_coverage: float = 0.75
    particle_radius_um: float = 0.25
    particle_radius_log_sd: float = 0.25
    particle_radius_range_um: tuple[float, float] = (0.15, 0.45)
    particle_aspect_range: tuple[float, float] = (1.0, 1.4)
    particle_area_fraction: float = 0.08
    intensity_ferrite: float = 0.25
    intensity_spheroidite: float = 0.65
    intensity_gb_carbide: float = 0.90
    intensity_lamella_cementite: float = 0.65
    grain_contrast: float = 0.03
    texture_rms: float = 0.03
    texture_length_um: float = 0.25

    @property
    def extent_um(self) -> float:
        """Side length of the specimen (um)."""
        return self.size_px * self.pixel_size_um

    @property
    def pearlite_intensity(self) -> float:
        """Mean grey level of a pearlite colony: lamella-share-weighted mix."""
        f = self.lamella_cementite_fraction
        return f * self.intensity_lamella_cementite + (1.0 - f) * self.intensity_ferrite

    @property
    def phase_intensities(self) -> np.ndarray:
        """Mean noiseless grey level of each phase, indexed by phase id."""
        return np.array(
            [
                self.intensity_ferrite,
                self.intensity_spheroidite,
                self.intensity_gb_carbide,
                self.pearlite_intensity,
            ]
        )


@dataclass(frozen=True)
class MicroscopyConfig:
    """Generator settings: imaging (probe, dose, noise, frame) and the specimen.

    ``frame_size`` pixels square per frame; ``psf_sigma_um`` the Gaussian probe
    standard deviation (um); ``dose`` the detected electrons per pixel at unit
    SE yield (shot noise is Poisson in these counts); ``readout_noise`` the
    Gaussian detector noise sd in output (yield) units. Frames come from
    ``n_structures`` specimens, specimen ``k`` built from ``(seed, k)``.
    """

    frame_size: int = 256
    psf_sigma_um: float = 0.04
    dose: float = 400.0
    readout_noise: float = 0.01
    n_structures: int = 2
    structure: MicrostructureConfig = field(default_factory=MicrostructureConfig)

    @property
    def travel_um(self) -> float:
        """Stage travel per axis (um): specimen extent minus the frame size."""
        return (self.structure.size_px - self.frame_size) * self.structure.pixel_size_um


@dataclass(frozen=True, eq=False)
class Microstructure:
    """One generated specimen: phase labels, grain ids and the noiseless SE yield.

    ``labels`` (uint8, phase ids), ``grains`` (int32 Voronoi cell ids) and
    ``clean`` (float32 SE yield before the probe blur) share the shape
    ``(size_px, size_px)``; rows run along y, columns along x.
    """

    labels: np.ndarray
    grains: np.ndarray
    clean: np.ndarray
    pixel_size_um: float

    @property
    def fractions(self) -> np.ndarray:
        """Area fraction of each phase over the whole specimen."""
        return np.bincount(self.labels.ravel(), minlength=N_PHASES) / self.labels.size


def voronoi_grains(shape: tuple[int, int], n_grains: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Voronoi tessellation: id of the nearest of ``n_grains`` uniform seeds.

    Returns int32 ids in ``[0, n_grains)`` per pixel (exact Euclidean
    nearest-seed assignment through the distance transform's indices).
    """
    markers = np.zeros(shape, dtype=np.int32)
    rows = rng.integers(0, shape[0], n_grains)
    cols = rng.integers(0, shape[1], n_grains)
    markers[rows, cols] = np.arange(1, n_grains + 1, dtype=np.int32)
    nearest = ndimage.distance_transform_edt(
        markers == 0, return_distances=False, return_indices=True
    )
    return markers[nearest[0], nearest[1]] - 1


def decorated_boundaries(
    grains: np.ndarray, coverage: float, half_width_px: float, rng: np.random.Generator
) -> np.ndarray:
    """Carbide film mask along a random subset of grain boundaries.

    The boundary line is the one-pixel set where a pixel's grain differs from
    its right or lower neighbour. Each grain pair (boundary segment) is
    decorated with probability ``coverage``; the film is every pixel within
    Euclidean distance ``half_width_px`` of a decorated line pixel, so it is
    ``2 * half_width_px + 1`` pixels thick across a straight boundary.
    """
    n = np.int64(grains.max()) + 1
    right = grains[:, :-1] != grains[:, 1:]
    down = grains[:-1, :] != grains[1:, :]
    pair_right = _pair_key(grains[:, :-1][right], grains[:, 1:][right], n)
    pair_down = _pair_key(grains[:-1, :][down], grains[1:, :][down], n)
    unique, inverse = np.unique(np.concatenate([pair_right, pair_down]), return_inverse=True)
    keep = (rng.random(unique.size) < coverage)[inverse]
    line = np.zeros(grains.shape, dtype=bool)
    line[:, :-1][right] = keep[: pair_right.size]
    line[:-1, :][down] |= keep[pair_right.size :]
    if not line.any():
        return line
    return ndimage.distance_transform_edt(~line) <= half_width_px


def _pair_key(a: np.ndarray, b: np.ndarray, n: np.int64) -> np.ndarray:
    """Order-independent integer key of a grain pair."""
    a = a.astype(np.int64)
    b = b.astype(np.int64)
    return np.minimum(a, b) * n + np.maximum(a, b)


def lamella_pattern(
    grains: np.ndarray,
    region: np.ndarray,
    spacing_px: np.ndarray,
    angle: np.ndarray,
    phase: np.ndarray,
    cementite_fraction: float,
) -> np.ndarray:
    """Cementite lamellae of pearlite colonies (bool mask, True = cementite).

    In colony ``g`` the lamella coordinate is
    ``u = (x cos(angle[g]) + y sin(angle[g])) / spacing_px[g] + phase[g]`` and a
    pixel is cementite where ``u - floor(u) < cementite_fraction``; only pixels
    in ``region`` are evaluated.
    """
    rows, cols = np.nonzero(region)
    g = grains[rows, cols]
    u = (cols * np.cos(angle[g]) + rows * np.sin(angle[g])) / spacing_px[g] + phase[g]
    out = np.zeros(grains.shape, dtype=bool)
    out[rows, cols] = (u - np.floor(u)) < cementite_fraction
    return out


def particle_mask(
    shape: tuple[int, int],
    centres: np.ndarray,
    semi_axes: np.ndarray,
    angles: np.ndarray,
) -> np.ndarray:
    """Elliptical particles rasterised at pixel centres (bool mask).

    ``centres`` (k, 2) rows/cols in pixels, ``semi_axes`` (k, 2) major/minor in
    pixels, ``angles`` (k,) radians. Each pixel is tested against the ellipse
    of its nearest particle centre (distance-transform indices), so
    overlapping particles split along their bisector.
    """
    if len(centres) == 0:
        return np.zeros(shape, dtype=bool)
    markers = np.zeros(shape, dtype=np.int32)
    markers[centres[:, 0], centres[:, 1]] = np.arange(1, len(centres) + 1, dtype=np.int32)
    distance, nearest = ndimage.distance_transform_edt(markers == 0, return_indices=True)
    rows, cols = np.nonzero(distance <= semi_axes[:, 0].max())
    k = markers[nearest[0, rows, cols], nearest[1, rows, cols]] - 1
    dy = rows - centres[k, 0]
    dx = cols - centres[k, 1]
    u = dx * np.cos(angles[k]) + dy * np.sin(angles[k])
    v = -dx * np.sin(angles[k]) + dy * np.cos(angles[k])
    inside = (u / semi_axes[k, 0]) ** 2 + (v / semi_axes[k, 1]) ** 2 <= 1.0
    out = np.zeros(shape, dtype=bool)
    out[rows[inside], cols[inside]] = True
    return out


def smooth_texture(
    shape: tuple[int, int], length_px: float, rms: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian random field with correlation length ``length_px`` and given rms."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), length_px)
    return field_ * np.float32(rms / max(float(field_.std()), 1e-12))


def build_microstructure(config: MicrostructureConfig, rng: np.random.Generator) -> Microstructure:
    """Generate one specimen: grains, pearlite, carbide films, particles, SE yield."""
    c = config
    shape = (c.size_px, c.size_px)
    px = c.pixel_size_um
    n_grains = max(1, round(c.extent_um**2 / c.grain_size_um**2))
    grains = voronoi_grains(shape, n_grains, rng)

    pearlite_grain = rng.random(n_grains) < c.pearlite_fraction
    spacing = rng.uniform(*c.lamella_spacing_um, n_grains) / px
    angle = rng.uniform(0.0, np.pi, n_grains)
    lamella_phase = rng.random(n_grains)
    offsets = rng.normal(0.0, c.grain_contrast, n_grains)

    labels = np.zeros(shape, dtype=np.uint8)
    pearlite = pearlite_grain[grains]
    labels[pearlite] = 3
    half_width = max(0.0, c.gb_thickness_um / px / 2.0 - 0.5)
    labels[decorated_boundaries(grains, c.gb_coverage, half_width, rng)] = 2
    labels[_place_particles(labels, c, rng)] = 1

    cementite = lamella_pattern(
        grains, labels == 3, spacing, angle, lamella_phase, c.lamella_cementite_fraction
    )
    clean = se_yield(labels, cementite, offsets[grains].astype(np.float32), c)
    clean *= 1.0 + smooth_texture(shape, c.texture_length_um / px, c.texture_rms, rng)
    return Microstructure(labels=labels, grains=grains, clean=clean, pixel_size_um=px)


def _place_particles(
    labels: np.ndarray, c: MicrostructureConfig, rng: np.random.Generator
) -> np.ndarray:
    """Spheroidite mask: particles centred in, and painted onto, ferrite only."""
    px = c.pixel_size_um
    ferrite = np.flatnonzero(labels.ravel() == 0)
    mean_area = np.pi * (c.particle_radius_um / px) ** 2 * np.exp(2 * c.particle_radius_log_sd**2)
    count = min(ferrite.size, round(c.particle_area_fraction * ferrite.size / mean_area))
    radius = (
        np.clip(
            c.particle_radius_um * np.exp(rng.normal(0.0, c.particle_radius_log_sd, count)),
            *c.particle_radius_range_um,
        )
        / px
    )
    aspect = rng.uniform(*c.particle_aspect_range, count)
    semi_axes = np.stack([radius * np.sqrt(aspect), radius / np.sqrt(aspect)], axis=1)
    flat = rng.choice(ferrite, size=count, replace=False)
    centres = np.stack(np.unravel_index(flat, labels.shape), axis=1)
    angles = rng.uniform(0.0, np.pi, count)
    return particle_mask(labels.shape, centres, semi_axes, angles) & (labels == 0)


def se_yield(
    labels: np.ndarray,
    cementite_lamellae: np.ndarray,
    ferrite_offset: np.ndarray,
    config: MicrostructureConfig,
) -> np.ndarray:
    """Noiseless secondary-electron yield per pixel (float32, before texture and blur).

    Ferrite (matrix and pearlitic) is ``intensity_ferrite + ferrite_offset``;
    particles, carbide films and pearlite cementite lamellae take their
    documented grey levels.
    """
    c = config
    levels = np.array(
        [c.intensity_ferrite, c.intensity_spheroidite, c.intensity_gb_carbide, c.intensity_ferrite],
        dtype=np.float32,
    )
    out = levels[labels]
    ferritic = (labels == 0) | ((labels == 3) & ~cementite_lamellae)
    out[ferritic] += ferrite_offset[ferritic]
    out[(labels == 3) & cementite_lamellae] = c.intensity_lamella_cementite
    return out


def apply_psf(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur by the Gaussian probe (sd ``sigma_px`` pixels), reflecting at the edges."""
    return ndimage.gaussian_filter(image.astype(np.float32), sigma_px, mode="reflect")


def detect(
    mean_yield: np.ndarray, dose: float, readout_noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Electron counting: ``Poisson(dose * yield) / dose + N(0, readout_noise**2)``.

    ``mean_yield`` is the blurred SE yield (dimensionless), ``dose`` the
    detected electrons per pixel at unit yield. The result (float32) is in
    yield units, so its mean is ``mean_yield`` and its variance
    ``mean_yield / dose + readout_noise**2``.
    """
    counts = rng.poisson(dose * np.clip(mean_yield, 0.0, None))
    noise = rng.normal(0.0, readout_noise, mean_yield.shape) if readout_noise > 0 else 0.0
    return (counts / dose + noise).astype(np.float32)


def crop(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Square ``size`` windows whose top-left pixels are ``(rows[i], cols[i])``."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))
    return windows[np.asarray(rows), np.asarray(cols)]


def phase_fractions(masks: np.ndarray) -> np.ndarray:
    """Area fraction of each phase per mask: (n, H, W) uint8 -> (n, 4) float64."""
    return np.stack([(masks == k).mean(axis=(1, 2)) for k in range(N_PHASES)], axis=1)


def acquire_frames(
    blurred: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    size: int,
    dose: float,
    readout_noise: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy frames and their masks at the given top-left pixels.

    The one imaging path shared by :class:`SEMCamera` and :func:`simulate`:
    crop the probe-blurred yield and the labels, then count electrons.
    Returns ``(images float32 (n, size, size), masks uint8 (n, size, size))``.
    """
    images = detect(crop(blurred, rows, cols, size), dose, readout_noise, rng)
    return images, crop(labels, rows, cols, size)


@lru_cache(maxsize=4)
def specimen(config: MicrostructureConfig, seed: int, index: int = 0) -> Microstructure:
    """The specimen built from ``(seed, index)`` (cached, arrays read-only)."""
    structure = build_microstructure(config, np.random.default_rng([seed, index]))
    for array in (structure.labels, structure.grains, structure.clean):
        array.setflags(write=False)
    return structure


@lru_cache(maxsize=4)
def blurred_specimen(
    config: MicrostructureConfig, seed: int, index: int, psf_sigma_um: float
) -> np.ndarray:
    """Probe-blurred SE yield of :func:`specimen` (cached, read-only float32)."""
    blurred = apply_psf(specimen(config, seed, index).clean, psf_sigma_um / config.pixel_size_um)
    blurred.setflags(write=False)
    return blurred


def _check_config(config: MicroscopyConfig) -> None:
    """Refuse inconsistent settings with a message naming the setting and range."""
    size = config.structure.size_px
    if not 8 <= config.frame_size <= size:
        raise ValueError(f"frame_size={config.frame_size} px must be in [8, {size}] px")
    if not DOSE_RANGE[0] <= config.dose <= DOSE_RANGE[1]:
        raise ValueError(f"dose={config.dose} electrons/pixel must be in {list(DOSE_RANGE)}")
    if not READOUT_NOISE_RANGE[0] <= config.readout_noise <= READOUT_NOISE_RANGE[1]:
        raise ValueError(f"readout_noise={config.readout_noise} must be in {READOUT_NOISE_RANGE}")
    if config.n_structures < 1:
        raise ValueError(f"n_structures={config.n_structures} must be >= 1")


def simulate(n: int, seed: int = 0, config: MicroscopyConfig | None = None) -> SimulatedSet:
    """``n`` noisy frames from random stage positions with masks and phase fractions.

    Specimen ``k`` of ``config.n_structures`` is :func:`specimen` ``(seed, k)``;
    each frame picks a specimen and a top-left pixel uniformly, then goes
    through :func:`acquire_frames`. Inputs ``images`` (n, F, F) float32 in SE
    yield units; labels ``masks`` (n, F, F) uint8 phase ids, ``fractions``
    (n, 4), ``positions`` (n, 2) stage (x, y) in um and ``structure`` (n,).
    """
    config = config or MicroscopyConfig()
    _check_config(config)
    rng = np.random.default_rng(seed)
    size, frame = config.structure.size_px, config.frame_size
    which = rng.integers(0, config.n_structures, n)
    rows = rng.integers(0, size - frame + 1, n)
    cols = rng.integers(0, size - frame + 1, n)
    images = np.empty((n, frame, frame), dtype=np.float32)
    masks = np.empty((n, frame, frame), dtype=np.uint8)
    chunk = 64
    for k in range(config.n_structures):
        blurred = blurred_specimen(config.structure, seed, k, config.psf_sigma_um)
        labels = specimen(config.structure, seed, k).labels
        picked = np.flatnonzero(which == k)
        for start in range(0, picked.size, chunk):
            sel = picked[start : start + chunk]
            images[sel], masks[sel] = acquire_frames(
                blurred,
                labels,
                rows[sel],
                cols[sel],
                frame,
                config.dose,
                config.readout_noise,
                rng,
            )
    px = config.structure.pixel_size_um
    return SimulatedSet(
        case=CASE,
        seed=seed,
        inputs={"images": images},
        labels={
            "masks": masks,
            "fractions": phase_fractions(masks),
            "positions": np.stack([cols, rows], axis=1) * px,
            "structure": which,
        },
        coords={
            "pixel_x": np.arange(frame) * px,
            "pixel_y": np.arange(frame) * px,
            "phase": np.arange(N_PHASES),
        },
        units={
            "images": "SE yield (counts / dose)",
            "masks": "phase id (0 ferrite, 1 spheroidite, 2 gb_carbide, 3 pearlite)",
            "fractions": "area fraction",
            "positions": "um",
            "pixel_x": "um",
            "pixel_y": "um",
        },
        config=config_dict(config),
    )


class XYStage(Device):
    """XY specimen stage: motor positions are the frame's top-left corner in um.

    Each motor's limits are its travel, [0, ``travel_um``] (default: the specimen
    extent minus one frame); a target outside raises LimitError before motion.
    """

    x = Cpt(LimitedPositioner, egu="um", init_pos=0.0, kind="hinted")
    y = Cpt(LimitedPositioner, egu="um", init_pos=0.0, kind="hinted")

    def __init__(self, *, name: str = "xy", travel_um: float | None = None, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        travel = MicroscopyConfig().travel_um if travel_um is None else travel_um
        self.x.set_limits(0.0, travel)
        self.y.set_limits(0.0, travel)


class SEMCamera(Device):
    """SEM frame grabber over an :class:`XYStage`.

    ``trigger()`` images the specimen region whose top-left corner is at the
    stage's (x, y) (rounded to whole pixels). Read keys: ``camera_image``
    (F, F) float32. Hidden truth, kind 'omitted' until a user sets
    ``camera.mask.kind = Kind.normal`` (same for ``fractions``):
    ``camera_mask`` (F, F) uint8 phase ids, ``camera_fractions`` (4,) float64.
    Settings (configuration): ``camera_dose`` (electrons/pixel) and
    ``camera_readout_noise`` (yield units).
    """

    image = Cpt(ArraySignal, value=np.zeros((0, 0), dtype=np.float32), kind="normal")
    mask = Cpt(ArraySignal, value=np.zeros((0, 0), dtype=np.uint8), kind="omitted")
    fractions = Cpt(ArraySignal, value=np.zeros(N_PHASES), kind="omitted")
    dose = Cpt(RangeSignal, value=400.0, limits=DOSE_RANGE, units="electrons/pixel", kind="config")
    readout_noise = Cpt(
        RangeSignal, value=0.01, limits=READOUT_NOISE_RANGE, units="SE yield", kind="config"
    )

    def __init__(
        self,
        stage: XYStage,
        *,
        name: str = "camera",
        seed: int = 0,
        sample_seed: int | None = None,
        config: MicroscopyConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.config = config or MicroscopyConfig()
        _check_config(self.config)
        self.sample_stage = stage
        self.sample_seed = seed if sample_seed is None else sample_seed
        self._rng = np.random.default_rng(seed)
        frame = self.config.frame_size
        self.image.put(np.zeros((frame, frame), dtype=np.float32))
        self.mask.put(np.zeros((frame, frame), dtype=np.uint8))
        self.dose.put(self.config.dose)
        self.readout_noise.put(self.config.readout_noise)

    @property
    def specimen(self) -> Microstructure:
        """The imaged specimen (:func:`specimen` of ``(sample_seed, 0)``)."""
        return specimen(self.config.structure, self.sample_seed, 0)

    @property
    def blurred(self) -> np.ndarray:
        """Noiseless, probe-blurred SE yield of the whole specimen."""
        return blurred_specimen(
            self.config.structure, self.sample_seed, 0, self.config.psf_sigma_um
        )

    def pixel_position(self) -> tuple[int, int]:
        """Top-left (row, col) pixel of the frame at the current stage position."""
        px = self.config.structure.pixel_size_um
        row = round(float(self.sample_stage.y.position) / px)
        col = round(float(self.sample_stage.x.position) / px)
        last = self.config.structure.size_px - self.config.frame_size
        if not (0 <= row <= last and 0 <= col <= last):
            x, y = self.sample_stage.x.position, self.sample_stage.y.position
            raise ValueError(
                f"{self.name}: stage (x, y) = ({x}, {y}) um puts the frame off the specimen; "
                f"expected both in [0, {last * px}] um"
            )
        return row, col

    def trigger(self) -> StatusBase:
        """Acquire one frame at the stage position; returns a finished status."""
        row, col = self.pixel_position()
        images, masks = acquire_frames(
            self.blurred,
            self.specimen.labels,
            np.array([row]),
            np.array([col]),
            self.config.frame_size,
            float(self.dose.get()),
            float(self.readout_noise.get()),
            self._rng,
        )
        self.image.put(images[0])
        self.mask.put(masks[0])
        self.fractions.put(phase_fractions(masks)[0])
        status = DeviceStatus(self)
        status.set_finished()
        return status

    @property
    def truth(self) -> dict[str, np.ndarray]:
        """Ground truth of the last frame: ``mask`` and phase ``fractions``."""
        return {"mask": self.mask.get(), "fractions": self.fractions.get()}


def make_devices(
    seed: int = 0, config: MicroscopyConfig | None = None
) -> dict[str, XYStage | SEMCamera]:
    """A ready stage and camera (specimen and noise from ``seed``)."""
    config = config or MicroscopyConfig()
    stage = XYStage(name="xy", travel_um=config.travel_um)
    camera = SEMCamera(stage, name="camera", seed=seed, config=config)
    return {"xy": stage, "camera": camera}
