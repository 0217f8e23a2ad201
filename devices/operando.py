"""Operando powder diffraction of a perovskite through an octahedral-tilt transition on a ramp.

An ABO3 perovskite powder sits on a heater stage of a Cu K-alpha diffractometer.
Above its transition it is cubic; below it the BO6 octahedra tilt in antiphase
from cell to cell (an R-point, antiferrodistortive order parameter: the tilt
angle ``phi``). The tilt doubles the cell, so superlattice reflections appear
at half-integer pseudo-cubic indices; their structure factor comes from the
displaced oxygens alone, ``|F|^2 = f_O^2 (sum_i sin(pi h_i) sin(2 pi h.u_i))^2``,
a few tenths of a percent of the strongest parent line for tilts of a few
degrees. The tilt also strains the cell (spontaneous strain ``kappa phi^2``),
so parent reflections split. Every line is a K-alpha1 + K-alpha2 doublet.

Each sample is one of a family of perovskites (:data:`MATERIALS`: lattice
parameters and atomic scattering factors), with one of two tilt systems
(``a0a0c-``, tetragonal, or ``a-a-a-``, rhombohedral) and one of three
transition types (:data:`KINDS`):

* ``first_order``: Landau 2-4-6 free energy with a negative quartic term; the
  tilt jumps at the transition, with thermal hysteresis (the cubic phase
  supercools to ``T_down``, the tilted one superheats to ``T_up``) and a
  two-phase coexistence range (grains transform at temperatures spread by
  ``coexistence`` K; a frame is the volume-weighted sum of both phases);
* ``tricritical``: continuous, ``phi = phi0 (1 - T/T_c)^(1/4)``;
* ``second_order``: continuous, ``phi = phi0 (1 - T/T_c)^(1/2)`` (Landau).

A frame integrates over its exposure (the temperature moves during the count),
and counts are Poisson. Two ophyd devices: :class:`TemperatureController` (a
ramping positioner with a first-order-lag readback and an accelerated simulated
clock) and :class:`OperandoDetector` (the 1-D powder pattern of the sample
exposed while the controller's readback moves). :func:`simulate` makes labelled
ramps with the same physics functions the detector calls.
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
from scipy.special import ndtri

from smartlab_plugins.devices.dataset import SimulatedSet, config_dict
from smartlab_plugins.devices.signals import ArraySignal, RangeSignal, in_range

CASE = "operando"
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
WINDOW_SIGMAS = 5.0
BACKGROUND_DECAY_DEG = 8.0
#: Transition types, in the order of their integer code in :class:`SampleParameters`.
KINDS = ("first_order", "tricritical", "second_order")
#: Critical exponent of each continuous type (first-order tilts follow the 2-4-6 Landau branch).
BETA = {"tricritical": 0.25, "second_order": 0.5}
#: Glazer tilt systems, in the order of their integer code: the tilt axes (pseudo-cubic).
TILT_SYSTEMS = {"a0a0c-": (0.0, 0.0, 1.0), "a-a-a-": (1.0, 1.0, 1.0)}
#: Grains per sample: their transformation temperatures span the coexistence range.
GRAINS = 16

#: X-ray form factors f0(s) = c + sum_i a_i exp(-b_i s^2), s = sin(theta)/lambda in 1/angstrom:
#: the analytical approximation of International Tables for Crystallography Vol. C (1992),
#: Table 6.1.1.4 (neutral atoms). Rows: (a1..a4, b1..b4, c).
FORM_FACTORS: dict[str, tuple[float, ...]] = {
    "O": (3.0485, 2.2868, 1.5463, 0.867, 13.2771, 5.7011, 0.3239, 32.9089, 0.2508),
    "Na": (4.7626, 3.1736, 1.2674, 1.1128, 3.285, 8.8422, 0.3136, 129.424, 0.676),
    "Al": (6.4202, 1.9002, 1.5936, 1.9646, 3.0387, 0.7426, 31.5472, 85.0886, 1.1151),
    "Ca": (8.6266, 7.3873, 1.5899, 1.0211, 10.4421, 0.6599, 85.7484, 178.437, 1.3751),
    "Ti": (9.7595, 7.3558, 1.6991, 1.9021, 7.8508, 0.5, 35.6338, 116.105, 1.2807),
    "Ga": (15.2354, 6.7006, 4.3591, 2.9623, 3.0669, 0.2412, 10.7805, 61.4135, 1.7189),
    "Sr": (17.5663, 9.8184, 5.422, 2.6694, 1.5564, 14.0988, 0.1664, 132.376, 2.5064),
    "Zr": (17.8765, 10.948, 5.41732, 3.65721, 1.27618, 11.916, 0.117622, 87.6627, 2.06929),
    "Nb": (17.6142, 12.0144, 4.04183, 3.53346, 1.18865, 11.766, 0.204785, 69.7957, 3.75591),
    "Sn": (19.1889, 19.1005, 4.4585, 2.4663, 5.8303, 0.5031, 26.8909, 83.9571, 4.7821),
    "La": (20.578, 19.599, 11.3727, 3.28719, 2.94817, 0.244475, 18.7726, 133.124, 2.14678),
}


@dataclass(frozen=True)
class Material:
    """One perovskite ABO3 of the family: its A and B atoms and pseudo-cubic lattice (angstrom)."""

    name: str
    a_site: str
    b_site: str
    lattice: float


#: The family the samples are drawn from: pseudo-cubic lattice parameters near room temperature.
MATERIALS: tuple[Material, ...] = (
    Material("SrTiO3", "Sr", "Ti", 3.905),
    Material("LaAlO3", "La", "Al", 3.790),
    Material("CaTiO3", "Ca", "Ti", 3.830),
    Material("SrZrO3", "Sr", "Zr", 4.100),
    Material("NaNbO3", "Na", "Nb", 3.910),
    Material("LaGaO3", "La", "Ga", 3.890),
    Material("SrSnO3", "Sr", "Sn", 4.035),
)


def form_factor(element: str, s: np.ndarray) -> np.ndarray:
    """Atomic X-ray form factor f0 (electrons) of ``element`` at ``s = sin(theta)/lambda``."""
    a1, a2, a3, a4, b1, b2, b3, b4, c = FORM_FACTORS[element]
    s2 = np.asarray(s, dtype=float) ** 2
    return (
        c
        + a1 * np.exp(-b1 * s2)
        + a2 * np.exp(-b2 * s2)
        + a3 * np.exp(-b3 * s2)
        + a4 * np.exp(-b4 * s2)
    )


@dataclass(frozen=True)
class OperandoConfig:
    """Settings of the operando instrument and of the ramp generator.

    Units: angles in degrees 2theta, temperatures in K, times in s (simulated),
    ramp rates in K/min, lengths in angstrom, tilts in degrees, intensities in
    detector counts. The ``*_range`` pairs are the uniform ranges from which
    each ramp's hidden truth and nuisance parameters are drawn.

    Attributes:
        n_frames: frames per ramp (every ramp has the same length).
        n_points: detector channels, evenly spaced over ``two_theta_range``.
        two_theta_range: first and last channel centre, degrees.
        wavelength: X-ray wavelength of K-alpha1, angstrom (Cu).
        wavelength_ka2: K-alpha2, angstrom.
        ka2_ratio: K-alpha2 / K-alpha1 intensity.
        frame_time: simulated exposure per frame, s (frames follow each other).
        exposure_substeps: temperatures a frame's exposure is averaged over.
        time_constant: first-order lag of the sample temperature behind the
            controller setpoint, s.
        temperature_limits: controller range, K; setpoints outside are refused.
        reference_temperature: temperature at which ``lattice`` is quoted, K.
        materials: names of :data:`MATERIALS` drawn from, equally often.
        kind_fractions: fraction of first-order, tricritical and second-order samples.
        tilt_systems: Glazer tilt systems drawn from (keys of :data:`TILT_SYSTEMS`).
        tc_range: thermodynamic transition temperature ``T_c``, K.
        hysteresis_range: first order: ``T_up - T_down``, K.
        supercooling_range: first order: ``T_c - T_0``, K (``T_0``: the cubic phase's
            stability limit); at least 1.5 x the hysteresis, so the hysteresis
            lies inside the Landau metastability limits ``T_0`` and ``T_c + (T_c - T_0)/3``.
        coexistence_range: first order: standard deviation of the grains'
            transformation temperatures, K (the two-phase range is about 4 x this).
        tilt_range: octahedral rotation angle about the tilt axis, extrapolated to 0 K, degrees.
        strain_coupling_range: spontaneous strain per squared tilt (rad),
            ``e = kappa phi^2``.
        ramp_rate_range: controller ramp rate, K/min (1-4 K per 30 s frame).
        heating_fraction: fraction of ramps that heat (the rest cool).
        no_transition_fraction: fraction of ramps whose temperature range does
            not reach the transition of their branch (for false-alarm rates).
        onset_window: first and last frame index allowed for the onset.
        no_transition_margin: closest approach (K) of a no-transition ramp to
            the transition temperature of its branch.
        lattice_spread: relative spread of a sample's lattice parameter about its material's.
        expansion_range: linear thermal-expansion coefficient, 1/K.
        scale_range: per-ramp multiplier of ``intensity_scale`` (sample amount).
        intensity_scale: integrated counts per unit of multiplicity x
            Lorentz-polarisation factor x ``|F|^2`` (electrons^2, per pseudo-cubic cell).
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
    wavelength: float = 1.54056
    wavelength_ka2: float = 1.54439
    ka2_ratio: float = 0.5
    frame_time: float = 30.0
    exposure_substeps: int = 4
    time_constant: float = 30.0
    temperature_limits: tuple[float, float] = (100.0, 800.0)
    reference_temperature: float = 300.0
    materials: tuple[str, ...] = tuple(m.name for m in MATERIALS)
    kind_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    tilt_systems: tuple[str, ...] = tuple(TILT_SYSTEMS)
    tc_range: tuple[float, float] = (350.0, 550.0)
    hysteresis_range: tuple[float, float] = (4.0, 20.0)
    supercooling_range: tuple[float, float] = (30.0, 90.0)
    coexistence_range: tuple[float, float] = (0.2, 1.5)
    tilt_range: tuple[float, float] = (4.0, 9.0)
    strain_coupling_range: tuple[float, float] = (0.2, 0.6)
    ramp_rate_range: tuple[float, float] = (2.0, 8.0)
    heating_fraction: float = 0.5
    no_transition_fraction: float = 0.25
    onset_window: tuple[int, int] = (8, 56)
    no_transition_margin: float = 10.0
    lattice_spread: float = 0.005
    expansion_range: tuple[float, float] = (0.8e-5, 1.6e-5)
    scale_range: tuple[float, float] = (0.8, 1.25)
    intensity_scale: float = 2.0
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
        fractions = self.kind_fractions
        if len(fractions) != len(KINDS) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(
                f"kind_fractions must be {len(KINDS)} fractions ({', '.join(KINDS)}) "
                f"summing to 1, got {fractions}"
            )
        known = {m.name for m in MATERIALS}
        if not self.materials or not set(self.materials) <= known:
            raise ValueError(f"materials must be among {sorted(known)}, got {self.materials}")
        if not self.tilt_systems or not set(self.tilt_systems) <= set(TILT_SYSTEMS):
            raise ValueError(
                f"tilt_systems must be among {list(TILT_SYSTEMS)}, got {self.tilt_systems}"
            )
        if self.supercooling_range[0] < 1.5 * self.hysteresis_range[1]:
            raise ValueError(
                f"supercooling_range must start at >= 1.5 x the largest hysteresis "
                f"({1.5 * self.hysteresis_range[1]} K), got {self.supercooling_range}"
            )
        if self.exposure_substeps < 1:
            raise ValueError(f"exposure_substeps must be >= 1, got {self.exposure_substeps}")
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

    The transition: ``kind`` (index into :data:`KINDS`), ``t_c`` (K),
    ``hysteresis`` (K, 0 for continuous kinds), ``supercooling`` (``T_c - T_0``,
    K; first order only), ``coexistence`` (K, 0 for continuous kinds). The
    structure: ``material`` (index into :data:`MATERIALS`), ``tilt_system``
    (index into :data:`TILT_SYSTEMS`), ``tilt0`` (degrees, extrapolated to 0 K),
    ``strain_coupling`` (``kappa``), ``lattice`` (angstrom at the reference
    temperature), ``expansion`` (1/K). ``scale``: intensity multiplier.
    """

    kind: np.ndarray
    t_c: np.ndarray
    hysteresis: np.ndarray
    supercooling: np.ndarray
    coexistence: np.ndarray
    material: np.ndarray
    tilt_system: np.ndarray
    tilt0: np.ndarray
    strain_coupling: np.ndarray
    lattice: np.ndarray
    expansion: np.ndarray
    scale: np.ndarray

    @property
    def t_up(self) -> np.ndarray:
        """Where the tilted phase transforms on heating (K): ``T_c`` for continuous kinds."""
        return self.t_c + self.hysteresis / 2.0

    @property
    def t_down(self) -> np.ndarray:
        """Where the cubic phase transforms on cooling (K): ``T_c`` for continuous kinds."""
        return self.t_c - self.hysteresis / 2.0

    @property
    def beta(self) -> np.ndarray:
        """Critical exponent of continuous kinds; NaN for first-order samples."""
        table = np.array([np.nan, BETA["tricritical"], BETA["second_order"]])
        return table[np.asarray(self.kind, dtype=int)]

    def take(self, index: Any) -> SampleParameters:
        """The parameters indexed (or reshaped for broadcasting) by ``index``."""
        return SampleParameters(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def draw_sample_parameters(
    rng: np.random.Generator, n: int, config: OperandoConfig, kind: str | None = None
) -> SampleParameters:
    """Draw ``n`` samples from the configured family (the generator's and the device's prior).

    ``kind`` (one of :data:`KINDS`) makes every sample of that kind, with the
    same draws otherwise. ``T_c``, the Landau supercooling and the hysteresis
    are drawn first, in the order of the 1.0 instrument, so a device's seed
    keeps its transition temperatures (``make_devices(seed=11)``: T_up 535.4 K,
    T_down 520.8 K) across versions.
    """
    names = [m.name for m in MATERIALS]
    materials = np.array([names.index(name) for name in config.materials])
    systems = np.array([list(TILT_SYSTEMS).index(name) for name in config.tilt_systems])
    t_c = rng.uniform(*config.tc_range, n)
    supercooling = rng.uniform(*config.supercooling_range, n)
    hysteresis = rng.uniform(*config.hysteresis_range, n)
    drawn = rng.choice(len(KINDS), size=n, p=np.asarray(config.kind_fractions, dtype=float))
    kinds = drawn if kind is None else np.full(n, KINDS.index(kind))
    first_order = kinds == 0
    material = rng.choice(materials, size=n)
    nominal = np.array([m.lattice for m in MATERIALS])[material]
    return SampleParameters(
        kind=kinds,
        t_c=t_c,
        hysteresis=np.where(first_order, hysteresis, 0.0),
        supercooling=np.where(first_order, supercooling, np.nan),
        coexistence=np.where(first_order, rng.uniform(*config.coexistence_range, n), 0.0),
        material=material,
        tilt_system=rng.choice(systems, size=n),
        tilt0=rng.uniform(*config.tilt_range, n),
        strain_coupling=rng.uniform(*config.strain_coupling_range, n),
        lattice=nominal * (1.0 + config.lattice_spread * rng.uniform(-1.0, 1.0, n)),
        expansion=rng.uniform(*config.expansion_range, n),
        scale=rng.uniform(*config.scale_range, n),
    )


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


def first_order_branch(
    temperature: np.ndarray, t_c: np.ndarray, supercooling: np.ndarray
) -> np.ndarray:
    """Tilt of the first-order Landau branch relative to its 0 K value, ``phi(T) / phi(0)``.

    The 2-4-6 free energy ``G = A (T - T_0) Q^2 / 2 + B Q^4 / 4 + C Q^6 / 6``
    with ``B < 0`` has the tilted minimum
    ``Q^2 = (2/3) Q_c^2 (1 + sqrt(1 - (3/4)(T - T_0)/(T_c - T_0)))``, where
    ``T_c - T_0 = supercooling`` and ``Q_c`` is the jump at ``T_c``; the branch
    exists up to the superheating limit ``T_0 + (4/3)(T_c - T_0)`` (there it
    is clipped, ``Q^2 = (2/3) Q_c^2``).
    """
    t_0 = t_c - supercooling
    root = np.sqrt(np.clip(1.0 - 0.75 * (np.asarray(temperature) - t_0) / supercooling, 0.0, None))
    at_zero = 1.0 + np.sqrt(1.0 + 0.75 * t_0 / supercooling)
    return np.sqrt((1.0 + root) / at_zero)


def tilt_angle(temperature: np.ndarray, sample: SampleParameters) -> np.ndarray:
    """Tilt (degrees) of the tilted phase at ``temperature`` (K); 0 where that phase cannot exist.

    Continuous kinds: ``tilt0 (1 - T/T_c)^beta`` below ``T_c``. First order:
    ``tilt0`` times :func:`first_order_branch`, at every temperature the
    branch exists (whether a grain is tilted there is the phase history's
    business: :func:`grain_states`). ``sample`` fields broadcast with ``temperature``.
    """
    temperature = np.asarray(temperature, dtype=float)
    first = sample.kind == 0
    beta = np.where(first, 1.0, np.nan_to_num(sample.beta, nan=1.0))
    continuous = np.clip(1.0 - temperature / sample.t_c, 0.0, 1.0) ** beta
    supercooling = np.where(first, np.nan_to_num(sample.supercooling, nan=1.0), 1.0)
    branch = first_order_branch(temperature, sample.t_c, supercooling)
    return sample.tilt0 * np.where(first, branch, continuous)


def relay_states(
    temperatures: np.ndarray,
    ordered0: np.ndarray | bool,
    t_down: np.ndarray | float,
    t_up: np.ndarray | float,
) -> np.ndarray:
    """Phase after each temperature of a history: True where the sample (a grain) is tilted.

    The hysteresis is a relay: it becomes tilted when the temperature falls
    below ``t_down`` and cubic when it rises above ``t_up`` (K); in between it
    keeps its previous phase (``ordered0`` before the first temperature).
    Works along the last axis; leading axes broadcast with ``ordered0``,
    ``t_down`` and ``t_up``.
    """
    temperatures = np.asarray(temperatures, dtype=float)
    index = np.arange(temperatures.shape[-1])
    below = np.where(temperatures < np.asarray(t_down)[..., None], index, -1)
    above = np.where(temperatures > np.asarray(t_up)[..., None], index, -1)
    last_below = np.maximum.accumulate(below, axis=-1)
    last_above = np.maximum.accumulate(above, axis=-1)
    untouched = (last_below < 0) & (last_above < 0)
    return np.where(untouched, np.asarray(ordered0)[..., None], last_below > last_above)


#: Standard-normal quantiles of the grains: grain k transforms ``coexistence * GRAIN_OFFSETS[k]``
#: K away from ``T_down`` / ``T_up``, so the tilted volume fraction is a Gaussian CDF.
GRAIN_OFFSETS = ndtri((np.arange(GRAINS) + 0.5) / GRAINS)


def grain_thresholds(sample: SampleParameters) -> tuple[np.ndarray, np.ndarray]:
    """Each grain's ``(T_down, T_up)`` (K), shape ``sample.shape + (GRAINS,)``."""
    offset = np.asarray(sample.coexistence)[..., None] * GRAIN_OFFSETS
    return sample.t_down[..., None] + offset, sample.t_up[..., None] + offset


