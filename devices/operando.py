"""Operando powder diffraction through a hysteretic structural transition on a temperature ramp.

A perovskite-like powder sits on a heater stage. Above its transition it is
cubic (lattice parameter ``a``); below it, an order parameter ``eta`` appears
that (i) doubles the cell, so superlattice reflections at half-integer
``(h+1/2, k+1/2, l+1/2)`` grow with intensity proportional to ``eta**2``, and
(ii) strains the cell tetragonally (``c/a - 1`` proportional to ``eta``), so
cubic reflections such as (200) split. All peaks move with linear thermal
expansion and lose intensity with temperature (Debye-Waller factor). The
transition is first order with a hysteresis loop (see :func:`relay_states`):

* cooling: the cubic phase supercools to ``T_down = T_c - dT_hyst/2``, where
  ``eta`` jumps from 0 to ``eta(T_down)``;
* heating: the ordered phase superheats to ``T_up = T_c + dT_hyst/2``; its
  order parameter ``eta(T) = (1 - T/T_up)**beta`` falls to 0 at ``T_up``.

Two ophyd devices: :class:`TemperatureController` (a ramping positioner with a
first-order-lag readback and an accelerated simulated clock) and
:class:`OperandoDetector` (the 1-D powder pattern of the sample at the
controller's readback temperature). :func:`simulate` makes labelled ramps with
the same physics functions the detector calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, PositionerBase
from ophyd.status import DeviceStatus, MoveStatus
from ophyd.utils import LimitError, ReadOnlyError

from smartlab_plugins.devices.dataset import SimulatedSet, config_dict
from smartlab_plugins.devices.signals import ArraySignal, RangeSignal, in_range

CASE = "operando"
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
WINDOW_SIGMAS = 5.0
BACKGROUND_DECAY_DEG = 8.0


@dataclass(frozen=True)
class OperandoConfig:
    """Settings of the operando instrument and of the ramp generator.

    Units: angles in degrees 2theta, temperatures in K, times in s (simulated),
    ramp rates in K/min, lengths in angstrom, intensities in detector counts.
    The ``*_range`` pairs are the uniform ranges from which each ramp's hidden
    truth and nuisance parameters are drawn.

    Attributes:
        n_frames: frames per ramp (every ramp has the same length).
        n_points: detector channels, evenly spaced over ``two_theta_range``.
        two_theta_range: first and last channel centre, degrees.
        wavelength: X-ray wavelength, angstrom (Cu K-alpha1).
        frame_time: simulated time between frames (one exposure), s.
        time_constant: first-order lag of the sample temperature behind the
            controller setpoint, s.
        temperature_limits: controller range, K; setpoints outside are refused.
        reference_temperature: temperature at which ``lattice`` is quoted, K.
        tc_range: thermodynamic transition temperature ``T_c``, K.
        beta_range: critical exponent of the order parameter.
        hysteresis_range: width ``T_up - T_down`` of the hysteresis loop, K.
        ramp_rate_range: controller ramp rate, K/min (1-4 K per 30 s frame).
        heating_fraction: fraction of ramps that heat (the rest cool).
        no_transition_fraction: fraction of ramps whose temperature range does
            not reach the transition of their branch (for false-alarm rates).
        onset_window: first and last frame index allowed for the onset.
        no_transition_margin: closest approach (K) of a no-transition ramp to
            the transition temperature of its branch.
        lattice_range: cubic lattice parameter at ``reference_temperature``, angstrom.
        expansion_range: linear thermal-expansion coefficient, 1/K.
        strain_range: tetragonal strain ``c/a - 1`` of the fully ordered phase (eta = 1).
        superlattice_range: superlattice-to-parent structure-factor ratio
            ``|F_sl|**2 / |F|**2`` at eta = 1.
        scale_range: per-ramp multiplier of ``intensity_scale`` (sample amount).
        intensity_scale: integrated counts per unit of multiplicity x
            Lorentz-polarisation factor x scattering power, counts.
        background: flat background, counts per channel.
        background_low_angle: extra background at the first channel, as a
            fraction of ``background``, decaying over 8 degrees (air scatter).
        fwhm_base: instrumental peak FWHM at 2theta = 0, degrees.
        fwhm_tan: FWHM growth per unit tan(theta), degrees.
        debye_waller_slope: ``B(T) = debye_waller_slope * T`` (high-temperature
            Debye limit), angstrom**2/K.
    """

    n_frames: int = 64
    n_points: int = 512
    two_theta_range: tuple[float, float] = (15.0, 55.0)
    wavelength: float = 1.5406
    frame_time: float = 30.0
    time_constant: float = 30.0
    temperature_limits: tuple[float, float] = (100.0, 800.0)
    reference_temperature: float = 300.0
    tc_range: tuple[float, float] = (350.0, 550.0)
    beta_range: tuple[float, float] = (0.2, 0.35)
    hysteresis_range: tuple[float, float] = (4.0, 20.0)
    ramp_rate_range: tuple[float, float] = (2.0, 8.0)
    heating_fraction: float = 0.5
    no_transition_fraction: float = 0.25
    onset_window: tuple[int, int] = (8, 56)
    no_transition_margin: float = 10.0
    lattice_range: tuple[float, float] = (3.95, 4.05)
    expansion_range: tuple[float, float] = (0.8e-5, 1.6e-5)
    strain_range: tuple[float, float] = (0.008, 0.016)
    superlattice_range: tuple[float, float] = (0.4, 0.8)
    scale_range: tuple[float, float] = (0.8, 1.25)
    intensity_scale: float = 1000.0
    background: float = 200.0
    background_low_angle: float = 1.0
    fwhm_base: float = 0.18
    fwhm_tan: float = 0.08
    debye_waller_slope: float = 1.5e-3

    def __post_init__(self) -> None:
        """Refuse inconsistent settings, naming the setting and what was expected."""
        for item in fields(self):
            if item.name.endswith(("_range", "_limits", "_window")):
                low, high = getattr(self, item.name)
                if not low <= high:
                    raise ValueError(
                        f"{item.name} must be (low, high) with low <= high, got "
                        f"{getattr(self, item.name)}"
                    )
        for name in ("heating_fraction", "no_transition_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not (self.onset_window[0] >= 1 and self.onset_window[1] < self.n_frames):
            raise ValueError(
                f"onset_window must lie within [1, n_frames - 1 = "
                f"{self.n_frames - 1}], got {self.onset_window}"
            )
        low, high = self.temperature_limits
        t_lowest = self.tc_range[0] - self.hysteresis_range[1] / 2 - self.no_transition_margin
        t_highest = self.tc_range[1] + self.hysteresis_range[1] / 2 + self.no_transition_margin
        if not (low < t_lowest and t_highest < high):
            raise ValueError(
                f"tc_range {self.tc_range} with hysteresis and margin must lie inside "
                f"temperature_limits {self.temperature_limits} K"
            )
        if self.ramp_rate_range[0] <= 0:
            raise ValueError(
                f"ramp_rate_range must be positive (K/min), got {self.ramp_rate_range}"
            )
        duration = (self.n_frames - 1) * self.frame_time
        span = self.ramp_rate_range[1] / 60.0 * ramp_lag_distance(duration, self.time_constant)
        if span >= high - low:
            raise ValueError(
                f"the fastest ramp ({self.ramp_rate_range[1]} K/min over {self.n_frames} frames) "
                f"spans {span:.0f} K, more than temperature_limits {self.temperature_limits} K"
            )


@dataclass(frozen=True)
class SampleParameters:
    """Hidden truth and nuisance parameters of one sample per entry (arrays of equal shape).

    ``t_c`` (K), ``beta``, ``hysteresis`` (K) define the transition;
    ``lattice`` (angstrom at the reference temperature), ``expansion`` (1/K),
    ``strain_max`` (``c/a - 1`` at eta = 1), ``superlattice`` (structure-factor
    ratio at eta = 1) and ``scale`` (intensity multiplier) the pattern.
    """

    t_c: np.ndarray
    beta: np.ndarray
    hysteresis: np.ndarray
    lattice: np.ndarray
    expansion: np.ndarray
    strain_max: np.ndarray
    superlattice: np.ndarray
    scale: np.ndarray

    @property
    def t_up(self) -> np.ndarray:
        """Superheating limit of the ordered phase, where it transforms on heating (K)."""
        return self.t_c + self.hysteresis / 2.0

    @property
    def t_down(self) -> np.ndarray:
        """Supercooling limit of the cubic phase, where it transforms on cooling (K)."""
        return self.t_c - self.hysteresis / 2.0

    def take(self, index: Any) -> SampleParameters:
        """The parameters indexed (or reshaped for broadcasting) by ``index``."""
        return SampleParameters(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def draw_sample_parameters(
    rng: np.random.Generator, n: int, config: OperandoConfig
) -> SampleParameters:
    """Draw ``n`` samples uniformly from the configured ranges (generator's and device's prior)."""
    ranges = {
        "t_c": config.tc_range,
        "beta": config.beta_range,
        "hysteresis": config.hysteresis_range,
        "lattice": config.lattice_range,
        "expansion": config.expansion_range,
        "strain_max": config.strain_range,
        "superlattice": config.superlattice_range,
        "scale": config.scale_range,
    }
    return SampleParameters(**{k: rng.uniform(lo, hi, n) for k, (lo, hi) in ranges.items()})


# --- temperature control -------------------------------------------------------------------


def setpoint_profile(
    time: np.ndarray, start: np.ndarray, target: np.ndarray, rate: np.ndarray
) -> np.ndarray:
    """Controller setpoint (K) ``time`` s after a ramp from ``start`` to ``target`` at ``rate`` K/s.

    The setpoint moves linearly towards the target and holds there.
    """
    span = np.asarray(target) - np.asarray(start)
    travelled = np.minimum(np.asarray(rate) * np.asarray(time), np.abs(span))
    return start + np.sign(span) * travelled


def lagged_readback(
    time: np.ndarray,
    start: np.ndarray,
    target: np.ndarray,
    rate: np.ndarray,
    time_constant: float | np.ndarray,
    readback0: np.ndarray,
) -> np.ndarray:
    """Sample temperature (K) ``time`` s into a ramp, lagging the setpoint to first order.

    Solves ``dT/dt = (S(t) - T) / tau`` exactly for the setpoint ``S`` of
    :func:`setpoint_profile` (ramp at ``rate`` K/s from ``start`` to
    ``target``, then hold) with ``T(0) = readback0``. During the ramp
    ``T = S - r tau + (T0 - S0 + r tau) exp(-t/tau)`` (signed rate ``r``), so
    after a few ``tau`` the readback trails the setpoint by ``r tau``; after
    the ramp it relaxes as ``exp(-t/tau)`` onto the target.
    """
    tau = np.asarray(time_constant, dtype=float)
    span = np.asarray(target, dtype=float) - np.asarray(start, dtype=float)
    signed_rate = np.sign(span) * np.asarray(rate, dtype=float)
    ramp_time = np.abs(span) / np.asarray(rate, dtype=float)

    def during_ramp(t: np.ndarray) -> np.ndarray:
        setpoint = start + signed_rate * t
        offset = readback0 - start + signed_rate * tau
        return setpoint - signed_rate * tau + offset * np.exp(-t / tau)

    time = np.asarray(time, dtype=float)
    ramping = during_ramp(np.minimum(time, ramp_time))
    after = np.maximum(time - ramp_time, 0.0)
    return target + (ramping - target) * np.exp(-after / tau)


def ramp_lag_distance(time: np.ndarray, time_constant: float) -> np.ndarray:
    """Distance (K per K/s of rate) the readback has moved ``time`` s into an endless ramp.

    From equilibrium, ``|T(t) - T(0)| = r (t - tau (1 - exp(-t/tau)))``.
    """
    time = np.asarray(time, dtype=float)
    return time - time_constant * (1.0 - np.exp(-time / time_constant))


# --- phase and order parameter -------------------------------------------------------------


def order_parameter(temperature: np.ndarray, t_up: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Order parameter of the ordered phase, ``(1 - T/T_up)**beta`` below ``T_up``, else 0.

    Dimensionless, 0 at and above ``T_up`` (K); multiply by the phase state
    of :func:`relay_states` to get the sample's order parameter.
    """
    reduced = np.clip(1.0 - np.asarray(temperature) / t_up, 0.0, 1.0)
    return reduced ** np.asarray(beta)


