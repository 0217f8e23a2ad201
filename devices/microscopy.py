"""SEM-like imaging of a synthetic multiphase (steel-like) microstructure.

A specimen is a large label map (default 2048 x 2048 pixels of 0.05 um, i.e.
102.4 um square) with four phases, generated once per seed. The phases differ
as a metallographer tells them apart, by their shape, not by a grey level of
their own:

* ``0`` ferrite matrix: Poisson-Voronoi grains, each with a small
  channelling-contrast change of its grey level;
* ``1`` spheroidite: compact, roughly round cementite particles with
  log-normal radii, inside the ferrite grains and on their boundaries;
* ``2`` grain-boundary carbide: thin continuous cementite films, of a
  per-boundary thickness, along a random subset of the grain boundaries;
* ``3`` lamellar pearlite: whole grains filled with alternating cementite and
  ferrite lamellae of a per-colony spacing and orientation.

Particles, films and lamellae are all cementite, so they share one brightness
range: every frame draws the ferrite level, the cementite-to-ferrite contrast
and a spread of each cementite constituent about it (:func:`draw_imaging`), so
a film may be brighter or darker than a particle of the same frame. The SE yield
(grain contrast and a smooth etch texture on top) is blurred by the Gaussian
probe, counted (Poisson shot noise at a dose plus Gaussian readout noise) and
passed through the detector chain's gain, offset and gamma (:func:`respond`),
also drawn per frame for training. :class:`SEMCamera` returns the frame under
the current :class:`XYStage` position, its data key declaring the pixel size;
:func:`simulate` returns frames from random positions with their ground-truth
masks and phase area fractions. Both use :func:`acquire_frames`, so live frames
and training frames are made by the same code.
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
#: What a pixel is made of, which sets its grey level (ids of ``Microstructure.constituents``):
#: ferrite (matrix or pearlitic), a spheroidite particle, a boundary film, a pearlite lamella.
CONSTITUENTS: tuple[str, ...] = ("ferrite", "particle", "film", "lamella")
DOSE_RANGE: tuple[float, float] = (1.0, 1.0e6)
READOUT_NOISE_RANGE: tuple[float, float] = (0.0, 1.0)
GAIN_RANGE: tuple[float, float] = (1.0e-3, 1.0e3)
OFFSET_RANGE: tuple[float, float] = (-10.0, 10.0)
GAMMA_RANGE: tuple[float, float] = (0.2, 5.0)
#: Units of the frame's pixel size, as its data key declares them.
PIXEL_SIZE_UNITS = "um"


@dataclass(frozen=True)
class MicrostructureConfig:
    """How a specimen is built; every length in um.

    ``size_px`` x ``size_px`` pixels of ``pixel_size_um``. Grains: Poisson-Voronoi
    with mean grain area ``grain_size_um**2``; a fraction ``pearlite_fraction``
    of them are pearlite colonies. Pearlite lamella spacing per colony is drawn
    uniformly from ``lamella_spacing_um``, the orientation uniformly from
    [0, pi) and the cementite share of each period is
    ``lamella_cementite_fraction``. Grain-boundary carbide films decorate each
    boundary segment (grain pair) with probability ``gb_coverage``, each
    segment's film of a thickness uniform in ``gb_thickness_um``. Spheroidite
    particles: log-normal equivalent radius (median ``particle_radius_um``,
    log-sd ``particle_radius_log_sd``) clipped to ``particle_radius_range_um``,
    aspect ratio uniform in ``particle_aspect_range``, number chosen so that they
    would cover ``particle_area_fraction`` of the ferrite without overlaps; a
    share ``particle_boundary_fraction`` of them is centred on bare grain
    boundaries, the rest anywhere in the ferrite. Ferrite grains change their
    grey level by a relative channelling contrast of standard deviation
    ``grain_contrast``; a smooth multiplicative texture of rms ``texture_rms``
    and correlation length ``texture_length_um`` covers everything.
    """

    size_px: int = 2048
    pixel_size_um: float = 0.05
    grain_size_um: float = 6.0
    pearlite_fraction: float = 0.25
    lamella_spacing_um: tuple[float, float] = (0.20, 0.50)
    lamella_cementite_fraction: float = 0.30
    gb_thickness_um: tuple[float, float] = (0.15, 0.35)
    gb_coverage: float = 0.75
    particle_radius_um: float = 0.25
    particle_radius_log_sd: float = 0.25
    particle_radius_range_um: tuple[float, float] = (0.15, 0.45)
    particle_aspect_range: tuple[float, float] = (1.0, 1.4)
    particle_area_fraction: float = 0.08
    particle_boundary_fraction: float = 0.3
    grain_contrast: float = 0.08
    texture_rms: float = 0.03
    texture_length_um: float = 0.25

    @property
    def extent_um(self) -> float:
        """Side length of the specimen (um)."""
        return self.size_px * self.pixel_size_um


@dataclass(frozen=True)
class MicroscopyConfig:
    """Generator settings: imaging (probe, dose, noise, detector, frame) and the specimen.

    ``frame_size`` pixels square per frame; ``psf_sigma_um`` the Gaussian probe
    standard deviation (um); ``dose`` the detected electrons per pixel at unit
    SE yield (shot noise is Poisson in these counts); ``readout_noise`` the
    Gaussian noise sd in yield units. Per frame (:func:`draw_imaging`): the
    ferrite SE yield uniform in ``ferrite_level``, cementite that many times
    brighter, by a factor uniform in ``cementite_contrast``, and each cementite
    constituent (particles, films, lamellae) that level times a factor uniform
    in ``1 +- carbide_spread``; the detector's ``gain``, ``offset`` and
    ``gamma`` uniform in their ranges. Frames come from ``n_structures``
    specimens, specimen ``k`` built from ``(seed, k)``.
    """

    frame_size: int = 256
    psf_sigma_um: float = 0.04
    dose: float = 400.0
    readout_noise: float = 0.01
    ferrite_level: tuple[float, float] = (0.15, 0.35)
    cementite_contrast: tuple[float, float] = (2.0, 4.0)
    carbide_spread: float = 0.15
    gain: tuple[float, float] = (0.5, 2.0)
    offset: tuple[float, float] = (-0.05, 0.1)
    gamma: tuple[float, float] = (0.6, 1.6)
    n_structures: int = 2
    structure: MicrostructureConfig = field(default_factory=MicrostructureConfig)

    @property
    def travel_um(self) -> float:
        """Stage travel per axis (um): specimen extent minus the frame size."""
        return (self.structure.size_px - self.frame_size) * self.structure.pixel_size_um

    @property
    def psf_sigma_px(self) -> float:
        """The probe's standard deviation in pixels."""
        return self.psf_sigma_um / self.structure.pixel_size_um