def grains_on_arrival(
    start: np.ndarray, heating: np.ndarray, sample: SampleParameters
) -> np.ndarray:
    """Grains tilted (``sample.shape + (GRAINS,)``) when the stage arrives at ``start`` (K).

    Along the ramp's own branch: a heating ramp arrives from below (a grain is
    tilted below its ``T_up``), a cooling ramp from above (below its ``T_down``).
    """
    t_down, t_up = grain_thresholds(sample)
    branch = np.where(np.asarray(heating)[..., None], t_up, t_down)
    return np.asarray(start)[..., None] < branch


def grain_states(
    temperatures: np.ndarray, grains0: np.ndarray, sample: SampleParameters
) -> np.ndarray:
    """Tilted grains along a temperature history (..., T): shape (..., GRAINS, T)."""
    t_down, t_up = grain_thresholds(sample)
    history = np.asarray(temperatures, dtype=float)[..., None, :]
    return relay_states(history, grains0, t_down, t_up)


# --- diffraction ---------------------------------------------------------------------------


def two_theta_grid(config: OperandoConfig) -> np.ndarray:
    """Detector channel centres, degrees 2theta."""
    return np.linspace(*config.two_theta_range, config.n_points)


def tilt_vector(tilt_degrees: np.ndarray, tilt_system: np.ndarray) -> np.ndarray:
    """Rotation vector (rad, pseudo-cubic axes; ``shape + (3,)``): tilt about the unit tilt axis.

    ``a-a-a-`` tilts by ``tilt / sqrt(3)`` about each pseudo-cubic axis: ``tilt`` is the
    octahedron's rotation angle about [111].
    """
    axes = np.array(list(TILT_SYSTEMS.values()))
    axes = (axes / np.linalg.norm(axes, axis=1, keepdims=True))[np.asarray(tilt_system, dtype=int)]
    return np.radians(np.asarray(tilt_degrees))[..., None] * axes