def relay_states(
    temperatures: np.ndarray,
    ordered0: np.ndarray | bool,
    t_down: np.ndarray | float,
    t_up: np.ndarray | float,
) -> np.ndarray:
    """Phase after each temperature of a history: True where the sample is ordered.

    The hysteresis is a relay: the sample becomes ordered when the
    temperature falls below ``t_down`` and cubic when it rises above ``t_up``
    (K); in between it keeps its previous phase (``ordered0`` before the
    first temperature). Works along the last axis; leading axes broadcast
    with ``ordered0``, ``t_down`` and ``t_up``.
    """
    temperatures = np.asarray(temperatures, dtype=float)
    index = np.arange(temperatures.shape[-1])
    below = np.where(temperatures < np.asarray(t_down)[..., None], index, -1)
    above = np.where(temperatures > np.asarray(t_up)[..., None], index, -1)
    last_below = np.maximum.accumulate(below, axis=-1)
    last_above = np.maximum.accumulate(above, axis=-1)
    untouched = (last_below < 0) & (last_above < 0)
    return np.where(untouched, np.asarray(ordered0)[..., None], last_below > last_above)


# --- diffraction ---------------------------------------------------------------------------


def two_theta_grid(config: OperandoConfig) -> np.ndarray:
    """Detector channel centres, degrees 2theta."""
    return np.linspace(*config.two_theta_range, config.n_points)