@dataclass(frozen=True)
class Imaging:
    """Imaging conditions of ``n`` frames: SE yields per constituent and the detector.

    ``levels`` (n, 4): the SE yield of ferrite, particles, films and lamellae
    (:data:`CONSTITUENTS`); ``gain``, ``offset``, ``gamma`` (n,): the detector
    response :func:`respond`.
    """

    levels: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    gamma: np.ndarray

    def __len__(self) -> int:
        return len(self.levels)

    def take(self, index: Any) -> Imaging:
        """The conditions of the frames ``index`` selects."""
        return Imaging(
            np.atleast_2d(self.levels[index]),
            *(np.atleast_1d(v[index]) for v in (self.gain, self.offset, self.gamma)),
        )

    @classmethod
    def fixed(
        cls,
        levels: tuple[float, float, float, float],
        n: int = 1,
        gain: float = 1.0,
        offset: float = 0.0,
        gamma: float = 1.0,
    ) -> Imaging:
        """The same conditions for ``n`` frames."""
        return cls(
            np.tile(np.asarray(levels, dtype=np.float64), (n, 1)),
            np.full(n, gain),
            np.full(n, offset),
            np.full(n, gamma),
        )


def draw_levels(config: MicroscopyConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """SE yields (n, 4) of ferrite, particles, films and lamellae, drawn per frame.

    Ferrite ``f ~ U(ferrite_level)``, cementite ``c = f * U(cementite_contrast)``
    and each cementite constituent ``c * U(1 - carbide_spread, 1 + carbide_spread)``
    independently: particles, films and lamellae have the same brightness
    distribution, so only their shapes tell them apart.
    """
    ferrite = rng.uniform(*config.ferrite_level, n)
    cementite = ferrite * rng.uniform(*config.cementite_contrast, n)
    spread = rng.uniform(1.0 - config.carbide_spread, 1.0 + config.carbide_spread, (n, 3))
    return np.column_stack([ferrite, cementite[:, None] * spread])


def draw_imaging(config: MicroscopyConfig, n: int, rng: np.random.Generator) -> Imaging:
    """Per-frame conditions: :func:`draw_levels` and a detector gain, offset, gamma."""
    levels = draw_levels(config, n, rng)
    gain, offset, gamma = (rng.uniform(*r, n) for r in (config.gain, config.offset, config.gamma))
    return Imaging(levels, gain, offset, gamma)


@dataclass(frozen=True, eq=False)
class Microstructure:
    """One generated specimen: phase labels, constituents, grains and the etch texture.

    ``labels`` (uint8, phase ids), ``constituents`` (uint8, ids of
    :data:`CONSTITUENTS`), ``grains`` (int32 Voronoi cell ids) and ``texture``
    (float32, relative) share the shape ``(size_px, size_px)``; rows run along
    y, columns along x. ``grain_contrast`` (float32, one per grain) is the
    relative change of a ferrite grain's grey level.
    """

    labels: np.ndarray
    constituents: np.ndarray
    grains: np.ndarray
    grain_contrast: np.ndarray
    texture: np.ndarray
    pixel_size_um: float

    @property
    def fractions(self) -> np.ndarray:
        """Area fraction of each phase over the whole specimen."""
        return np.bincount(self.labels.ravel(), minlength=N_PHASES) / self.labels.size

    def se_yield(self, levels: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
        """Noiseless SE yield (float32, before the probe blur) of a window of the specimen.

        ``levels[k]`` for constituent ``k``, ferrite times ``1 + grain_contrast``
        of its grain, everything times ``1 + texture``.
        """
        constituents = self.constituents[window]
        out = np.asarray(levels, dtype=np.float32)[constituents]
        ferrite = constituents == 0
        out[ferrite] *= 1.0 + self.grain_contrast[self.grains[window][ferrite]]
        out *= 1.0 + self.texture[window]
        return out


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


def boundary_segments(grains: np.ndarray) -> np.ndarray:
    """Boundary segment id per pixel of the boundary line, -1 elsewhere (int64).

    The line is the one-pixel set where a pixel's grain differs from its right
    or lower neighbour; a segment is the boundary of one grain pair, numbered
    ``0 .. n_segments - 1``.
    """
    n = np.int64(grains.max()) + 1
    right = grains[:, :-1] != grains[:, 1:]
    down = grains[:-1, :] != grains[1:, :]
    pair_right = _pair_key(grains[:, :-1][right], grains[:, 1:][right], n)
    pair_down = _pair_key(grains[:-1, :][down], grains[1:, :][down], n)
    _, inverse = np.unique(np.concatenate([pair_right, pair_down]), return_inverse=True)
    segments = np.full(grains.shape, -1, dtype=np.int64)
    segments[:, :-1][right] = inverse[: pair_right.size]
    below = segments[:-1, :]
    below[down] = np.maximum(below[down], inverse[pair_right.size :])
    return segments


def decorated_boundaries(
    grains: np.ndarray,
    coverage: float,
    half_width_px: float | tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Carbide film mask along a random subset of grain boundaries.

    Each boundary segment (:func:`boundary_segments`) is decorated with
    probability ``coverage``, with a half-width ``w`` drawn uniformly from
    ``half_width_px`` (a range, or one value). The film is every pixel within
    Euclidean distance ``w`` of its nearest decorated line pixel, so it is
    ``2 w + 1`` pixels thick across a straight boundary.
    """
    segments = boundary_segments(grains)
    n_segments = int(segments.max()) + 1
    keep = rng.random(n_segments) < coverage
    low, high = np.broadcast_to(np.asarray(half_width_px, dtype=np.float64), (2,))
    half_width = rng.uniform(low, high, n_segments)
    line = segments >= 0
    line[line] = keep[segments[line]]
    if not line.any():
        return line
    distance, nearest = ndimage.distance_transform_edt(~line, return_indices=True)
    return distance <= half_width[segments[nearest[0], nearest[1]]]


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
    """Generate one specimen: grains, pearlite, carbide films, particles, texture."""
    c = config
    shape = (c.size_px, c.size_px)
    px = c.pixel_size_um
    n_grains = max(1, round(c.extent_um**2 / c.grain_size_um**2))
    grains = voronoi_grains(shape, n_grains, rng)

    pearlite_grain = rng.random(n_grains) < c.pearlite_fraction
    spacing = rng.uniform(*c.lamella_spacing_um, n_grains) / px
    angle = rng.uniform(0.0, np.pi, n_grains)
    lamella_phase = rng.random(n_grains)
    contrast = rng.normal(0.0, c.grain_contrast, n_grains).astype(np.float32)

    labels = np.zeros(shape, dtype=np.uint8)
    labels[pearlite_grain[grains]] = 3
    half_width = tuple(max(0.0, t / px / 2.0 - 0.5) for t in c.gb_thickness_um)
    labels[decorated_boundaries(grains, c.gb_coverage, half_width, rng)] = 2
    labels[_place_particles(labels, grains, c, rng)] = 1

    cementite = lamella_pattern(
        grains, labels == 3, spacing, angle, lamella_phase, c.lamella_cementite_fraction
    )
    constituents = labels.copy()
    constituents[labels == 3] = 0
    constituents[cementite] = 3
    texture = smooth_texture(shape, c.texture_length_um / px, c.texture_rms, rng)
    return Microstructure(
        labels=labels,
        constituents=constituents,
        grains=grains,
        grain_contrast=contrast,
        texture=texture,
        pixel_size_um=px,
    )


def _place_particles(
    labels: np.ndarray, grains: np.ndarray, c: MicrostructureConfig, rng: np.random.Generator
) -> np.ndarray:
    """Spheroidite mask: particles centred in ferrite or on its bare boundaries, painted on ferrite.

    A share ``particle_boundary_fraction`` of the centres is drawn from the
    boundary-line pixels that are still ferrite (no film), the rest from all
    ferrite pixels, so particles and films both sit on boundaries and only
    their shapes differ.
    """
    px = c.pixel_size_um
    ferrite = np.flatnonzero(labels.ravel() == 0)
    bare = np.flatnonzero(((boundary_segments(grains) >= 0) & (labels == 0)).ravel())
    mean_area = np.pi * (c.particle_radius_um / px) ** 2 * np.exp(2 * c.particle_radius_log_sd**2)
    count = min(ferrite.size, round(c.particle_area_fraction * ferrite.size / mean_area))
    on_boundary = min(bare.size, round(c.particle_boundary_fraction * count))
    radius = (
        np.clip(
            c.particle_radius_um * np.exp(rng.normal(0.0, c.particle_radius_log_sd, count)),
            *c.particle_radius_range_um,
        )
        / px
    )
    aspect = rng.uniform(*c.particle_aspect_range, count)
    semi_axes = np.stack([radius * np.sqrt(aspect), radius / np.sqrt(aspect)], axis=1)
    flat = np.concatenate(
        [
            rng.choice(bare, size=on_boundary, replace=False),
            rng.choice(ferrite, size=count - on_boundary, replace=False),
        ]
    )
    flat, first = np.unique(flat, return_index=True)
    centres = np.stack(np.unravel_index(flat, labels.shape), axis=1)
    angles = rng.uniform(0.0, np.pi, count)
    return particle_mask(labels.shape, centres, semi_axes[first], angles[first]) & (labels == 0)


def apply_psf(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur by the Gaussian probe (sd ``sigma_px`` pixels), reflecting at the edges."""
    return ndimage.gaussian_filter(image.astype(np.float32), sigma_px, mode="reflect")


def frame_yield(
    structure: Microstructure,
    rows: np.ndarray,
    cols: np.ndarray,
    size: int,
    levels: np.ndarray,
    psf_sigma_px: float,
) -> np.ndarray:
    """Probe-blurred, noiseless SE yield (n, size, size) of frames at top-left ``(rows, cols)``.

    Each frame's window is blurred with ``4 sigma`` pixels of context (clipped
    at the specimen's edge, where the blur reflects), so it equals the crop of
    the whole specimen blurred with the frame's ``levels[i]``.
    """
    margin = int(4.0 * psf_sigma_px + 0.5) + 1
    last = structure.labels.shape[0]
    out = np.empty((len(rows), size, size), dtype=np.float32)
    for i, (row, col) in enumerate(zip(np.asarray(rows), np.asarray(cols), strict=True)):
        top, left = max(0, row - margin), max(0, col - margin)
        window = (
            slice(top, min(last, row + size + margin)),
            slice(left, min(last, col + size + margin)),
        )
        blurred = apply_psf(structure.se_yield(levels[i], window), psf_sigma_px)
        out[i] = blurred[row - top : row - top + size, col - left : col - left + size]
    return out


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


def respond(
    signal: np.ndarray, gain: np.ndarray, offset: np.ndarray, gamma: np.ndarray
) -> np.ndarray:
    """The detector chain's output ``offset + gain * max(signal, 0) ** gamma`` per frame.

    ``signal`` (n, rows, columns) in yield units; ``gain``, ``offset`` and
    ``gamma`` (n,) per frame. Increasing in the signal for every setting, so
    it keeps the order of a frame's pixels: what the plugin's rank
    normalisation relies on.
    """
    shape = (-1, 1, 1)
    powered = np.clip(signal, 0.0, None) ** np.reshape(gamma, shape)
    return (np.reshape(offset, shape) + np.reshape(gain, shape) * powered).astype(np.float32)


def crop(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Square ``size`` windows whose top-left pixels are ``(rows[i], cols[i])``."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))
    return windows[np.asarray(rows), np.asarray(cols)]


def phase_fractions(masks: np.ndarray) -> np.ndarray:
    """Area fraction of each phase per mask: (n, H, W) uint8 -> (n, 4) float64."""
    return np.stack([(masks == k).mean(axis=(1, 2)) for k in range(N_PHASES)], axis=1)


def acquire_frames(
    structure: Microstructure,
    rows: np.ndarray,
    cols: np.ndarray,
    size: int,
    imaging: Imaging,
    dose: float,
    readout_noise: float,
    psf_sigma_px: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy frames and their masks at the given top-left pixels.

    The one imaging path shared by :class:`SEMCamera` and :func:`simulate`:
    the blurred yield of each frame with its own levels (:func:`frame_yield`),
    electron counting (:func:`detect`), the detector response (:func:`respond`).
    Returns ``(images float32 (n, size, size), masks uint8 (n, size, size))``.
    """
    mean = frame_yield(structure, rows, cols, size, imaging.levels, psf_sigma_px)
    signal = detect(mean, dose, readout_noise, rng)
    images = respond(signal, imaging.gain, imaging.offset, imaging.gamma)
    return images, crop(structure.labels, rows, cols, size)


@lru_cache(maxsize=4)
def specimen(config: MicrostructureConfig, seed: int, index: int = 0) -> Microstructure:
    """The specimen built from ``(seed, index)`` (cached, arrays read-only)."""
    structure = build_microstructure(config, np.random.default_rng([seed, index]))
    for array in (
        structure.labels,
        structure.constituents,
        structure.grains,
        structure.grain_contrast,
        structure.texture,
    ):
        array.setflags(write=False)
    return structure


def _check_config(config: MicroscopyConfig) -> None:
    """Refuse inconsistent settings with a message naming the setting and range."""
    size = config.structure.size_px
    if not 8 <= config.frame_size <= size:
        raise ValueError(f"frame_size={config.frame_size} px must be in [8, {size}] px")
    if not DOSE_RANGE[0] <= config.dose <= DOSE_RANGE[1]:
        raise ValueError(f"dose={config.dose} electrons/pixel must be in {list(DOSE_RANGE)}")
    if not READOUT_NOISE_RANGE[0] <= config.readout_noise <= READOUT_NOISE_RANGE[1]:
        raise ValueError(f"readout_noise={config.readout_noise} must be in {READOUT_NOISE_RANGE}")
    for name, allowed in (("gain", GAIN_RANGE), ("offset", OFFSET_RANGE), ("gamma", GAMMA_RANGE)):
        low, high = getattr(config, name)
        if not allowed[0] <= low <= high <= allowed[1]:
            raise ValueError(f"{name}=({low}, {high}) must be an interval within {allowed}")
    if not 0.0 < config.ferrite_level[0] <= config.ferrite_level[1]:
        raise ValueError(f"ferrite_level={config.ferrite_level} must be a positive interval")
    if not 1.0 < config.cementite_contrast[0] <= config.cementite_contrast[1]:
        raise ValueError(
            f"cementite_contrast={config.cementite_contrast} must be an interval above 1 "
            "(cementite is brighter than ferrite)"
        )
    if config.n_structures < 1:
        raise ValueError(f"n_structures={config.n_structures} must be >= 1")


def simulate(
    n: int, seed: int = 0, config: MicroscopyConfig | None = None, imaging: Imaging | None = None
) -> SimulatedSet:
    """``n`` noisy frames from random stage positions with masks and phase fractions.

    Specimen ``k`` of ``config.n_structures`` is :func:`specimen` ``(seed, k)``;
    each frame picks a specimen and a top-left pixel uniformly and its imaging
    conditions (:func:`draw_imaging`, unless ``imaging`` gives them for all
    ``n``), then goes through :func:`acquire_frames`. Inputs ``images`` (n, F, F)
    float32 detector output; labels ``masks`` (n, F, F) uint8 phase ids,
    ``fractions`` (n, 4), ``positions`` (n, 2) stage (x, y) in um,
    ``structure`` (n,), and the conditions ``levels`` (n, 4), ``gain``,
    ``offset``, ``gamma`` (n,).
    """
    config = config or MicroscopyConfig()
    _check_config(config)
    rng = np.random.default_rng(seed)
    size, frame = config.structure.size_px, config.frame_size
    which = rng.integers(0, config.n_structures, n)
    rows = rng.integers(0, size - frame + 1, n)
    cols = rng.integers(0, size - frame + 1, n)
    drawn = draw_imaging(config, n, rng)
    imaging = drawn if imaging is None else imaging
    if len(imaging) != n:
        raise ValueError(f"imaging holds the conditions of {len(imaging)} frames, expected {n}")
    images = np.empty((n, frame, frame), dtype=np.float32)
    masks = np.empty((n, frame, frame), dtype=np.uint8)
    for k in range(config.n_structures):
        structure = specimen(config.structure, seed, k)
        picked = np.flatnonzero(which == k)
        if picked.size:
            images[picked], masks[picked] = acquire_frames(
                structure,
                rows[picked],
                cols[picked],
                frame,
                imaging.take(picked),
                config.dose,
                config.readout_noise,
                config.psf_sigma_px,
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
            "levels": imaging.levels,
            "gain": imaging.gain,
            "offset": imaging.offset,
            "gamma": imaging.gamma,
        },
        coords={
            "pixel_x": np.arange(frame) * px,
            "pixel_y": np.arange(frame) * px,
            "phase": np.arange(N_PHASES),
            "constituent": np.arange(len(CONSTITUENTS)),
        },
        units={
            "images": "detector output (offset + gain * SE yield ** gamma)",
            "masks": "phase id (0 ferrite, 1 spheroidite, 2 gb_carbide, 3 pearlite)",
            "fractions": "area fraction",
            "positions": "um",
            "pixel_x": PIXEL_SIZE_UNITS,
            "pixel_y": PIXEL_SIZE_UNITS,
            "levels": "SE yield (ferrite, particle, film, lamella)",
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


class FrameSignal(ArraySignal):
    """The SEM frame, whose data key also declares its pixel grid.

    Adds ``dims`` ["row", "column"], ``pixel_size`` (a float, the side of a
    pixel on the specimen) and ``pixel_size_units`` (:data:`PIXEL_SIZE_UNITS`)
    from the parent camera's ``config``, so the event descriptor says how large
    a pixel is; ``units`` stays the unit of the values.
    """

    def describe(self) -> dict[str, dict[str, Any]]:
        """:class:`ArraySignal`'s data key plus ``dims`` and the pixel size."""
        description = super().describe()
        config = getattr(self.parent, "config", None)
        if config is not None:
            description[self.name].update(
                dims=["row", "column"],
                pixel_size=float(config.structure.pixel_size_um),
                pixel_size_units=PIXEL_SIZE_UNITS,
            )
        return description


class SEMCamera(Device):
    """SEM frame grabber over an :class:`XYStage`.

    ``trigger()`` images the specimen region whose top-left corner is at the
    stage's (x, y) (rounded to whole pixels). Read keys: ``camera_image``
    (F, F) float32 detector output, its data key declaring ``pixel_size`` and
    ``pixel_size_units`` (:class:`FrameSignal`). Hidden truth, kind 'omitted'
    until a user sets ``camera.mask.kind = Kind.normal`` (same for
    ``fractions``): ``camera_mask`` (F, F) uint8 phase ids, ``camera_fractions``
    (4,) float64. Settings (configuration): ``camera_dose`` (electrons/pixel),
    ``camera_readout_noise`` (yield units) and the detector's ``camera_gain``,
    ``camera_offset`` and ``camera_gamma`` (:func:`respond`; 1, 0, 1 by
    default: the output is the SE yield). The specimen's grey levels
    (:attr:`levels`) are drawn once per specimen from ``config``.
    """

    image = Cpt(FrameSignal, value=np.zeros((0, 0), dtype=np.float32), kind="normal")
    mask = Cpt(ArraySignal, value=np.zeros((0, 0), dtype=np.uint8), kind="omitted")
    fractions = Cpt(ArraySignal, value=np.zeros(N_PHASES), kind="omitted")
    dose = Cpt(RangeSignal, value=400.0, limits=DOSE_RANGE, units="electrons/pixel", kind="config")
    readout_noise = Cpt(
        RangeSignal, value=0.01, limits=READOUT_NOISE_RANGE, units="SE yield", kind="config"
    )
    gain = Cpt(RangeSignal, value=1.0, limits=GAIN_RANGE, kind="config")
    offset = Cpt(RangeSignal, value=0.0, limits=OFFSET_RANGE, kind="config")
    gamma = Cpt(RangeSignal, value=1.0, limits=GAMMA_RANGE, kind="config")

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
        self.levels = draw_levels(self.config, 1, np.random.default_rng([self.sample_seed, 1]))[0]

    @property
    def specimen(self) -> Microstructure:
        """The imaged specimen (:func:`specimen` of ``(sample_seed, 0)``)."""
        return specimen(self.config.structure, self.sample_seed, 0)

    def imaging(self) -> Imaging:
        """The conditions of the next frame: the specimen's levels, the detector settings."""
        return Imaging.fixed(
            tuple(self.levels),
            gain=float(self.gain.get()),
            offset=float(self.offset.get()),
            gamma=float(self.gamma.get()),
        )

    def noiseless(self) -> np.ndarray:
        """The probe-blurred SE yield of the frame at the stage position (no noise, no detector)."""
        row, col = self.pixel_position()
        return frame_yield(
            self.specimen,
            np.array([row]),
            np.array([col]),
            self.config.frame_size,
            self.levels[None],
            self.config.psf_sigma_px,
        )[0]

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
            self.specimen,
            np.array([row]),
            np.array([col]),
            self.config.frame_size,
            self.imaging(),
            float(self.dose.get()),
            float(self.readout_noise.get()),
            self.config.psf_sigma_px,
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
