"""X-ray diffraction across the morphotropic phase boundary (MPB) of a PZT-like perovskite.

A Pilatus-like area detector on a 2-theta arm records segments (arcs) of the
pseudo-cubic {111}, {200} and {220} Debye-Scherrer rings of Pb(Zr1-xTix)O3.
The phase depends on the Ti fraction ``x`` and the temperature ``T``:
rhombohedral (R3m) on the Zr-rich side, tetragonal (P4mm) on the Ti-rich side,
monoclinic (Cm, M_A) in a narrow band at x_MPB(T), and phase mixtures where
the sample's composition spread straddles a phase boundary.  Each phase's
lattice parameters give a metric tensor, the metric tensor gives the d-spacing
of every member of a pseudo-cubic family (so the rings split as the symmetry
demands), Bragg's law gives 2-theta, and the detector geometry maps 2-theta and
the ring azimuth chi onto pixels.

One model serves both the ophyd devices (:class:`MPBStage`,
:class:`MPBDetector`) and the training-set generator :func:`simulate`: both call
:func:`generate_frames`.  The docs page is ``docs/devices/mpb.md``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Final

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus
from scipy.special import ndtr, ndtri

from smartlab_plugins.devices.dataset import SimulatedSet, config_dict
from smartlab_plugins.devices.signals import ArraySignal, LimitedPositioner, RangeSignal

CASE: Final = "mpb"

# --- labels -------------------------------------------------------------------------------
RHOMBOHEDRAL: Final = 0
MONOCLINIC: Final = 1
TETRAGONAL: Final = 2
CUBIC: Final = 3
MIXTURE: Final = 4
PHASE_NAMES: Final = ("rhombohedral", "monoclinic", "tetragonal", "cubic", "mixture")
N_PHASES: Final = 4  # pure phases (R, M, T, C); MIXTURE is a label, not a phase
PURE_THRESHOLD: Final = 0.9  # a frame is labelled pure when one phase holds >= 90 %

# --- reflections: one of each Friedel pair (+-hkl) of the pseudo-cubic families -----------
REFLECTIONS: Final = np.array(
    [
        [1, 1, 1],
        [1, 1, -1],
        [1, -1, 1],
        [-1, 1, 1],
        [2, 0, 0],
        [0, 2, 0],
        [0, 0, 2],
        [2, 2, 0],
        [2, -2, 0],
        [2, 0, 2],
        [2, 0, -2],
        [0, 2, 2],
        [0, 2, -2],
    ]
)
FAMILY_NAMES: Final = ("111", "200", "220")
FAMILY_OF: Final = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2])
FAMILY_MEMBERS: Final = np.array([4, 3, 6])  # members per family (Friedel pairs merged)
FAMILY_STRENGTH: Final = np.array([1.0, 1.6, 2.6])  # lumped |F|^2 per family (relative)

# --- phase diagram (published PZT; docs/devices/mpb.md gives the sources) -----------------
COMPOSITION_LIMITS: Final = (0.0, 1.0)  # Ti fraction x
TEMPERATURE_LIMITS: Final = (100.0, 800.0)  # K: above the tilted (R3c/Cc) phases' range
T_REF: Final = 300.0  # K
# Curie line T_C(x) = c0 + c1 x + c2 x^2 (K), through PbZrO3 230 C, the MPB (x = 0.48)
# 386 C and PbTiO3 490 C (Jaffe, Cook & Jaffe, Piezoelectric Ceramics, 1971)
CURIE_COEFFICIENTS: Final = (503.0, 385.0, -125.0)
CURIE_WIDTH: Final = 4.0  # K, rms spread of the local T_C (composition spread, diffuseness)
# monoclinic band (Noheda et al., PRB 63, 014103 (2001)): centre x_c(T) from 0.49 at 20 K to
# 0.465 at 300 K (constant above), width w(T) from 0.06 at 20 K to 0 at 400 K
MPB_CENTRE_LOW_T: Final = (20.0, 0.49)  # (K, x)
MPB_CENTRE_ROOM_T: Final = (300.0, 0.465)  # (K, x); constant above
MONOCLINIC_WIDTH_LOW_T: Final = 0.06  # w at 20 K (Ti fraction)
MONOCLINIC_CLOSES: Final = 400.0  # K: w = 0 at and above (R and T meet directly)
COMPOSITION_SPREAD: Final = 0.004  # sigma of the local composition inside one sample

# --- lattice parameters -------------------------------------------------------------------
# pseudo-cubic a_pc (cube root of the volume per formula unit) at 300 K, linear in x between
# PbZrO3 (4.144 A, Pbam cell 5.88 x 11.78 x 8.22 A, Z = 8) and PbTiO3 (3.986 A, a = 3.904 A,
# c = 4.152 A: Shirane, Pepinsky & Frazer, Acta Cryst. 9, 131 (1956))
A_PC_0: Final = 4.144  # Angstrom at x = 0
A_PC_SLOPE: Final = -0.158  # Angstrom per unit x
THERMAL_EXPANSION: Final = 6e-6  # 1/K
# tetragonal c/a - 1 at 300 K: 0.023 at x = 0.48 (Noheda et al., PRB 61, 8687 (2000):
# a = 4.046 A, c = 4.139 A at 325 K) to 0.063 at x = 1 (PbTiO3)
TETRAGONALITY_AT: Final = (0.48, 0.023)  # (x, c/a - 1)
TETRAGONALITY_SLOPE: Final = 0.077  # per unit x
TETRAGONALITY_FLOOR: Final = 0.015  # c/a - 1 never falls below this on the Zr-rich side
# rhombohedral 90 - alpha (deg) at 300 K: ~0.25 deg next to the boundary, growing towards
# PbZrO3 (alpha ~ 89.5-89.8 deg across the R3m field)
SHEAR_AT_BOUNDARY: Final = 0.25  # deg
SHEAR_SLOPE: Final = 0.7  # deg per unit (x_c - x)
# monoclinic Cm (M_A) cell of PbZr0.52Ti0.48O3 at 20 K (Noheda et al., PRB 61, 8687 (2000)):
# a_m = 5.72204, b_m = 5.70957, c_m = 4.13651 A, beta = 90.498 deg; in the pseudo-cubic
# setting a = b = 4.0417 A, c/a - 1 = 0.0235, 90 - alpha = 90 - beta = 0.353 deg,
# 90 - gamma = 0.125 deg (:func:`monoclinic_from_cm`)
NOHEDA_CM_CELL: Final = (5.72204, 5.70957, 4.13651, 90.498)  # a_m, b_m, c_m (A), beta (deg)
MONO_SHEAR_ACROSS: Final = (1.25, 0.75)  # M shear relative to Noheda's, R side to T side
MONO_TETRAGONALITY_ACROSS: Final = (0.85, 1.0)  # M c/a - 1 relative to T's, R to T side
# spontaneous strain ~ P^2 ~ (T_C - T)^(1/2) (tricritical Landau), saturating below T_SAT
STRAIN_SATURATION: Final = 200.0  # K

# --- detector -----------------------------------------------------------------------------
DETECTOR_SHAPE: Final = (97, 243)  # rows, columns: a Pilatus 100K binned 2 x 2
BACKGROUND_DECAY: Final = 40.0  # deg: air/incoherent background ~ exp(-(2theta - arm)/40 deg)
FRACTION_FLOOR: Final = 1e-6  # phases with a smaller fraction are not rendered


@dataclass(frozen=True)
class MPBConfig:
    """Instrument and generator settings, with units; the defaults are the documented setup.

    Ranges are ``(low, high)`` tuples from which :func:`simulate` draws uniformly.
    """

    x_range: tuple[float, float] = COMPOSITION_LIMITS  # Ti fraction drawn by simulate()
    temperature_range: tuple[float, float] = TEMPERATURE_LIMITS  # K, drawn by simulate()
    near_boundary_fraction: float = 0.0  # share of samples drawn within the band below
    near_boundary_halfwidth: float = 0.05  # |x - x_MPB(T)| limit of the oversampled band
    near_curie_fraction: float = 0.0  # share of samples drawn within the band below
    near_curie_halfwidth: float = 60.0  # K, |T - T_C(x)| limit of the oversampled band
    wavelength: float = 1.5406  # Angstrom (Cu K-alpha1)
    distance: float = 130.0  # mm, sample to detector centre, along the detector normal
    arm_two_theta: float = 53.0  # deg, 2-theta of the detector normal (detector arm)
    pixel_size: float = 0.344  # mm (Pilatus 0.172 mm pixels binned 2 x 2)
    beam_jitter: float = 1.5  # px, rms shift of the beam centre per frame (clipped at 3 rms)
    distance_range: tuple[float, float] | None = None  # mm: drawn per chunk by simulate()
    arm_range: tuple[float, float] | None = None  # deg: drawn per chunk by simulate()
    caglioti_uvw: tuple[float, float, float] = (0.02, -0.005, 0.03)  # deg^2, instrumental
    scherrer_k: float = 0.9  # Scherrer shape factor
    crystallite_size_range: tuple[float, float] = (50.0, 200.0)  # nm
    lorentz_fraction: float = 0.3  # pseudo-Voigt mixing (0 Gauss, 1 Lorentz)
    texture_max: float = 0.3  # largest relative pole-density modulation along chi
    texture_period: float = 16.0  # deg of chi, period of the texture modulation
    count_time: float = 1.0  # s
    flux: float = 12.0  # counts/s per pixel for unit S_f * LP * profile density (1/deg)
    scale_range: tuple[float, float] = (0.8, 1.2)  # sample scattering power (relative)
    background_range: tuple[float, float] = (10.0, 30.0)  # counts/s per pixel at the arm angle
    readout_noise: float = 1.5  # counts rms, Gaussian, added after Poisson counting
    profile_step: float = 0.02  # deg, 2-theta step of the 1-D profiles interpolated on pixels
    chunk: int = 64  # frames rendered at once (memory vs speed); part of the random stream
    workers: int = 2  # threads rendering chunks in parallel (results do not depend on it)

    def __post_init__(self) -> None:
        _check_range("x_range", self.x_range, COMPOSITION_LIMITS)
        _check_range("temperature_range", self.temperature_range, TEMPERATURE_LIMITS)
        shares = self.near_boundary_fraction, self.near_curie_fraction
        if not (min(shares) >= 0.0 and sum(shares) <= 1.0):
            raise ValueError(
                f"near_boundary_fraction={self.near_boundary_fraction} and near_curie_fraction="
                f"{self.near_curie_fraction} must be >= 0 with a sum <= 1"
            )
        for name in ("distance_range", "arm_range"):
            drawn = getattr(self, name)
            if drawn is not None and not 0 < drawn[0] <= drawn[1]:
                raise ValueError(f"{name}={drawn} must satisfy 0 < low <= high")
        for name in ("wavelength", "distance", "pixel_size", "count_time", "flux"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")
        if self.chunk < 1 or self.workers < 1:
            raise ValueError(f"chunk={self.chunk} and workers={self.workers} must be >= 1")


def _check_range(name: str, value: tuple[float, float], limits: tuple[float, float]) -> None:
    """Refuse a (low, high) range that is reversed or leaves ``limits``."""
    low, high = value
    if not limits[0] <= low <= high <= limits[1]:
        raise ValueError(f"{name}={value} must satisfy {limits[0]} <= low <= high <= {limits[1]}")


# =========================================================================================
# Phase diagram
# =========================================================================================
def curie_temperature(x: np.ndarray | float) -> np.ndarray:
    """T_C(x) (K): the Curie line above which the perovskite is cubic (paraelectric)."""
    c0, c1, c2 = CURIE_COEFFICIENTS
    x = np.asarray(x, dtype=float)
    return c0 + c1 * x + c2 * x**2


def mpb_composition(temperature: np.ndarray | float) -> np.ndarray:
    """x_c(T): Ti fraction at the centre of the monoclinic band (the MPB); T in K.

    Linear from 0.49 at 20 K to 0.465 at 300 K, constant above (the R|T boundary).
    """
    (t_low, x_low), (t_room, x_room) = MPB_CENTRE_LOW_T, MPB_CENTRE_ROOM_T
    t = np.clip(np.asarray(temperature, dtype=float), t_low, t_room)
    return x_low + (x_room - x_low) * (t - t_low) / (t_room - t_low)


def monoclinic_width(temperature: np.ndarray | float) -> np.ndarray:
    """w(T): width in x of the monoclinic band, 0.06 at 20 K shrinking to 0 at 400 K."""
    t_low = MPB_CENTRE_LOW_T[0]
    t = np.asarray(temperature, dtype=float)
    share = (MONOCLINIC_CLOSES - t) / (MONOCLINIC_CLOSES - t_low)
    return MONOCLINIC_WIDTH_LOW_T * np.clip(share, 0.0, 1.0)


def boundary_offset(x: np.ndarray | float, temperature: np.ndarray | float) -> np.ndarray:
    """Signed distance delta = x - x_c(T) to the centre of the phase boundary (units of x)."""
    return np.asarray(x, dtype=float) - mpb_composition(temperature)


def phase_fractions(x: np.ndarray | float, temperature: np.ndarray | float) -> np.ndarray:
    """Volume fractions (R, M, T, C) of a sample of nominal composition x at temperature T (K).

    The local composition is Gaussian about x with rms ``COMPOSITION_SPREAD`` and the
    local Curie temperature Gaussian about T_C(x) with rms ``CURIE_WIDTH``.  Above its
    T_C a region is cubic: f_C = Phi((T - T_C(x)) / sigma_C).  Below, it takes the phase
    of the sharp diagram (R below x_c - w/2, M within w/2, T above x_c + w/2), so
    f_R = (1 - f_C) Phi((-w/2 - delta)/s), f_T = (1 - f_C) Phi((delta - w/2)/s).
    Returns shape ``x.shape + (4,)``; rows sum to 1.
    """
    delta = boundary_offset(x, temperature)
    half = monoclinic_width(temperature) / 2
    f_c = ndtr((np.asarray(temperature, dtype=float) - curie_temperature(x)) / CURIE_WIDTH)
    f_r = ndtr((-half - delta) / COMPOSITION_SPREAD)
    f_t = ndtr((delta - half) / COMPOSITION_SPREAD)
    f_m = np.clip(1.0 - f_r - f_t, 0.0, 1.0)
    ferroic = 1.0 - f_c
    return np.stack([f_r * ferroic, f_m * ferroic, f_t * ferroic, f_c], axis=-1)


def phase_label(fractions: np.ndarray, threshold: float = PURE_THRESHOLD) -> np.ndarray:
    """Class label: the majority phase (0 R, 1 M, 2 T, 3 C) if its fraction >= threshold, else 4."""
    fractions = np.asarray(fractions)
    major = np.argmax(fractions, axis=-1)
    pure = np.max(fractions, axis=-1) >= threshold
    return np.where(pure, major, MIXTURE).astype(np.int64)


def label_boundaries(temperature: np.ndarray | float) -> np.ndarray:
    """The four compositions where :func:`phase_label` changes below T_C at temperature T (K).

    In order R|mixture, mixture|M, M|mixture, mixture|T:
    x_c(T) + (-w/2 - z s, -w/2 + z s, w/2 - z s, w/2 + z s), z = Phi^-1(threshold).
    When w(T) < 2 z s the middle two cross: there is no monoclinic label at that T.
    Exact away from the Curie line up to the other boundary's tail.  Shape ``T.shape + (4,)``.
    """
    z = float(ndtri(PURE_THRESHOLD)) * COMPOSITION_SPREAD
    half = monoclinic_width(temperature)[..., None] / 2
    offsets = np.concatenate([-half - z, -half + z, half - z, half + z], axis=-1)
    return mpb_composition(temperature)[..., None] + offsets


def label_margins(
    x: np.ndarray | float, temperature: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """How far a sample is from a label change: (in composition, in temperature).

    The composition margin is |x - b| to the nearest of :func:`label_boundaries`
    (inf for a cubic sample, whose label does not change with x there); the
    temperature margin is |T - T_C(x)| (K).  "Away from the boundaries" in the model
    card means both margins are large.
    """
    x = np.asarray(x, dtype=float)
    temperature = np.broadcast_to(np.asarray(temperature, dtype=float), x.shape)
    bounds = label_boundaries(temperature)
    margin_x = np.min(np.abs(x[..., None] - bounds), axis=-1)
    margin_t = np.abs(temperature - curie_temperature(x))
    cubic = temperature > curie_temperature(x)
    return np.where(cubic, np.inf, margin_x), margin_t


# =========================================================================================
# Lattice parameters and d-spacings
# =========================================================================================
def strain_scale(x: np.ndarray | float, temperature: np.ndarray | float) -> np.ndarray:
    """Spontaneous strain relative to 300 K: sqrt((T_C - T') / (T_C - 300 K)), 0 above T_C.

    Strain ~ P^2 and P^2 ~ (T_C - T)^(1/2) at a tricritical Landau transition;
    T' = max(T, 200 K), as the measured strains level off at low temperature.
    """
    t_c = curie_temperature(x)
    t = np.maximum(np.asarray(temperature, dtype=float), STRAIN_SATURATION)
    return np.sqrt(np.clip(t_c - t, 0.0, None) / (t_c - T_REF))


def pseudo_cubic_a(x: np.ndarray | float, temperature: np.ndarray | float) -> np.ndarray:
    """Pseudo-cubic lattice parameter a_pc (Angstrom) = cube root of the cell volume."""
    temperature = np.asarray(temperature, dtype=float)
    a300 = A_PC_0 + A_PC_SLOPE * np.asarray(x, dtype=float)
    return a300 * (1.0 + THERMAL_EXPANSION * (temperature - T_REF))


def tetragonality(x: np.ndarray | float, temperature: np.ndarray | float) -> np.ndarray:
    """c/a - 1 of the tetragonal phase: linear in x at 300 K, times :func:`strain_scale`."""
    x_at, eta_at = TETRAGONALITY_AT
    eta300 = np.maximum(eta_at + TETRAGONALITY_SLOPE * (np.asarray(x, float) - x_at), 0.0)
    return np.maximum(eta300, TETRAGONALITY_FLOOR) * strain_scale(x, temperature)


def rhombohedral_shear(x: np.ndarray | float, temperature: np.ndarray | float) -> np.ndarray:
    """90 deg - alpha (deg) of the rhombohedral phase: grows linearly with x_c - x."""
    delta = np.maximum(-boundary_offset(x, temperature), 0.0)
    return (SHEAR_AT_BOUNDARY + SHEAR_SLOPE * delta) * strain_scale(x, temperature)


def monoclinic_from_cm(
    a_m: float, b_m: float, c_m: float, beta: float
) -> tuple[float, float, float, float]:
    """A Cm (M_A) cell in its pseudo-cubic setting: (a_pc, c/a - 1, 90 - alpha, 90 - gamma).

    a_pc = (a_m + b_m)/2 and (a_m - b_m)/2 with a_m ⊥ b_m, c_pc = c_m:
    |a_pc| = sqrt(a_m^2 + b_m^2)/2, cos(gamma) = (a_m^2 - b_m^2)/(a_m^2 + b_m^2),
    cos(alpha) = cos(beta_pc) = c_m a_m cos(beta) / (2 |a_pc| c_m).  Angles in deg, the
    shear's sign folded to the setting used here (alpha, gamma < 90 deg).
    """
    a_pc = math.hypot(a_m, b_m) / 2
    cos_gamma = (a_m**2 - b_m**2) / (a_m**2 + b_m**2)
    cos_alpha = a_m * math.cos(math.radians(beta)) / (2 * a_pc)
    shear = abs(90.0 - math.degrees(math.acos(cos_alpha)))
    shear_gamma = abs(90.0 - math.degrees(math.acos(cos_gamma)))
    return a_pc, c_m / a_pc - 1.0, shear, shear_gamma


def monoclinic_strains(
    x: np.ndarray | float, temperature: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c/a - 1, 90 - alpha, 90 - gamma), angles in deg, of the monoclinic M_A phase.

    Anchored on Noheda's Cm cell (:data:`NOHEDA_CM_CELL`, PbZr0.52Ti0.48O3 at 20 K):
    with t = clip((delta + w/2)/w, 0, 1) running across the band from the R side, the
    shear is Noheda's times 1.25 -> 0.75 and c/a - 1 is the tetragonal phase's times
    0.85 -> 1 (the polarisation P ~ [u u v] rotates from [111] towards [001]), both
    scaled to temperature like every spontaneous strain; 90 - gamma keeps Noheda's
    ratio to 90 - alpha.  M stays distinct from both neighbours (first-order edges).
    """
    width = np.maximum(monoclinic_width(temperature), 1e-9)
    t = np.clip((boundary_offset(x, temperature) + width / 2) / width, 0, 1)
    _, _, shear_ref, gamma_ref = monoclinic_from_cm(*NOHEDA_CM_CELL)
    x_ref = TETRAGONALITY_AT[0]
    at_reference = float(strain_scale(x_ref, MPB_CENTRE_LOW_T[0]))
    scale = strain_scale(x, temperature) / at_reference
    eta = tetragonality(x, temperature) * np.interp(t, (0.0, 1.0), MONO_TETRAGONALITY_ACROSS)
    shear = shear_ref * scale * np.interp(t, (0.0, 1.0), MONO_SHEAR_ACROSS)
    return eta, shear, shear * (gamma_ref / shear_ref)


def lattice_parameters(x: np.ndarray | float, temperature: np.ndarray | float) -> np.ndarray:
    """Pseudo-cubic cell (a, b, c in Angstrom; alpha, beta, gamma in deg) of R, M, T and C.

    Shape ``x.shape + (4, 6)``, phases in label order (R, M, T, C).  All keep the
    volume a_pc^3 (to first order):
    R: a = b = c = a_pc, alpha = beta = gamma = 90 - shear_R;
    M: a = b = a_pc (1 + eta_M)^(-1/3), c = a (1 + eta_M), alpha = beta, gamma
    (:func:`monoclinic_strains`);
    T: a = b = a_pc (1 + eta_T)^(-1/3), c = a (1 + eta_T), right angles;
    C: a = b = c = a_pc, right angles.
    """
    x, temperature = np.broadcast_arrays(np.asarray(x, float), np.asarray(temperature, float))
    a_pc = pseudo_cubic_a(x, temperature)
    eta_t = tetragonality(x, temperature)
    eta_m, shear_m, shear_gamma = monoclinic_strains(x, temperature)
    alpha_r = 90.0 - rhombohedral_shear(x, temperature)
    a_m = a_pc / np.cbrt(1.0 + eta_m)
    a_t = a_pc / np.cbrt(1.0 + eta_t)
    right = np.full_like(a_pc, 90.0)
    rows = [
        (a_pc, a_pc, a_pc, alpha_r, alpha_r, alpha_r),
        (a_m, a_m, a_m * (1 + eta_m), 90 - shear_m, 90 - shear_m, 90 - shear_gamma),
        (a_t, a_t, a_t * (1 + eta_t), right, right, right),
        (a_pc, a_pc, a_pc, right, right, right),
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def metric_tensor(lattice: np.ndarray) -> np.ndarray:
    """Direct metric tensor G_ij = a_i . a_j (Angstrom^2) of cells (..., 6) -> (..., 3, 3)."""
    a, b, c = lattice[..., 0], lattice[..., 1], lattice[..., 2]
    ca, cb, cg = (np.cos(np.radians(lattice[..., i])) for i in (3, 4, 5))
    rows = [
        (a * a, a * b * cg, a * c * cb),
        (a * b * cg, b * b, b * c * ca),
        (a * c * cb, b * c * ca, c * c),
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def d_spacings(lattice: np.ndarray, hkl: np.ndarray = REFLECTIONS) -> np.ndarray:
    """d_hkl (Angstrom) = 1 / sqrt(h^T G^-1 h) for cells (..., 6) and reflections (m, 3).

    Returns shape (..., m).
    """
    g_star = np.linalg.inv(metric_tensor(lattice))
    hkl = np.asarray(hkl, dtype=float)
    inv_d2 = np.einsum("mi,...ij,mj->...m", hkl, g_star, hkl)
    return 1.0 / np.sqrt(inv_d2)


def bragg_two_theta(d: np.ndarray, wavelength: float) -> np.ndarray:
    """Bragg angle 2-theta (deg) = 2 asin(lambda / 2d); d and lambda in Angstrom."""
    ratio = wavelength / (2.0 * np.asarray(d, dtype=float))
    if np.any(ratio > 1.0):
        raise ValueError(f"d >= lambda/2 = {wavelength / 2} Angstrom needed for Bragg reflection")
    return np.degrees(2.0 * np.arcsin(ratio))


# =========================================================================================
# Peak shape and intensities
# =========================================================================================
def peak_fwhm(
    two_theta: np.ndarray, crystallite_size: np.ndarray | float, config: MPBConfig
) -> np.ndarray:
    """FWHM (deg): instrumental Caglioti width and Scherrer size width added in quadrature.

    H^2 = U tan^2(theta) + V tan(theta) + W + (K lambda / (D cos theta))^2 (rad -> deg),
    crystallite size D in nm.
    """
    theta = np.radians(np.asarray(two_theta) / 2)
    u, v, w = config.caglioti_uvw
    tan = np.tan(theta)
    size_a = 10.0 * np.asarray(crystallite_size, dtype=float)
    size_width = np.degrees(config.scherrer_k * config.wavelength / (size_a * np.cos(theta)))
    return np.sqrt(u * tan**2 + v * tan + w + size_width**2)


def pseudo_voigt(offset: np.ndarray, fwhm: np.ndarray, lorentz_fraction: float) -> np.ndarray:
    """Unit-area pseudo-Voigt (1/deg) at offset (deg) from the peak centre."""
    z2 = (2.0 * offset / fwhm) ** 2
    lorentz = (2.0 / math.pi) / (fwhm * (1.0 + z2))
    gauss = 2.0 * math.sqrt(math.log(2.0) / math.pi) / fwhm * np.exp(-math.log(2.0) * z2)
    return lorentz_fraction * lorentz + (1.0 - lorentz_fraction) * gauss


def lorentz_polarisation(two_theta: np.ndarray) -> np.ndarray:
    """Powder Lorentz-polarisation factor (1 + cos^2 2theta) / (2 sin^2 theta cos theta)."""
    tth = np.radians(np.asarray(two_theta))
    theta = tth / 2
    return (1.0 + np.cos(tth) ** 2) / (2.0 * np.sin(theta) ** 2 * np.cos(theta))


def reflection_positions(x: np.ndarray, temperature: np.ndarray, config: MPBConfig) -> np.ndarray:
    """2-theta (deg) of every reflection member of every phase, shape (n, 4 phases, 13)."""
    return bragg_two_theta(d_spacings(lattice_parameters(x, temperature)), config.wavelength)


# =========================================================================================
# Detector geometry
# =========================================================================================
def _detector_axes(config: MPBConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors (normal, column, row) of the detector; beam along +z, arm in x-z plane."""
    arm = np.radians(config.arm_two_theta)
    normal = np.array([np.sin(arm), 0.0, np.cos(arm)])
    col_axis = np.array([np.cos(arm), 0.0, -np.sin(arm)])  # columns: increasing 2-theta
    row_axis = np.array([0.0, 1.0, 0.0])  # rows: along +y (pyFAI's axis 1)
    return normal, col_axis, row_axis


def beam_centre(config: MPBConfig) -> tuple[float, float]:
    """(row, column) in pixels where the direct beam meets the detector plane (off-detector)."""
    rows, cols = DETECTOR_SHAPE
    arm = np.radians(config.arm_two_theta)
    col = (cols - 1) / 2 - config.distance * np.tan(arm) / config.pixel_size
    return (rows - 1) / 2, float(col)


def poni_geometry(config: MPBConfig, beam_shift: tuple[float, float] = (0.0, 0.0)) -> dict:
    """The detector geometry as pyFAI PONI parameters (SI units: m and rad).

    ``{dist, poni1, poni2, rot1, rot2, rot3, wavelength, pixel1, pixel2}``: the
    detector normal through the sample meets the detector plane at the centre
    pixel (moved by ``beam_shift`` rows, columns), the arm is a rotation rot1
    about the vertical axis 1.  pyFAI's 2-theta and chi of every pixel equal
    :func:`pixel_angles` (tested); :class:`MPBDetector` declares this in the
    image's data key as ``geometry``.
    """
    rows, cols = DETECTOR_SHAPE
    pixel = config.pixel_size * 1e-3
    return {
        "dist": config.distance * 1e-3,
        "poni1": (rows / 2 + beam_shift[0]) * pixel,
        "poni2": (cols / 2 + beam_shift[1]) * pixel,
        "rot1": math.radians(config.arm_two_theta),
        "rot2": 0.0,
        "rot3": 0.0,
        "wavelength": config.wavelength * 1e-10,
        "pixel1": pixel,
        "pixel2": pixel,
    }


def pixel_angles(
    beam_shift: np.ndarray, config: MPBConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-theta (deg), azimuth chi (deg) and relative solid angle of every pixel (float32).

    ``beam_shift`` (n, 2) moves the beam centre by (rows, columns) pixels, which is the
    same as moving the pixels by the opposite amount in the detector plane.  Pixel
    centres: P = L n + p (c - c0 - dc) e_col + p (r - r0 - dr) e_row (mm).
    2theta = acos(P_z / |P|), chi = atan2(P_y, P_x), solid angle (L / |P|)^3 relative
    to the detector centre.  P_x, P_z depend on the column only and P_y on the row only,
    so the maps are built from 1-D vectors.  Returns three arrays of shape (n, rows, cols).
    """
    normal, col_axis, row_axis = _detector_axes(config)
    rows, cols = DETECTOR_SHAPE
    shift = np.asarray(beam_shift, dtype=float).reshape(-1, 2)
    r = (np.arange(rows) - (rows - 1) / 2)[None, :] - shift[:, 0, None]
    c = (np.arange(cols) - (cols - 1) / 2)[None, :] - shift[:, 1, None]
    p, dist = config.pixel_size, config.distance
    pos_x = (dist * normal[0] + p * c * col_axis[0]).astype(np.float32)[:, None, :]
    pos_z = (dist * normal[2] + p * c * col_axis[2]).astype(np.float32)[:, None, :]
    pos_y = (p * r * row_axis[1]).astype(np.float32)[:, :, None]
    norm = np.sqrt(pos_x**2 + pos_z**2 + pos_y**2)
    two_theta = np.degrees(np.arccos(pos_z / norm))
    chi = np.degrees(np.arctan2(pos_y, pos_x))
    solid = (np.float32(dist) / norm) ** 3
    return two_theta, chi, solid


@lru_cache(maxsize=8)
def profile_grid(config: MPBConfig) -> np.ndarray:
    """2-theta grid (deg) for the 1-D profiles: covers every pixel for any allowed jitter."""
    jitter = 3.0 * config.beam_jitter + 1.0
    corners = np.array([[s_r, s_c] for s_r in (-jitter, jitter) for s_c in (-jitter, jitter)])
    two_theta = pixel_angles(corners, config)[0]
    low = np.floor(two_theta.min()) - 1.0
    high = np.ceil(two_theta.max()) + 1.0
    return np.arange(low, high + config.profile_step, config.profile_step)


# =========================================================================================
# Frame generation (shared by the device and simulate())
# =========================================================================================
def draw_nuisance(rng: np.random.Generator, n: int, config: MPBConfig) -> dict[str, np.ndarray]:
    """Per-frame nuisance parameters that are not the phase (hidden, drawn from the config).

    beam_shift (n, 2) px, crystallite_size (n,) nm, texture_amplitude (n, 3),
    texture_phase (n, 3) deg of chi, scale (n,), background (n,) counts/s per pixel,
    distance (n,) mm and arm_two_theta (n,) deg: drawn once per chunk of
    ``config.chunk`` frames where the config gives a range, else the config's values.
    """
    jitter = np.clip(rng.normal(0.0, 1.0, (n, 2)), -3.0, 3.0) * config.beam_jitter
    nuisance = {
        "beam_shift": jitter,
        "crystallite_size": rng.uniform(*config.crystallite_size_range, n),
        "texture_amplitude": rng.uniform(0.0, config.texture_max, (n, 3)),
        "texture_phase": rng.uniform(0.0, config.texture_period, (n, 3)),
        "scale": rng.uniform(*config.scale_range, n),
        "background": rng.uniform(*config.background_range, n),
    }
    chunks = -(-n // config.chunk)
    for name, drawn in (("distance", config.distance_range), ("arm_two_theta", config.arm_range)):
        values = rng.uniform(*drawn, chunks) if drawn else np.full(chunks, getattr(config, name))
        nuisance[name] = np.repeat(values, config.chunk)[:n]
    return nuisance


def frame_config(config: MPBConfig, nuisance: dict[str, np.ndarray], index: int) -> MPBConfig:
    """``config`` with the detector distance and arm that frame ``index`` was drawn with."""
    distance, arm = float(nuisance["distance"][index]), float(nuisance["arm_two_theta"][index])
    if (distance, arm) == (config.distance, config.arm_two_theta):
        return config
    return replace(config, distance=distance, arm_two_theta=arm)


def family_profiles(
    x: np.ndarray, temperature: np.ndarray, nuisance: dict[str, np.ndarray], config: MPBConfig
) -> np.ndarray:
    """1-D diffracted intensity (counts/s per pixel) per family on :func:`profile_grid`.

    I_f(2theta) = flux * scale * sum_phases f_p sum_{m in f} S_f LP(2theta_m) / M_f
    * pV(2theta - 2theta_m; H_m); shape (n, 3 families, grid).  Split members share
    the family intensity by multiplicity (1:2, 1:3, ...).
    """
    grid = profile_grid(config).astype(np.float32)
    two_theta = reflection_positions(x, temperature, config)
    fwhm = peak_fwhm(two_theta, nuisance["crystallite_size"][:, None, None], config)
    member = FAMILY_STRENGTH[FAMILY_OF] / FAMILY_MEMBERS[FAMILY_OF]
    fractions = phase_fractions(x, temperature)
    weight = (config.flux * nuisance["scale"])[:, None, None] * fractions[..., None]
    strength = (weight * member * lorentz_polarisation(two_theta)).astype(np.float32)
    two_theta, fwhm = two_theta.astype(np.float32), fwhm.astype(np.float32)
    profiles = np.zeros((len(x), 3, grid.size), dtype=np.float32)
    for phase in range(N_PHASES):
        frames = np.flatnonzero(fractions[:, phase] > FRACTION_FLOOR)
        for m, family in enumerate(FAMILY_OF):
            offset = grid - two_theta[frames, phase, m, None]
            shape = pseudo_voigt(offset, fwhm[frames, phase, m, None], config.lorentz_fraction)
            profiles[frames, family] += strength[frames, phase, m, None] * shape
    return profiles


def _texture_basis(nuisance: dict[str, np.ndarray], config: MPBConfig) -> np.ndarray:
    """Coefficients (n, 3 families, 3 terms) of 1, cos(k chi), sin(k chi) in tau_f(chi)."""
    amplitude = nuisance["texture_amplitude"]
    phase = 2 * np.pi * nuisance["texture_phase"] / config.texture_period
    ones = np.ones_like(amplitude)
    return np.stack([ones, amplitude * np.cos(phase), amplitude * np.sin(phase)], axis=-1)


def _sample_profiles(profiles: np.ndarray, two_theta: np.ndarray, config: MPBConfig) -> np.ndarray:
    """Profiles (n, grid, k) linearly interpolated at pixel 2-theta (n, pixels): (n, pixels, k)."""
    grid = profile_grid(config)
    n, size, k = profiles.shape
    position = (two_theta - np.float32(grid[0])) * np.float32(1.0 / config.profile_step)
    base = np.clip(np.floor(position), 0, size - 2)
    frac = (position - base)[..., None]
    index = base.astype(np.int64)
    index += (np.arange(n) * size)[:, None]
    table = profiles.reshape(n * size, k)
    low, high = table[index], table[index + 1]
    return low + (high - low) * frac


def mean_counts(
    x: np.ndarray, temperature: np.ndarray, nuisance: dict[str, np.ndarray], config: MPBConfig
) -> np.ndarray:
    """Expected counts per pixel (n, rows, cols), float32, before noise.

    mu = t * Omega_rel * [sum_f tau_f(chi) I_f(2theta) + B exp(-(2theta - arm)/40 deg)],
    texture tau_f(chi) = 1 + A_f cos(2 pi (chi - phi_f) / period).  Written as
    sum_f tau_f I_f = J_0 + cos(k chi) J_c + sin(k chi) J_s with 1-D profiles J, so only
    three profiles are interpolated onto the pixels.
    """
    n = len(x)
    profiles = family_profiles(x, temperature, nuisance, config)
    combined = np.einsum("nfg,nft->ngt", profiles, _texture_basis(nuisance, config))
    two_theta, chi, solid = pixel_angles(nuisance["beam_shift"], config)
    rings = _sample_profiles(combined.astype(np.float32), two_theta.reshape(n, -1), config)
    arg = np.float32(2 * np.pi / config.texture_period) * chi.reshape(n, -1)
    signal = rings[..., 0] + rings[..., 1] * np.cos(arg) + rings[..., 2] * np.sin(arg)
    level = nuisance["background"].astype(np.float32)[:, None, None]
    background = level * np.exp((np.float32(config.arm_two_theta) - two_theta) / BACKGROUND_DECAY)
    return np.float32(config.count_time) * solid * (signal.reshape(two_theta.shape) + background)


def add_detector_noise(mean: np.ndarray, rng: np.random.Generator, config: MPBConfig) -> np.ndarray:
    """Poisson photon counting plus Gaussian readout noise; float32 counts."""
    counts = rng.poisson(mean).astype(np.float32)
    readout = rng.standard_normal(mean.shape, dtype=np.float32)
    counts += np.float32(config.readout_noise) * readout
    return counts


def generate_frames(
    x: np.ndarray, temperature: np.ndarray, rng: np.random.Generator, config: MPBConfig
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Noisy detector frames (n, 97, 243) float32 counts, and the nuisance drawn for them.

    The single code path for the device and :func:`simulate`: the nuisance is drawn
    first, then each chunk of ``config.chunk`` frames gets its own child generator
    (``rng.spawn``) for the noise, so the frames depend only on the seed and the chunk
    size, not on how many threads (``config.workers``) render them.
    """
    x = np.atleast_1d(np.asarray(x, dtype=float))
    temperature = np.broadcast_to(np.asarray(temperature, dtype=float), x.shape)
    nuisance = draw_nuisance(rng, len(x), config)
    frames = np.empty((len(x), *DETECTOR_SHAPE), dtype=np.float32)
    starts = range(0, len(x), config.chunk)
    child_rngs = rng.spawn(len(starts))

    def render(start: int, child: np.random.Generator) -> None:
        part = slice(start, start + config.chunk)
        chunk_nuisance = {k: v[part] for k, v in nuisance.items()}
        chunk_config = frame_config(config, nuisance, start)
        mean = mean_counts(x[part], temperature[part], chunk_nuisance, chunk_config)
        frames[part] = add_detector_noise(mean, child, config)

    if config.workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            list(pool.map(render, starts, child_rngs))
    else:
        for start, child in zip(starts, child_rngs, strict=True):
            render(start, child)
    return frames, nuisance


def truth_labels(x: np.ndarray, temperature: np.ndarray) -> dict[str, np.ndarray]:
    """Hidden truth for compositions x and temperatures T (K), arrays with n on axis 0."""
    x = np.atleast_1d(np.asarray(x, dtype=float))
    temperature = np.broadcast_to(np.asarray(temperature, dtype=float), x.shape)
    fractions = phase_fractions(x, temperature)
    delta = boundary_offset(x, temperature)
    margin_x, margin_t = label_margins(x, temperature)
    return {
        "phase": phase_label(fractions),
        "composition_margin": margin_x.astype(np.float32),
        "curie_margin": margin_t.astype(np.float32),
        "curie_temperature": curie_temperature(x).astype(np.float32),
        "fractions": fractions.astype(np.float32),
        "boundary_offset": delta.astype(np.float32),
        "boundary_distance": np.abs(delta).astype(np.float32),
        "x": x.astype(np.float32),
        "temperature": temperature.astype(np.float32),
        "x_mpb": mpb_composition(temperature).astype(np.float32),
        "c_over_a": (1.0 + tetragonality(x, temperature)).astype(np.float32),
        "rhombohedral_angle": (90.0 - rhombohedral_shear(x, temperature)).astype(np.float32),
    }


def draw_conditions(
    rng: np.random.Generator, n: int, config: MPBConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Compositions and temperatures (K) for :func:`simulate`, uniform in the config ranges.

    A share ``near_boundary_fraction`` is instead drawn uniformly within
    ``near_boundary_halfwidth`` of x_MPB(T) (clipped to ``x_range``) at a temperature
    below ``MONOCLINIC_CLOSES`` (where the boundary has its monoclinic band), and a share
    ``near_curie_fraction`` with T within ``near_curie_halfwidth`` of T_C(x)
    (clipped to ``temperature_range``).
    """
    temperature = rng.uniform(*config.temperature_range, n)
    x = rng.uniform(*config.x_range, n)
    draw = rng.random(n)
    near = draw < config.near_boundary_fraction
    half = config.near_boundary_halfwidth
    # the boundary is drawn where it has a monoclinic band (below MONOCLINIC_CLOSES)
    t_low, t_high = config.temperature_range
    t_band = rng.uniform(t_low, max(t_low, min(t_high, MONOCLINIC_CLOSES)), n)
    temperature = np.where(near, t_band, temperature)
    x_near = mpb_composition(temperature) + rng.uniform(-half, half, n)
    x = np.clip(np.where(near, x_near, x), *config.x_range)
    if config.near_curie_fraction > 0:
        curie = (draw >= config.near_boundary_fraction) & (
            draw < config.near_boundary_fraction + config.near_curie_fraction
        )
        spread = rng.uniform(-config.near_curie_halfwidth, config.near_curie_halfwidth, n)
        t_near = np.clip(curie_temperature(x) + spread, *config.temperature_range)
        temperature = np.where(curie, t_near, temperature)
    return x, temperature


LABEL_UNITS: Final = {
    "phase": "class (0 rhombohedral, 1 monoclinic, 2 tetragonal, 3 cubic, 4 mixture)",
    "fractions": "volume fraction (R, M, T, C)",
    "composition_margin": "Ti fraction (to the nearest label change below T_C; inf if cubic)",
    "curie_margin": "K (|T - T_C(x)|)",
    "curie_temperature": "K",
    "boundary_offset": "Ti fraction (x - x_MPB)",
    "boundary_distance": "Ti fraction (|x - x_MPB|)",
    "x": "Ti fraction",
    "temperature": "K",
    "x_mpb": "Ti fraction",
    "c_over_a": "1 (tetragonal phase)",
    "rhombohedral_angle": "deg (rhombohedral phase)",
    "beam_shift": "px (rows, columns)",
    "crystallite_size": "nm",
    "texture_amplitude": "1 (per family 111, 200, 220)",
    "texture_phase": "deg of chi",
    "scale": "1",
    "background": "counts/s per pixel",
    "distance": "mm (sample to detector, along its normal)",
    "arm_two_theta": "deg (2-theta of the detector normal)",
}


def simulate(n: int, seed: int = 0, config: MPBConfig | None = None) -> SimulatedSet:
    """A labelled set of ``n`` detector frames, deterministic for ``seed``.

    inputs: ``mpb_image`` (n, 97, 243) float32 counts.  labels: see ``LABEL_UNITS``
    (phase class, fractions, distance to the boundary, conditions and nuisances).
    coords: pixel rows/columns and the nominal (unjittered) 2-theta and chi maps.
    """
    config = config or MPBConfig()
    rng = np.random.default_rng(seed)
    x, temperature = draw_conditions(rng, n, config)
    frames, nuisance = generate_frames(x, temperature, rng, config)
    labels = truth_labels(x, temperature)
    labels.update({k: v.astype(np.float32) for k, v in nuisance.items()})
    two_theta, chi, _ = pixel_angles(np.zeros((1, 2)), config)
    return SimulatedSet(
        case=CASE,
        seed=seed,
        inputs={"mpb_image": frames},
        labels=labels,
        coords={
            "row": np.arange(DETECTOR_SHAPE[0]),
            "col": np.arange(DETECTOR_SHAPE[1]),
            "two_theta": two_theta[0].astype(np.float32),
            "chi": chi[0].astype(np.float32),
        },
        units={
            "mpb_image": "counts",
            "row": "px",
            "col": "px",
            "two_theta": "deg",
            "chi": "deg",
            **LABEL_UNITS,
        },
        config=config_dict(config),
    )


# =========================================================================================
# ophyd devices
# =========================================================================================
class MPBStage(Device):
    """Sample stage: composition motor ``x`` (Ti fraction) and ``temperature`` (K).

    Read keys: ``sample_x``, ``sample_temperature``.  Targets outside
    ``COMPOSITION_LIMITS`` / ``TEMPERATURE_LIMITS`` raise LimitError before motion.
    """

    x = Cpt(LimitedPositioner, limits=COMPOSITION_LIMITS, init_pos=0.3, egu="Ti fraction")
    temperature = Cpt(LimitedPositioner, limits=TEMPERATURE_LIMITS, init_pos=T_REF, egu="K")

    def __init__(self, prefix: str = "", *, name: str = "sample", **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)


@dataclass(frozen=True)
class MPBTruth:
    """Hidden truth at one stage position (composition x, temperature in K)."""

    x: float
    temperature: float
    phase: int
    phase_name: str
    fractions: tuple[float, float, float, float]  # R, M, T, C volume fractions
    x_mpb: float
    boundary_offset: float  # x - x_MPB(T)
    boundary_distance: float  # |x - x_MPB(T)|
    curie_temperature: float  # K
    lattice: dict[str, tuple[float, ...]] = field(default_factory=dict)  # a,b,c (A), angles


def truth_at(x: float, temperature: float) -> MPBTruth:
    """The hidden truth (:class:`MPBTruth`) at composition x and temperature T (K)."""
    labels = truth_labels(np.array([x]), np.array([temperature]))
    lattice = lattice_parameters(np.array([x]), np.array([temperature]))[0]
    phase = int(labels["phase"][0])
    delta = float(boundary_offset(x, temperature))
    return MPBTruth(
        x=float(x),
        temperature=float(temperature),
        phase=phase,
        phase_name=PHASE_NAMES[phase],
        fractions=tuple(float(f) for f in phase_fractions(x, temperature)),
        x_mpb=float(mpb_composition(temperature)),
        boundary_offset=delta,
        boundary_distance=abs(delta),
        curie_temperature=float(curie_temperature(x)),
        lattice={name: tuple(lattice[i].tolist()) for i, name in enumerate(PHASE_NAMES[:N_PHASES])},
    )


class DiffractionImageSignal(ArraySignal):
    """The detector frame, whose data key also declares the geometry (:func:`poni_geometry`).

    The geometry comes from the parent detector's ``config``, so the event
    descriptor says where each pixel sits, as pyFAI's PONI parameters: any
    analysis can integrate the frame without knowing this simulator.
    """

    def describe(self) -> dict[str, dict[str, Any]]:
        """:class:`ArraySignal`'s data key plus ``geometry`` (PONI, SI units)."""
        description = super().describe()
        config = getattr(self.parent, "config", None)
        if config is not None:
            description[self.name]["geometry"] = poni_geometry(config)
        return description


class MPBDetector(Device):
    """Area detector (97 x 243 px) that diffracts the sample at the stage's position.

    ``trigger()`` renders one frame with :func:`generate_frames` (same code as
    :func:`simulate`) for the stage's current x and temperature.  Read key
    ``mpb_image`` (float32 counts, shape [97, 243]); configuration ``mpb_count_time``
    (s, 0.01-100).  Hidden truth: the ``truth`` property, and the omitted signals
    ``phase``, ``fractions``, ``boundary_distance`` (set their kind to 'normal' to
    record them).
    """

    image = Cpt(
        DiffractionImageSignal,
        value=np.zeros(DETECTOR_SHAPE, np.float32),
        units="counts",
        kind="normal",
    )
    count_time = Cpt(RangeSignal, value=1.0, limits=(0.01, 100.0), units="s", kind="config")
    phase = Cpt(Signal, value=-1, kind="omitted")
    fractions = Cpt(Signal, value=np.zeros(3), kind="omitted")
    boundary_distance = Cpt(Signal, value=0.0, kind="omitted")

    def __init__(
        self,
        prefix: str = "",
        *,
        stage: MPBStage,
        seed: int = 0,
        config: MPBConfig | None = None,
        name: str = "mpb",
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self._stage = stage
        self._config = config or MPBConfig()
        self._rng = np.random.default_rng(seed)

    @property
    def config(self) -> MPBConfig:
        """The instrument settings (geometry, wavelength, noise) this detector renders with."""
        return self._config

    @property
    def truth(self) -> MPBTruth:
        """Hidden truth at the stage's current composition and temperature."""
        return truth_at(self._stage.x.position, self._stage.temperature.position)

    def trigger(self) -> DeviceStatus:
        """Render one frame for the current stage position; returns a finished status."""
        x = np.array([self._stage.x.position])
        temperature = np.array([self._stage.temperature.position])
        config = replace(self._config, count_time=float(self.count_time.get()))
        frames, _ = generate_frames(x, temperature, self._rng, config)
        truth = self.truth
        self.image.put(frames[0])
        self.phase.put(truth.phase)
        self.fractions.put(np.array(truth.fractions))
        self.boundary_distance.put(truth.boundary_distance)
        status = DeviceStatus(self)
        status.set_finished()
        return status


def make_devices(seed: int = 0, config: MPBConfig | None = None) -> dict[str, Device]:
    """A ready-to-use sample stage (name 'sample') and detector (name 'mpb') sharing it."""
    stage = MPBStage(name="sample")
    detector = MPBDetector(stage=stage, seed=seed, config=config, name="mpb")
    return {"sample": stage, "mpb": detector}