def structure_factor_sq(
    h: np.ndarray, rotation: np.ndarray, f_a: np.ndarray, f_b: np.ndarray, f_o: np.ndarray
) -> np.ndarray:
    """``|F|^2`` per pseudo-cubic cell (electrons^2) of reflections ``h`` (G, 3) of a tilted ABO3.

    B at the origin, A at (1/2, 1/2, 1/2), O_i at e_i / 2. An antiphase (R-point)
    tilt by the rotation vector ``w`` (rad, shape (..., 3)) moves O_i by
    ``u_i = s_n w x e_i / 2`` in cell ``n`` (``s_n = (-1)^(n_x + n_y + n_z)``),
    so with ``phi_i = 2 pi h.u_i``:

    * parent (integer h): ``F = f_B + f_A (-1)^(h+k+l) + f_O sum_i (-1)^(h_i) cos(phi_i)``;
    * superlattice (all half-integer h): ``F = i f_O sum_i sin(pi h_i) sin(phi_i)``,
      the oxygens alone.

    Both are ``f_O sum_i cos(pi h_i - phi_i)`` plus the cation terms of the parent.
    ``f_a``, ``f_b``, ``f_o`` (form factors at each reflection's s) have shape (..., G).
    """
    w = np.asarray(rotation, dtype=float)[..., None, :]
    hx, hy, hz = h[:, 0], h[:, 1], h[:, 2]
    wx, wy, wz = w[..., 0], w[..., 1], w[..., 2]
    phases = (
        np.pi * (hy * wz - hz * wy),
        np.pi * (hz * wx - hx * wz),
        np.pi * (hx * wy - hy * wx),
    )
    oxygen = sum(np.cos(np.pi * h[:, i] - phase) for i, phase in enumerate(phases))
    parent = np.all(np.isclose(h, np.rint(h)), axis=1)
    cations = np.where(parent, f_b + f_a * np.cos(np.pi * h.sum(axis=1)), 0.0)
    return (cations + f_o * oxygen) ** 2