def lattice_parameters(
    temperature: np.ndarray,
    eta: np.ndarray,
    lattice: np.ndarray,
    expansion: np.ndarray,
    strain_max: np.ndarray,
    reference_temperature: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Tetragonal ``(a, c)`` in angstrom at ``temperature`` (K) and order parameter ``eta``.

    Pseudo-cubic ``a0(T) = lattice (1 + expansion (T - T_ref))``; the
    spontaneous strain ``e = strain_max * eta`` gives ``a = a0 (1 - e/3)``,
    ``c = a0 (1 + 2e/3)`` (``c/a - 1 = e`` to first order, volume kept).
    """
    cubic = lattice * (1.0 + expansion * (np.asarray(temperature) - reference_temperature))
    strain = strain_max * np.asarray(eta)
    return cubic * (1.0 - strain / 3.0), cubic * (1.0 + 2.0 * strain / 3.0)


@lru_cache(maxsize=16)
def reflection_table(max_index_sq: float) -> dict[str, np.ndarray]:
    """Powder reflections of the tetragonal cell with ``h^2+k^2+l^2 <= max_index_sq``.

    Integer (h, k, l) are parent (cubic) reflections; all-half-integer ones
    are the superlattice of the doubled cell. Reflections with the same
    ``h^2+k^2`` and ``l^2`` coincide in a tetragonal powder and are merged,
    so ``multiplicity`` counts them. Returns arrays ``hk2``, ``l2``,
    ``multiplicity`` and boolean ``superlattice``.
    """
    bound = math.ceil(math.sqrt(max_index_sq)) + 1
    rows: dict[tuple[int, int, bool], int] = {}
    for shift, is_superlattice in ((0.0, False), (0.5, True)):
        values = np.arange(-bound, bound + 1) + shift
        h, k, ell = np.meshgrid(values, values, values, indexing="ij")
        hk2 = np.rint(4 * (h**2 + k**2)).astype(int).ravel()
        l2 = np.rint(4 * ell**2).astype(int).ravel()
        keep = ((hk2 + l2) > 0) & ((hk2 + l2) <= 4 * max_index_sq)
        for key in zip(hk2[keep], l2[keep], strict=True):
            row = (int(key[0]), int(key[1]), is_superlattice)
            rows[row] = rows.get(row, 0) + 1
    keys = sorted(rows)
    return {
        "hk2": np.array([k[0] for k in keys], dtype=float) / 4.0,
        "l2": np.array([k[1] for k in keys], dtype=float) / 4.0,
        "multiplicity": np.array([rows[k] for k in keys], dtype=float),
        "superlattice": np.array([k[2] for k in keys], dtype=bool),
    }


def _config_reflections(config: OperandoConfig) -> dict[str, np.ndarray]:
    """The reflections that can fall on the detector for any sample of ``config``."""
    high = config.temperature_limits[1]
    a_max = config.lattice_range[1] * (
        1 + config.expansion_range[1] * (high - config.reference_temperature)
    )
    a_max *= 1 + config.strain_range[1]
    theta_max = math.radians(min(config.two_theta_range[1] + 2.0, 179.0) / 2.0)
    d_min = config.wavelength / (2.0 * math.sin(theta_max))
    return reflection_table(round((a_max / d_min) ** 2, 3))


def scattering_factor(s: np.ndarray) -> np.ndarray:
    """Effective scattering factor (1 at s = 0) at ``s = sin(theta)/lambda`` (1/angstrom).

    ``f(s) = 0.25 + 0.75 exp(-12 s^2)``: a heavy-atom-like fall-off.
    """
    return 0.25 + 0.75 * np.exp(-12.0 * np.asarray(s) ** 2)


def reflections(
    temperature: np.ndarray, eta: np.ndarray, sample: SampleParameters, config: OperandoConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peak centres (deg 2theta), FWHM (deg) and integrated counts, each (N, K), for N frames.

    ``temperature`` (K) and ``eta`` have shape (N,); ``sample`` fields
    broadcast to (N,). Integrated counts per reflection:
    ``scale * intensity_scale * m * LP(theta) * f(s)^2 * exp(-2 B(T) s^2) * w``
    with ``LP = (1 + cos^2 2theta) / (sin^2 theta cos theta)``,
    ``B(T) = debye_waller_slope * T`` and ``w = 1`` (parent) or
    ``superlattice * eta^2`` (superlattice).
    """
    table = _config_reflections(config)
    a, c = lattice_parameters(
        temperature,
        eta,
        sample.lattice,
        sample.expansion,
        sample.strain_max,
        config.reference_temperature,
    )
    inv_d2 = table["hk2"] / a[:, None] ** 2 + table["l2"] / c[:, None] ** 2
    sin_theta = config.wavelength * np.sqrt(inv_d2) / 2.0
    on_sphere = sin_theta < 1.0
    theta = np.arcsin(np.minimum(sin_theta, 1.0 - 1e-9))
    s2 = inv_d2 / 4.0
    lorentz_polarisation = (1.0 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
    debye_waller = np.exp(-2.0 * config.debye_waller_slope * np.asarray(temperature)[:, None] * s2)
    weight = np.where(
        table["superlattice"], (sample.superlattice * np.asarray(eta) ** 2)[:, None], 1.0
    )
    area = (
        (config.intensity_scale * sample.scale)[:, None]
        * table["multiplicity"]
        * lorentz_polarisation
        * scattering_factor(np.sqrt(s2)) ** 2
        * debye_waller
        * weight
        * on_sphere
    )
    fwhm = config.fwhm_base + config.fwhm_tan * np.tan(theta)
    return np.degrees(2 * theta), fwhm, area


def background_profile(two_theta: np.ndarray, config: OperandoConfig) -> np.ndarray:
    """Background counts per channel: flat plus air scatter decaying from the first channel."""
    rise = np.exp(-(two_theta - two_theta[0]) / BACKGROUND_DECAY_DEG)
    return config.background * (1.0 + config.background_low_angle * rise)


def _window_half_width(two_theta: np.ndarray, config: OperandoConfig) -> int:
    """Channels either side of a peak centre that a peak is evaluated on (5 sigma of the widest)."""
    step = two_theta[1] - two_theta[0]
    widest = config.fwhm_base + config.fwhm_tan * math.tan(math.radians(two_theta[-1] / 2))
    return math.ceil(WINDOW_SIGMAS * widest / FWHM_PER_SIGMA / step) + 1


def _gaussian_profiles(
    two_theta: np.ndarray, centres: np.ndarray, fwhm: np.ndarray, areas: np.ndarray, half: int
) -> np.ndarray:
    """Sum of area-normalised Gaussians (N, K) on the grid, counts per channel, shape (N, P)."""
    n_frames, n_points = centres.shape[0], two_theta.size
    step = two_theta[1] - two_theta[0]
    sigma = fwhm / FWHM_PER_SIGMA
    nearest = np.rint((centres - two_theta[0]) / step).astype(np.int64)
    channel = nearest[..., None] + np.arange(-half, half + 1)
    inside = (channel >= 0) & (channel < n_points)
    offset = (two_theta[0] + channel * step - centres[..., None]) / sigma[..., None]
    height = areas * step / (sigma * math.sqrt(2.0 * math.pi))
    values = height[..., None] * np.exp(-0.5 * offset**2) * inside
    flat = np.arange(n_frames)[:, None, None] * n_points + np.clip(channel, 0, n_points - 1)
    summed = np.bincount(flat.ravel(), weights=values.ravel(), minlength=n_frames * n_points)
    return summed.reshape(n_frames, n_points)


def expected_pattern(
    two_theta: np.ndarray,
    temperature: np.ndarray,
    eta: np.ndarray,
    sample: SampleParameters,
    config: OperandoConfig,
) -> np.ndarray:
    """Noise-free counts per channel (shape ``temperature.shape + (P,)``) for each frame.

    ``temperature`` (K) and ``eta`` may have any shape S; ``sample`` fields
    broadcast to S. Gaussian peaks from :func:`reflections` on
    :func:`background_profile`.
    """
    shape = np.shape(temperature)
    flat_sample = SampleParameters(
        **{f.name: np.broadcast_to(getattr(sample, f.name), shape).ravel() for f in fields(sample)}
    )
    temperature = np.ravel(temperature).astype(float)
    eta = np.broadcast_to(eta, shape).ravel().astype(float)
    centres, fwhm, areas = reflections(temperature, eta, flat_sample, config)
    half = _window_half_width(two_theta, config)
    peaks = _gaussian_profiles(two_theta, centres, fwhm, areas, half)
    return (peaks + background_profile(two_theta, config)).reshape(*shape, two_theta.size)


def measure_patterns(
    rng: np.random.Generator,
    two_theta: np.ndarray,
    temperature: np.ndarray,
    eta: np.ndarray,
    sample: SampleParameters,
    config: OperandoConfig,
) -> np.ndarray:
    """Poisson-sampled counts (float32) of :func:`expected_pattern`: what the detector records."""
    expected = expected_pattern(two_theta, temperature, eta, sample, config)
    return rng.poisson(expected).astype(np.float32)


# --- generator -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RampPlan:
    """Per-ramp controller programme: ``direction`` (+1 heat, -1 cool), ``rate`` (K/s),
    ``start`` (K) and whether the ramp was planned to cross its branch's transition."""

    direction: np.ndarray
    rate: np.ndarray
    start: np.ndarray
    planned_transition: np.ndarray


def _uniform_in(rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """One uniform draw per entry from [low, high] (high clipped up to low)."""
    return low + rng.random(low.shape) * np.maximum(high - low, 0.0)


def _plan_ramps(
    rng: np.random.Generator, sample: SampleParameters, config: OperandoConfig
) -> RampPlan:
    """Draw direction, rate and start temperature so that transitions land in the onset window.

    A transition ramp crosses its branch temperature (``T_up`` heating,
    ``T_down`` cooling) between frames ``onset_window[0] - 1`` and
    ``onset_window[1]``. A no-transition ramp stays ``no_transition_margin``
    away from it, on a side drawn 50/50 among those that fit; it is slowed
    when neither side fits at its drawn rate.
    """
    n = sample.t_c.size
    low, high = config.temperature_limits
    direction = np.where(rng.random(n) < config.heating_fraction, 1, -1).astype(np.int8)
    rate = rng.uniform(*config.ramp_rate_range, n) / 60.0
    planned = rng.random(n) >= config.no_transition_fraction
    branch = np.where(direction > 0, sample.t_up, sample.t_down)
    heating = direction > 0
    length = ramp_lag_distance((config.n_frames - 1) * config.frame_time, config.time_constant)
    first, last = config.onset_window
    early = ramp_lag_distance((first - 1) * config.frame_time, config.time_constant)
    late = ramp_lag_distance(last * config.frame_time, config.time_constant)

    margin = config.no_transition_margin
    room_below = branch - margin - low
    room_above = high - branch - margin
    fit_rate = np.maximum(room_below, room_above) / length
    rate = np.where(planned, rate, np.minimum(rate, fit_rate))
    span = rate * length

    cross_low = np.where(heating, branch - rate * late, branch + rate * early)
    cross_high = np.where(heating, branch - rate * early, branch + rate * late)
    fit_low = np.where(heating, low, low + span)
    fit_high = np.where(heating, high - span, high)
    window_low, window_high = np.maximum(cross_low, fit_low), np.minimum(cross_high, fit_high)
    feasible = window_low <= window_high
    crossing_start = np.where(
        feasible,
        _uniform_in(rng, window_low, window_high),
        _uniform_in(rng, fit_low, fit_high),
    )

    below_width = room_below - span
    above_width = room_above - span
    pick_below = np.where(
        (below_width >= 0) & (above_width >= 0), rng.random(n) < 0.5, below_width >= above_width
    )
    offset = rng.random(n) * np.maximum(np.where(pick_below, below_width, above_width), 0.0)
    start_below = np.where(heating, low, low + span) + offset
    start_above = np.where(heating, branch + margin, branch + margin + span) + offset
    quiet_start = np.where(pick_below, start_below, start_above)
    start = np.where(planned, crossing_start, quiet_start)
    return RampPlan(direction=direction, rate=rate, start=start, planned_transition=planned)


def ramp_temperatures(plan: RampPlan, config: OperandoConfig) -> np.ndarray:
    """Readback temperature (K) at each frame, shape (n, n_frames), from equilibrium at ``start``.

    The controller ramps the setpoint at ``rate`` from ``start`` (with the
    target beyond the last frame) and the readback follows
    :func:`lagged_readback`; frame ``j`` is taken at ``j * frame_time`` s.
    """
    times = np.arange(config.n_frames) * config.frame_time
    start = plan.start[:, None]
    rate = plan.rate[:, None]
    target = start + plan.direction[:, None] * rate * (times[-1] + config.frame_time)
    return lagged_readback(times, start, target, rate, config.time_constant, start)


def simulate(n: int, seed: int = 0, config: OperandoConfig | None = None) -> SimulatedSet:
    """``n`` labelled temperature ramps of ``n_frames`` powder patterns each.

    inputs: ``patterns`` (n, n_frames, n_points) float32 counts;
    ``temperatures`` (n, n_frames) float32 readback K at each frame.
    labels: ``transformed`` (n, n_frames) bool, True from the frame in which
    the sample has left its starting phase; ``onset`` (n,) int, the first
    such frame or -1; ``ordered`` (n, n_frames) bool, ``eta`` (n, n_frames)
    order parameter; per ramp ``tc``, ``beta``, ``hysteresis``, ``t_up``,
    ``t_down`` (K), ``direction`` (+1 heating, -1 cooling), ``ramp_rate``
    (K/min), ``start_temperature`` (K), ``has_transition`` and the nuisances
    ``lattice``, ``expansion``, ``strain_max``, ``superlattice``, ``scale``.
    Every ramp arrives at its start temperature along its own branch, so it
    starts ordered exactly when its start is below ``T_up`` (heating) or
    ``T_down`` (cooling).
    """
    config = config or OperandoConfig()
    rng = np.random.default_rng(seed)
    sample = draw_sample_parameters(rng, n, config)
    plan = _plan_ramps(rng, sample, config)
    temperatures = ramp_temperatures(plan, config)
    branch = np.where(plan.direction > 0, sample.t_up, sample.t_down)
    ordered0 = plan.start < branch
    ordered = relay_states(temperatures, ordered0, sample.t_down, sample.t_up)
    transformed = ordered != ordered0[:, None]
    has_transition = transformed.any(axis=1)
    onset = np.where(has_transition, transformed.argmax(axis=1), -1)
    eta = order_parameter(temperatures, sample.t_up[:, None], sample.beta[:, None]) * ordered

    two_theta = two_theta_grid(config)
    patterns = np.empty((n, config.n_frames, config.n_points), dtype=np.float32)
    chunk = 32
    for begin in range(0, n, chunk):
        part = slice(begin, min(begin + chunk, n))
        patterns[part] = measure_patterns(
            rng,
            two_theta,
            temperatures[part],
            eta[part],
            sample.take((part, None)),
            config,
        )

    labels = {
        "transformed": transformed,
        "onset": onset.astype(np.int64),
        "ordered": ordered,
        "eta": eta.astype(np.float32),
        "has_transition": has_transition,
        "tc": sample.t_c,
        "beta": sample.beta,
        "hysteresis": sample.hysteresis,
        "t_up": sample.t_up,
        "t_down": sample.t_down,
        "direction": plan.direction,
        "ramp_rate": plan.rate * 60.0,
        "start_temperature": plan.start,
        **{
            k: getattr(sample, k)
            for k in ("lattice", "expansion", "strain_max", "superlattice", "scale")
        },
    }
    return SimulatedSet(
        case=CASE,
        seed=seed,
        inputs={"patterns": patterns, "temperatures": temperatures.astype(np.float32)},
        labels=labels,
        coords={"two_theta": two_theta, "time": np.arange(config.n_frames) * config.frame_time},
        units={
            "patterns": "counts",
            "temperatures": "K",
            "two_theta": "deg",
            "time": "s",
            "tc": "K",
            "t_up": "K",
            "t_down": "K",
            "hysteresis": "K",
            "ramp_rate": "K/min",
            "start_temperature": "K",
            "lattice": "angstrom",
            "expansion": "1/K",
            "beta": "",
            "eta": "",
            "strain_max": "",
            "superlattice": "",
            "scale": "",
            "direction": "+1 heating, -1 cooling",
            "onset": "frame index (-1: none)",
        },
        config=config_dict(config),
    )


# --- ophyd devices -------------------------------------------------------------------------


class _ComputedSignal(ArraySignal):
    """A read-only signal whose value only its device computes (via ``_update``).

    An :class:`ArraySignal`, so computed frames are described with their real shape and
    dtype; scalars (temperatures, the clock) are described as ophyd does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metadata.update(write_access=False)

    def put(self, value: Any, **kwargs: Any) -> None:
        """Refuse: the value is computed by the device."""
        raise ReadOnlyError(f"{self.name} is read-only: it is computed by the simulation")

    def set(self, value: Any, **kwargs: Any) -> Any:
        """Refuse: the value is computed by the device."""
        raise ReadOnlyError(f"{self.name} is read-only: it is computed by the simulation")

    def _update(self, value: Any) -> None:
        """Store a newly computed value (runs subscriptions)."""
        super().put(value, force=True)


class _RampTargetSignal(RangeSignal):
    """The controller's target temperature: writing it starts a ramp towards it, without waiting."""

    def put(self, value: Any, **kwargs: Any) -> None:
        """Check and store the target, then start the parent's ramp from where it stands."""
        super().put(value, **kwargs)
        self.parent._start_ramp()


class TemperatureController(Device, PositionerBase):
    """A heater stage: a ramping temperature positioner with a lagging readback.

    Setting it (``bp.scan``, ``bps.mv(controller, T)``) refuses targets outside
    ``limits`` (default 100-800 K) before anything moves, then ramps the
    setpoint at ``ramp_rate`` (K/min) and waits until the readback is within
    ``settle_tolerance`` (K) of the target. Writing ``target`` instead starts
    the same ramp without waiting (continuous ramps during ``bp.count``).

    Time is simulated: a clock (``clock``, s) advances only when a move
    settles or when :meth:`advance` is called (the detector advances it by
    its frame time per exposure), so moves finish at once in wall time. The
    readback follows :func:`lagged_readback` with ``time_constant`` (s).
    Listeners added with :meth:`add_temperature_listener` receive the readback
    history of every advance (the sample's hysteresis needs it).
    """

    readback = Cpt(_ComputedSignal, value=300.0, kind="hinted", units="K")
    setpoint = Cpt(_ComputedSignal, value=300.0, kind="normal", units="K")
    target = Cpt(_RampTargetSignal, value=300.0, kind="normal", units="K", limits=(100.0, 800.0))
    clock = Cpt(_ComputedSignal, value=0.0, kind="normal", units="s")
    ramp_rate = Cpt(RangeSignal, value=10.0, kind="config", units="K/min", limits=(0.1, 60.0))
    time_constant = Cpt(RangeSignal, value=30.0, kind="config", units="s", limits=(1.0, 600.0))
    settle_tolerance = Cpt(RangeSignal, value=0.1, kind="config", units="K", limits=(0.001, 10.0))

    HISTORY_SAMPLES = 2001

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str = "temperature",
        initial_temperature: float = 300.0,
        limits: tuple[float, float] = (100.0, 800.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix=prefix, name=name, **kwargs)
        self.readback.name = self.name
        self.target.set_limits(*limits)
        self._listeners: list[Callable[[np.ndarray], None]] = []
        self._segment = {"time": 0.0, "start": 0.0, "readback": 0.0, "target": 0.0, "rate": 1.0}
        self._now = 0.0
        self.check_value(initial_temperature)
        for signal in (self.readback, self.setpoint):
            signal._update(float(initial_temperature))
        self.target.put(float(initial_temperature))
        self._set_position(float(initial_temperature))
        self.ramp_rate.subscribe(self._restart_segment, run=False)
        self.time_constant.subscribe(self._restart_segment, run=False)

    @property
    def egu(self) -> str:
        """Engineering unit of positions."""
        return "K"

    @property
    def limits(self) -> tuple[float, float]:
        """Inclusive controller range (K)."""
        return self.target.limits

    @property
    def position(self) -> float:
        """Current readback temperature (K)."""
        return float(self.readback.get())

    def check_value(self, value: Any) -> None:
        """Refuse a temperature outside the controller range, naming the range."""
        low, high = self.limits
        if not in_range(value, low, high):
            raise LimitError(
                f"{self.name} setpoint {value} K is outside the controller range [{low}, {high}] K"
            )

    def add_temperature_listener(self, listener: Callable[[np.ndarray], None]) -> None:
        """Call ``listener(readbacks)`` with the readback history (K) of every clock advance."""
        self._listeners.append(listener)

    def move(
        self,
        position: float,
        wait: bool = True,
        timeout: float | None = None,
        moved_cb: Callable | None = None,
    ) -> MoveStatus:
        """Ramp to ``position`` (K) and settle; the simulated clock jumps, no wall time passes."""
        status = super().move(position, moved_cb=moved_cb, timeout=timeout)
        self._run_subs(sub_type=self.SUB_START, timestamp=self._now)
        self.target.put(float(position))
        self.advance(self.time_to_settle())
        self._done_moving(success=True)
        return status

    def stop(self, *, success: bool = False) -> None:
        """Hold the setpoint where it is now."""
        self.target.put(float(self.setpoint.get()))
        self._done_moving(success=success)

    def time_to_settle(self) -> float:
        """Simulated seconds until the setpoint is at the target and the readback in tolerance."""
        seg = self._segment
        ramp_end = seg["time"] + abs(seg["target"] - seg["start"]) / seg["rate"]
        now = max(self._now, ramp_end)
        distance = abs(self._readback_at(np.array([now]))[0] - seg["target"])
        tolerance = float(self.settle_tolerance.get())
        relax = 0.0
        if distance > tolerance:
            relax = float(self.time_constant.get()) * math.log(distance / tolerance)
        return now - self._now + relax

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass: update setpoint, readback, clock, listeners."""
        if not (np.isfinite(seconds) and seconds >= 0):
            raise ValueError(
                f"{self.name}: time to advance must be finite and >= 0 s, got {seconds}"
            )
        if seconds == 0:
            return
        times = self._history_times(self._now, self._now + seconds)
        history = self._readback_at(times)
        self._now = float(times[-1])
        for listener in self._listeners:
            listener(history)
        self._publish()

    def _history_times(self, begin: float, end: float) -> np.ndarray:
        """Times in (begin, end] at which listeners see the readback, incl. the ramp's end."""
        seg = self._segment
        ramp_end = seg["time"] + abs(seg["target"] - seg["start"]) / seg["rate"]
        times = np.linspace(begin, end, self.HISTORY_SAMPLES)[1:]
        if begin < ramp_end < end:
            times = np.sort(np.append(times, ramp_end))
        return times

    def _readback_at(self, times: np.ndarray) -> np.ndarray:
        """Readback (K) at absolute simulated ``times`` within the current ramp segment."""
        seg = self._segment
        return lagged_readback(
            times - seg["time"],
            seg["start"],
            seg["target"],
            seg["rate"],
            float(self.time_constant.get()),
            seg["readback"],
        )

    def _setpoint_now(self) -> float:
        """Setpoint (K) at the current simulated time."""
        seg = self._segment
        return float(
            setpoint_profile(self._now - seg["time"], seg["start"], seg["target"], seg["rate"])
        )

    def _start_ramp(self) -> None:
        """Begin a new ramp segment from the present setpoint and readback to ``target``."""
        self._segment = {
            "time": self._now,
            "start": float(self.setpoint.get()),
            "readback": float(self.readback.get()),
            "target": float(self.target.get()),
            "rate": float(self.ramp_rate.get()) / 60.0,
        }

    def _restart_segment(self, **kwargs: Any) -> None:
        """Re-plan the ramp after a rate or time-constant change, keeping continuity."""
        self._start_ramp()

    def _publish(self) -> None:
        """Write setpoint, readback and clock of the current simulated time into the signals."""
        readback = float(self._readback_at(np.array([self._now]))[0])
        self.setpoint._update(self._setpoint_now())
        self.readback._update(readback)
        self.clock._update(self._now)
        self._set_position(readback)


class OperandoDetector(Device):
    """1-D powder diffractometer looking at the sample on a :class:`TemperatureController`.

    ``trigger()`` records one frame at the controller's current readback
    temperature (snapshot), then advances the controller's simulated clock by
    ``frame_time`` (s), so ``bp.count`` during a ramp takes frames every
    ``frame_time``. Read keys: ``<name>_pattern`` (n_points,) float32 counts
    and ``<name>_temperature`` K (the frame's temperature). Hidden truth:
    :attr:`truth`, and the omitted signals ``<name>_order_parameter`` and
    ``<name>_ordered`` (set their ``kind`` to ``"normal"`` to record them).
    The sample starts in the phase it has when arriving at the controller's
    temperature on cooling (ordered below ``T_down``).
    """

    pattern = Cpt(_ComputedSignal, value=np.zeros(512, np.float32), kind="normal", units="counts")
    temperature = Cpt(_ComputedSignal, value=300.0, kind="normal", units="K")
    frame_time = Cpt(RangeSignal, value=30.0, kind="config", units="s", limits=(0.01, 3600.0))
    order_parameter = Cpt(_ComputedSignal, value=0.0, kind="omitted")
    ordered = Cpt(_ComputedSignal, value=0, kind="omitted")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str = "operando",
        controller: TemperatureController,
        seed: int = 0,
        config: OperandoConfig | None = None,
        t_c: float | None = None,
        beta: float | None = None,
        hysteresis: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix=prefix, name=name, **kwargs)
        self._config = config or OperandoConfig()
        sample_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
        sample = draw_sample_parameters(np.random.default_rng(sample_seed), 1, self._config)
        chosen = {"t_c": t_c, "beta": beta, "hysteresis": hysteresis}
        self._sample = replace(
            sample, **{k: np.array([float(v)]) for k, v in chosen.items() if v is not None}
        )
        self._rng = np.random.default_rng(noise_seed)
        self._controller = controller
        self.two_theta = two_theta_grid(self._config)
        self.frame_time.put(self._config.frame_time)
        self.pattern._update(np.zeros(self._config.n_points, np.float32))
        self._ordered = bool(controller.position < self._sample.t_down[0])
        self.ordered._update(int(self._ordered))
        controller.add_temperature_listener(self._follow_temperature)

    @property
    def config(self) -> OperandoConfig:
        """The instrument configuration (grid, counting, physics constants)."""
        return self._config

    @property
    def sample(self) -> SampleParameters:
        """Hidden sample parameters (length-1 arrays)."""
        return self._sample

    @property
    def truth(self) -> dict[str, float | bool]:
        """Hidden truth: T_c, beta, hysteresis, T_up, T_down (K) and the present phase and eta."""
        sample = self._sample
        return {
            "t_c": float(sample.t_c[0]),
            "beta": float(sample.beta[0]),
            "hysteresis": float(sample.hysteresis[0]),
            "t_up": float(sample.t_up[0]),
            "t_down": float(sample.t_down[0]),
            "ordered": self._ordered,
            "order_parameter": self._eta(self._controller.position),
        }

    def _eta(self, temperature: float) -> float:
        """Order parameter of the sample in its present phase at ``temperature`` (K)."""
        if not self._ordered:
            return 0.0
        return float(order_parameter(temperature, self._sample.t_up[0], self._sample.beta[0]))

    def _follow_temperature(self, readbacks: np.ndarray) -> None:
        """Update the phase along the readback history the controller went through."""
        states = relay_states(
            readbacks, self._ordered, self._sample.t_down[0], self._sample.t_up[0]
        )
        self._ordered = bool(states[-1])

    def trigger(self) -> DeviceStatus:
        """Record a frame at the present readback, then let ``frame_time`` pass on the stage."""
        temperature = self._controller.position
        eta = self._eta(temperature)
        counts = measure_patterns(
            self._rng,
            self.two_theta,
            np.array([temperature]),
            np.array([eta]),
            self._sample,
            self._config,
        )[0]
        self.pattern._update(counts)
        self.temperature._update(temperature)
        self.order_parameter._update(eta)
        self.ordered._update(int(self._ordered))
        self._controller.advance(float(self.frame_time.get()))
        status = DeviceStatus(self)
        status.set_finished()
        return status


def make_devices(seed: int = 0, config: OperandoConfig | None = None) -> dict[str, Device]:
    """A temperature controller at 300 K and an operando detector on it, ready for a RunEngine."""
    config = config or OperandoConfig()
    controller = TemperatureController(name="temperature", limits=config.temperature_limits)
    controller.time_constant.put(config.time_constant)
    detector = OperandoDetector(name="operando", controller=controller, seed=seed, config=config)
    return {"temperature": controller, "operando": detector}


def ramp(
    detector: OperandoDetector,
    controller: TemperatureController,
    start: float,
    stop: float,
    rate: float,
    frames: int,
    md: dict[str, Any] | None = None,
    delay: float = 0.0,
) -> Any:
    """Plan: settle at ``start`` (K), then count ``frames`` frames while ramping to ``stop``.

    The ramp runs at ``rate`` K/min (the controller's ``ramp_rate``), started
    without waiting by writing ``target``, so each frame is exposed at the
    temperature the continuous ramp has reached (one frame per detector
    ``frame_time``). Both temperatures are checked against the controller's
    limits before anything moves. The run is one ``bp.count`` whose start
    document records the ramp (``ramp``: start, stop, rate, frames). When it
    ends, the RunEngine stops the controller, which holds the setpoint it had
    reached. ``delay`` is wall-clock time (s) between frames, as ``bp.count``
    takes it (a demo's stand-in for exposure and read-out; simulated time
    does not depend on it).
    """
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp

    for value in (start, stop):
        controller.check_value(value)
    yield from bps.mv(controller, start)
    yield from bps.mv(controller.ramp_rate, rate)
    yield from bps.mv(controller.target, stop)
    ramp_md = {"ramp": {"start": start, "stop": stop, "rate_K_per_min": rate, "frames": frames}}
    return (yield from bp.count([detector], frames, delay=delay, md={**ramp_md, **(md or {})}))