def strain_shape(tilt_system: int) -> np.ndarray:
    """Unit spontaneous strain (3, 3) of a tilt system: ``n n^T - 1/3``, ``n`` the unit tilt axis.

    Elongation along the tilt axis at constant volume: tetragonal ``c/a - 1 = e``
    for ``a0a0c-``, rhombohedral shear ``e/3`` between all axes for ``a-a-a-``.
    """
    axis = np.array(list(TILT_SYSTEMS.values())[tilt_system])
    axis = axis / np.linalg.norm(axis)
    return np.outer(axis, axis) - np.eye(3) / 3.0


@lru_cache(maxsize=16)
def reflection_groups(tilt_system: int, max_index_sq: float) -> dict[str, np.ndarray]:
    """Powder reflections of the tilted perovskite with ``|h|^2 <= max_index_sq``, merged.

    All integer (parent) and all-half-integer (superlattice) pseudo-cubic h; the
    mixed ones have F = 0 for an R-point tilt. Reflections that coincide in the
    powder (same ``|h|^2`` and strain projection ``p = h.eps.h / |h|^2``) and have
    the same ``|F|^2`` at every tilt are one group (``multiplicity`` members);
    superlattice groups with ``F = 0`` (e.g. (1/2 1/2 1/2), where all three
    indices are equal) are left out. Returns ``h`` (a member, (G, 3)), ``h2``,
    ``p``, ``multiplicity`` and boolean ``superlattice``.
    """
    bound = math.ceil(2 * math.sqrt(max_index_sq)) + 1
    values = np.arange(-bound, bound + 1)
    doubled = np.stack(np.meshgrid(values, values, values, indexing="ij"), -1).reshape(-1, 3)
    parity = doubled % 2
    same = np.all(parity == parity[:, :1], axis=1)
    size = (doubled**2).sum(1)
    doubled = doubled[same & (size > 0) & (size <= 4 * max_index_sq)]
    h = doubled / 2.0
    h2 = (h**2).sum(1)
    p = np.einsum("gi,ij,gj->g", h, strain_shape(tilt_system), h) / h2
    probes = [
        structure_factor_sq(h, tilt_vector(np.array(angle), tilt_system), 2.1, 1.3, 0.37)
        for angle in (3.0, 11.0)
    ]
    key = np.stack([np.rint(4 * h2), np.rint(p * 1e6), *(np.rint(q * 1e9) for q in probes)], 1)
    _, first, counts = np.unique(key, axis=0, return_index=True, return_counts=True)
    superlattice = doubled[first, 0] % 2 == 1
    visible = ~superlattice | (probes[1][first] > 1e-9)
    keep = first[visible]
    return {
        "h": h[keep],
        "h2": h2[keep],
        "p": p[keep],
        "multiplicity": counts[visible].astype(float),
        "superlattice": superlattice[visible],
    }


def _config_groups(config: OperandoConfig, tilt_system: int) -> dict[str, np.ndarray]:
    """The reflection groups that can fall on the detector for any sample of ``config``."""
    high = config.temperature_limits[1]
    lattices = [m.lattice for m in MATERIALS if m.name in config.materials]
    a_max = max(lattices) * (1 + config.lattice_spread)
    a_max *= 1 + config.expansion_range[1] * (high - config.reference_temperature)
    a_max *= 1 + config.strain_coupling_range[1] * math.radians(config.tilt_range[1]) ** 2
    theta_max = math.radians(min(config.two_theta_range[1] + 2.0, 179.0) / 2.0)
    d_min = config.wavelength / (2.0 * math.sin(theta_max))
    return reflection_groups(tilt_system, round((a_max / d_min) ** 2, 3))


def spontaneous_strain(tilt_degrees: np.ndarray, strain_coupling: np.ndarray) -> np.ndarray:
    """Spontaneous strain ``e = kappa phi^2`` (phi in rad): the order parameter squared."""
    return strain_coupling * np.radians(np.asarray(tilt_degrees)) ** 2


def reflections(
    temperature: np.ndarray,
    strain: np.ndarray,
    tilts: np.ndarray,
    weights: np.ndarray,
    sample: SampleParameters,
    config: OperandoConfig,
    groups: dict[str, np.ndarray],
    superlattice: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peak centres (deg 2theta), FWHM (deg) and integrated counts, each (N, 2G), of N frames.

    One phase state per frame: peak positions at ``temperature`` (K) and
    spontaneous ``strain`` (both (N,)); intensities summed over the exposure's
    tilts (degrees) with their ``weights`` (both (N, M); the phase's volume
    fraction per sub-step over M). ``sample`` fields have shape (N,) and one
    tilt system, that of ``groups``. Per reflection, K-alpha1 then K-alpha2:
    ``scale * intensity_scale * m * LP(theta) * |F|^2 * exp(-2 B(T) s^2) * (1 or ka2_ratio)``
    with ``1/d^2 = |h|^2 (1 - 2 e p) / a0(T)^2``, ``a0(T) = a (1 + alpha (T - T_ref))``,
    ``LP = (1 + cos^2 2theta) / (sin^2 theta cos theta)``, ``B(T) = debye_waller_slope * T``.
    ``superlattice=False`` leaves the superlattice groups out (the cubic phase).
    """
    rows = np.ones(groups["h2"].size, dtype=bool) if superlattice else ~groups["superlattice"]
    h, h2, p = groups["h"][rows], groups["h2"][rows], groups["p"][rows]
    temperature = np.asarray(temperature, dtype=float)
    a0 = sample.lattice * (1.0 + sample.expansion * (temperature - config.reference_temperature))
    inv_d2 = h2 * (1.0 - 2.0 * np.asarray(strain)[:, None] * p) / a0[:, None] ** 2
    s = np.sqrt(inv_d2) / 2.0
    material = np.asarray(sample.material, dtype=int)
    f_o = form_factor("O", s)
    f_a = np.empty_like(s)
    f_b = np.empty_like(s)
    for index in np.unique(material):
        chosen = material == index
        f_a[chosen] = form_factor(MATERIALS[index].a_site, s[chosen])
        f_b[chosen] = form_factor(MATERIALS[index].b_site, s[chosen])
    system = int(np.asarray(sample.tilt_system).flat[0]) if material.size else 0
    f_sq = np.zeros_like(s)
    for m in range(np.shape(tilts)[1]):
        rotation = tilt_vector(np.asarray(tilts)[:, m], system)
        f_sq += np.asarray(weights)[:, m, None] * structure_factor_sq(h, rotation, f_a, f_b, f_o)
    debye_waller = np.exp(-2.0 * config.debye_waller_slope * temperature[:, None] * s**2)
    common = (
        (config.intensity_scale * sample.scale)[:, None]
        * groups["multiplicity"][rows]
        * f_sq
        * debye_waller
    )
    centres, widths, areas = [], [], []
    for wavelength, share in ((config.wavelength, 1.0), (config.wavelength_ka2, config.ka2_ratio)):
        sin_theta = wavelength * s
        on_sphere = sin_theta < 1.0
        theta = np.arcsin(np.minimum(sin_theta, 1.0 - 1e-9))
        lorentz_polarisation = (1.0 + np.cos(2 * theta) ** 2) / (np.sin(theta) ** 2 * np.cos(theta))
        centres.append(np.degrees(2 * theta))
        widths.append(config.fwhm_base + config.fwhm_tan * np.tan(theta))
        areas.append(share * common * lorentz_polarisation * on_sphere)
    return tuple(np.concatenate(parts, axis=1) for parts in (centres, widths, areas))


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
    temperatures: np.ndarray,
    tilted_fraction: np.ndarray,
    sample: SampleParameters,
    config: OperandoConfig,
) -> np.ndarray:
    """Noise-free counts per channel (shape S + (P,)) of frames exposed over ``temperatures``.

    ``temperatures`` (K) and ``tilted_fraction`` (the tilted phase's volume
    fraction) have shape S + (M,): M sub-steps of each frame's exposure;
    ``sample`` fields broadcast to S. A frame is the volume-weighted sum of
    the two phases over its exposure: the cubic phase at the exposure's mean
    temperature, and the tilted phase with its intensities summed over the
    sub-steps' tilts (:func:`tilt_angle`) and its peaks at the exposure's
    mean temperature and volume-weighted mean strain. Gaussian peaks of
    :func:`reflections` on :func:`background_profile`.
    """
    temperatures = np.asarray(temperatures, dtype=float)
    shape, substeps = temperatures.shape[:-1], temperatures.shape[-1]
    flat = SampleParameters(
        **{f.name: np.broadcast_to(getattr(sample, f.name), shape).ravel() for f in fields(sample)}
    )
    temperatures = temperatures.reshape(-1, substeps)
    fraction = np.broadcast_to(tilted_fraction, (*shape, substeps)).reshape(-1, substeps)
    mean_temperature = temperatures.mean(axis=1)
    tilts = tilt_angle(temperatures, flat.take((slice(None), None)))
    tilted_weight = fraction / substeps
    cubic_weight = 1.0 - tilted_weight.sum(axis=1, keepdims=True)
    strain = (tilted_weight * spontaneous_strain(tilts, flat.strain_coupling[:, None])).sum(1)
    strain = strain / np.maximum(tilted_weight.sum(axis=1), 1e-12)
    half = _window_half_width(two_theta, config)
    peaks = np.zeros((mean_temperature.size, two_theta.size))
    has_cubic, has_tilted = cubic_weight[:, 0] > 1e-12, tilted_weight.sum(axis=1) > 0
    for system in np.unique(flat.tilt_system):
        groups = _config_groups(config, int(system))
        for cubic, tilted in ((True, False), (False, True), (True, True)):
            chosen = np.flatnonzero(
                (flat.tilt_system == system) & (has_cubic == cubic) & (has_tilted == tilted)
            )
            if not chosen.size:
                continue
            part, at = flat.take(chosen), mean_temperature[chosen]
            rows = []
            if cubic:
                zero = np.zeros((chosen.size, 1))
                rows.append(
                    reflections(
                        at, zero[:, 0], zero, cubic_weight[chosen], part, config, groups, False
                    )
                )
            if tilted:
                rows.append(
                    reflections(
                        at,
                        strain[chosen],
                        tilts[chosen],
                        tilted_weight[chosen],
                        part,
                        config,
                        groups,
                    )
                )
            centres, fwhm, areas = (np.concatenate([r[i] for r in rows], axis=1) for i in range(3))
            peaks[chosen] = _gaussian_profiles(two_theta, centres, fwhm, areas, half)
    return (peaks + background_profile(two_theta, config)).reshape(*shape, two_theta.size)


def measure_patterns(
    rng: np.random.Generator,
    two_theta: np.ndarray,
    temperatures: np.ndarray,
    tilted_fraction: np.ndarray,
    sample: SampleParameters,
    config: OperandoConfig,
) -> np.ndarray:
    """Poisson-sampled counts (float32) of :func:`expected_pattern`: what the detector records."""
    expected = expected_pattern(two_theta, temperatures, tilted_fraction, sample, config)
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
    middle = config.frame_time / 2.0  # a frame's temperature is its exposure's mean
    early = ramp_lag_distance((first - 1) * config.frame_time + middle, config.time_constant)
    late = ramp_lag_distance(last * config.frame_time + middle, config.time_constant)

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
    """Readback (K) during each frame's exposure, shape (n, n_frames, exposure_substeps).

    The controller ramps the setpoint at ``rate`` from ``start`` (with the
    target beyond the last frame) and the readback follows
    :func:`lagged_readback` from equilibrium at ``start``; frame ``j`` is
    exposed from ``j * frame_time`` to ``(j + 1) * frame_time`` s, sampled at
    the midpoints of ``exposure_substeps`` equal parts. The frame's
    temperature is their mean.
    """
    substeps = config.exposure_substeps
    times = (
        np.arange(config.n_frames)[:, None] + (np.arange(substeps) + 0.5) / substeps
    ) * config.frame_time
    start = plan.start[:, None, None]
    rate = plan.rate[:, None, None]
    target = start + plan.direction[:, None, None] * rate * (config.n_frames * config.frame_time)
    return lagged_readback(times, start, target, rate, config.time_constant, start)


def simulate(n: int, seed: int = 0, config: OperandoConfig | None = None) -> SimulatedSet:
    """``n`` labelled temperature ramps of ``n_frames`` powder patterns each.

    inputs: ``patterns`` (n, n_frames, n_points) float32 counts;
    ``temperatures`` (n, n_frames) float32 readback K, each frame's exposure mean.
    labels: ``transformed`` (n, n_frames) bool, True from the frame in which
    the sample has left its starting phase (at least half its volume, averaged
    over the exposure); ``onset`` (n,) int, the first such frame or -1;
    ``tilted_fraction`` (n, n_frames) the tilted volume fraction and ``tilt``
    (n, n_frames) the tilted phase's tilt (degrees; 0 where no grain is tilted),
    exposure means; per ramp ``kind`` (index into :data:`KINDS`), ``tc``,
    ``beta`` (NaN for first order), ``hysteresis``, ``t_up``, ``t_down``,
    ``supercooling``, ``coexistence`` (K), ``direction`` (+1 heating, -1
    cooling), ``ramp_rate`` (K/min), ``start_temperature`` (K),
    ``has_transition`` and the structure: ``material`` (index into
    :data:`MATERIALS`), ``tilt_system`` (index into :data:`TILT_SYSTEMS`),
    ``tilt0``, ``strain_coupling``, ``lattice``, ``expansion``, ``scale``.
    Every ramp arrives at its start temperature along its own branch
    (:func:`grains_on_arrival`).
    """
    config = config or OperandoConfig()
    rng = np.random.default_rng(seed)
    sample = draw_sample_parameters(rng, n, config)
    plan = _plan_ramps(rng, sample, config)
    exposures = ramp_temperatures(plan, config)
    substeps = config.exposure_substeps
    grains0 = grains_on_arrival(plan.start, plan.direction > 0, sample)
    history = exposures.reshape(n, config.n_frames * substeps)
    states = grain_states(history, grains0, sample)
    tilted = states.mean(axis=1).reshape(n, config.n_frames, substeps)
    left = (states != grains0[..., None]).mean(axis=1).reshape(n, config.n_frames, substeps)
    transformed = left.mean(axis=2) >= 0.5
    has_transition = transformed.any(axis=1)
    onset = np.where(has_transition, transformed.argmax(axis=1), -1)
    temperatures = exposures.mean(axis=2)
    fraction = tilted.mean(axis=2)
    tilt = np.where(fraction > 0, tilt_angle(temperatures, sample.take((slice(None), None))), 0.0)

    two_theta = two_theta_grid(config)
    patterns = np.empty((n, config.n_frames, config.n_points), dtype=np.float32)
    chunk = 32
    for begin in range(0, n, chunk):
        part = slice(begin, min(begin + chunk, n))
        patterns[part] = measure_patterns(
            rng, two_theta, exposures[part], tilted[part], sample.take((part, None)), config
        )

    labels = {
        "transformed": transformed,
        "onset": onset.astype(np.int64),
        "tilted_fraction": fraction.astype(np.float32),
        "tilt": tilt.astype(np.float32),
        "has_transition": has_transition,
        "kind": sample.kind.astype(np.int64),
        "tc": sample.t_c,
        "beta": sample.beta,
        "hysteresis": sample.hysteresis,
        "t_up": sample.t_up,
        "t_down": sample.t_down,
        "direction": plan.direction,
        "ramp_rate": plan.rate * 60.0,
        "start_temperature": plan.start,
        "material": sample.material.astype(np.int64),
        "tilt_system": sample.tilt_system.astype(np.int64),
        **{
            k: getattr(sample, k)
            for k in (
                "supercooling",
                "coexistence",
                "tilt0",
                "strain_coupling",
                "lattice",
                "expansion",
                "scale",
            )
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
            "supercooling": "K",
            "coexistence": "K",
            "ramp_rate": "K/min",
            "start_temperature": "K",
            "lattice": "angstrom",
            "expansion": "1/K",
            "beta": "",
            "tilt": "deg",
            "tilt0": "deg",
            "tilted_fraction": "",
            "strain_coupling": "1/rad^2",
            "scale": "",
            "kind": f"index into {list(KINDS)}",
            "material": f"index into {[m.name for m in MATERIALS]}",
            "tilt_system": f"index into {list(TILT_SYSTEMS)}",
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

    def readbacks_ahead(self, seconds: float, samples: int) -> np.ndarray:
        """Readbacks (K) at the midpoints of ``samples`` equal parts of the next ``seconds``.

        What a detector exposing for ``seconds`` from now sees; the clock does not move.
        """
        parts = (np.arange(samples) + 0.5) / samples
        return self._readback_at(self._now + parts * float(seconds))

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

    ``trigger()`` exposes one frame while the controller's readback moves over
    the next ``frame_time`` (s): the pattern integrates the sample over
    ``exposure_substeps`` temperatures of that interval (its grains transform
    as the temperature passes their thresholds), then the controller's
    simulated clock advances by ``frame_time``, so ``bp.count`` during a ramp
    takes frames back to back. Read keys: ``<name>_pattern`` (n_points,)
    float32 counts and ``<name>_temperature`` K (the exposure's mean). Hidden
    truth: :attr:`truth`, and the omitted signals ``<name>_order_parameter``
    (volume-weighted mean tilt, degrees) and ``<name>_ordered`` (1 if at least
    half the volume is tilted; set their ``kind`` to ``"normal"`` to record
    them). The sample starts in the phase it has when arriving at the
    controller's temperature on cooling (tilted below ``T_down``).
    """

    pattern = Cpt(_ComputedSignal, value=np.zeros(512, np.float32), kind="normal", units="counts")
    temperature = Cpt(_ComputedSignal, value=300.0, kind="normal", units="K")
    frame_time = Cpt(RangeSignal, value=30.0, kind="config", units="s", limits=(0.01, 3600.0))
    order_parameter = Cpt(_ComputedSignal, value=0.0, kind="omitted", units="deg")
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
        kind: str | None = None,
        hysteresis: float | None = None,
        material: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix=prefix, name=name, **kwargs)
        self._config = config or OperandoConfig()
        sample_seed, noise_seed = np.random.SeedSequence(seed).spawn(2)
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        rng = np.random.default_rng(sample_seed)
        sample = draw_sample_parameters(rng, 1, self._config, kind)
        self._sample = _chosen_sample(sample, t_c, hysteresis, material)
        self._rng = np.random.default_rng(noise_seed)
        self._controller = controller
        self.two_theta = two_theta_grid(self._config)
        self.frame_time.put(self._config.frame_time)
        self.pattern._update(np.zeros(self._config.n_points, np.float32))
        self._grains = grains_on_arrival(np.array([controller.position]), False, self._sample)[0]
        self.ordered._update(int(self._grains.mean() >= 0.5))
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
    def truth(self) -> dict[str, Any]:
        """Hidden truth: the material and transition, and the present phase."""
        sample = self._sample
        temperature = self._controller.position
        fraction = float(self._grains.mean())
        return {
            "material": MATERIALS[int(sample.material[0])].name,
            "tilt_system": list(TILT_SYSTEMS)[int(sample.tilt_system[0])],
            "kind": KINDS[int(sample.kind[0])],
            "t_c": float(sample.t_c[0]),
            "beta": float(sample.beta[0]),
            "hysteresis": float(sample.hysteresis[0]),
            "t_up": float(sample.t_up[0]),
            "t_down": float(sample.t_down[0]),
            "coexistence": float(sample.coexistence[0]),
            "ordered": fraction >= 0.5,
            "tilted_fraction": fraction,
            "tilt": float(tilt_angle(temperature, sample)[0]) if fraction > 0 else 0.0,
        }

    def _follow_temperature(self, readbacks: np.ndarray) -> None:
        """Update the grains' phases along the readback history the controller went through."""
        self._grains = grain_states(readbacks, self._grains, self._sample.take(0))[:, -1]

    def trigger(self) -> DeviceStatus:
        """Expose a frame over the next ``frame_time`` of the ramp, then let that time pass."""
        config, sample = self._config, self._sample
        seconds = float(self.frame_time.get())
        temperatures = self._controller.readbacks_ahead(seconds, config.exposure_substeps)
        fraction = grain_states(temperatures, self._grains, sample.take(0)).mean(axis=0)
        counts = measure_patterns(
            self._rng, self.two_theta, temperatures[None], fraction[None], sample, config
        )[0]
        tilt = tilt_angle(temperatures, sample.take(0)) * fraction
        self.pattern._update(counts)
        self.temperature._update(float(temperatures.mean()))
        self.order_parameter._update(float(tilt.mean()))
        self.ordered._update(int(fraction.mean() >= 0.5))
        self._controller.advance(seconds)
        status = DeviceStatus(self)
        status.set_finished()
        return status


def _chosen_sample(
    sample: SampleParameters, t_c: float | None, hysteresis: float | None, material: str | None
) -> SampleParameters:
    """``sample`` with the transition temperature, hysteresis and material a caller chose."""
    changes: dict[str, np.ndarray] = {}
    if t_c is not None:
        changes["t_c"] = np.array([float(t_c)])
    if material is not None:
        names = [m.name for m in MATERIALS]
        if material not in names:
            raise ValueError(f"material must be one of {names}, got {material!r}")
        index = names.index(material)
        changes["material"] = np.array([index])
        changes["lattice"] = np.array([MATERIALS[index].lattice])
    if hysteresis is not None:
        if int(sample.kind[0]) != 0:
            raise ValueError("hysteresis applies to a first-order sample (kind='first_order')")
        changes["hysteresis"] = np.array([float(hysteresis)])
    return replace(sample, **changes)


def make_devices(
    seed: int = 0, config: OperandoConfig | None = None, kind: str | None = "first_order"
) -> dict[str, Device]:
    """A temperature controller at 300 K and an operando detector on it, ready for a RunEngine.

    The sample is drawn from ``config``'s family with ``seed``, with a
    transition of ``kind`` (first order by default: the transition the demos
    show and the live detector flags within a frame or two; None draws the kind too).
    """
    config = config or OperandoConfig()
    controller = TemperatureController(name="temperature", limits=config.temperature_limits)
    controller.time_constant.put(config.time_constant)
    detector = OperandoDetector(
        name="operando", controller=controller, seed=seed, config=config, kind=kind
    )
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
