"""Inelastic neutron scattering from spin waves: a simulated chopper spectrometer.

The sample is a two-dimensional square-lattice Heisenberg antiferromagnet with
spin S = 5/2 and in-plane lattice constant a = 4.2 Å (Rb2MnF4-like), described by

    H = J1 Σ_<ij> S_i·S_j + J2 Σ_<<ik>> S_i·S_k - D Σ_i (S_i^z)²

with every bond counted once, J1 > 0 (antiferromagnetic nearest neighbours), J2 > 0
(antiferromagnetic, frustrating next-nearest neighbours) and D > 0 (easy axis).
Linear spin-wave theory (LSWT) about the Néel state gives, with
gamma1(k) = (cos kx a + cos ky a)/2 and gamma2(k) = cos kx a · cos ky a,

    A(k) = S [4 J1 - 4 J2 (1 - gamma2(k)) + 2 D],   B(k) = 4 S J1 gamma1(k),
    ħω(k) = sqrt(A² - B²),   anisotropy gap Δ = 2 S sqrt(D (4 J1 + D)),

and a transverse spin-correlation weight S (A - B)/ω per mode. A detector
returns counts in S(|Q|, E) maps of shape (96, 160): the powder average of the
spin-wave spectrum over all orientations of Q (the 2-D spectrum depends on
Q_par = |Q| sin θ only, θ the angle between Q and c: the Warren line shape),
with the polarisation factor 1 + cos²θ of moments along c, times the Mn2+ form
factor, the Bose factor, kf/ki and a Gaussian energy resolution, plus a flat
background and a resolution-broadened incoherent elastic line, with Poisson
counting noise. ``SpinWaveConfig(average="in_plane")`` instead averages Q over
directions in the layer plane only (a c-axis-aligned sample). Bins outside the
kinematic range of a direct-geometry spectrometer are zero.

The same functions make the training sets (:func:`simulate`) and the data that
:class:`SpinWaveSpectrometer` returns when a RunEngine triggers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus
from scipy.special import ndtr

from smartlab_plugins.devices.dataset import SimulatedSet, config_dict
from smartlab_plugins.devices.signals import ArraySignal, LimitedPositioner

CASE = "ins"
K_B = 0.08617333262  # Boltzmann constant, meV/K
E_PER_K2 = 2.0721247  # neutron energy E = ħ²k²/2m, meV per Å^-2
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

EI_LIMITS = (5.0, 50.0)  # incident energy, meV
TEMPERATURE_LIMITS = (1.5, 300.0)  # sample temperature, K
COUNTING_TIME_LIMITS = (1.0, 3600.0)  # counting time, s

# Analytic <j0>(s) of Mn2+ (International Tables for Crystallography C, 4.4.5):
# <j0> = A exp(-a s²) + B exp(-b s²) + C exp(-c s²) + D, with s = |Q| / 4π in Å^-1.
MN2_J0 = (0.4220, 17.684, 0.5948, 6.005, 0.0043, -0.609, -0.0219)

#: The orientational averages of ``SpinWaveConfig.average``: "powder", over all directions of Q
#: (a powder sample); "in_plane", over directions in the layer plane (a c-axis-aligned sample).
AVERAGES = ("powder", "in_plane")


@dataclass(frozen=True)
class SpinWaveConfig:
    """Generator settings, the instrument defaults and the ranges of the hidden truth.

    Units: energies meV, |Q| Å^-1, lengths Å, temperature K, time s, angles
    degrees, rates counts per second per (|Q|, E) bin. Hidden truth is drawn
    uniformly from ``j1_range`` * ``j2_range`` * ``d_range`` restricted to
    J2/J1 ≤ ``max_j2_over_j1`` (rejection sampling, so uniform on that region).
    ``average`` is one of :data:`AVERAGES`: ``"powder"`` (default), the average over
    all orientations of Q of a powder sample; ``"in_plane"``, Q in the layer plane
    only, as for a c-axis-aligned sample (the default before the powder average
    was added; its maps are unchanged bit for bit).
    """

    n_q: int = 96  # number of |Q| bins
    q_min: float = 0.3  # lower edge of the first |Q| bin, Å^-1
    q_max: float = 3.0  # upper edge of the last |Q| bin, Å^-1
    n_e: int = 160  # number of energy-transfer bins
    e_min: float = 0.2  # lower edge of the first energy bin, meV
    e_max: float = 16.2  # upper edge of the last energy bin, meV
    spin: float = 2.5  # spin length S of Mn2+
    lattice_a: float = 4.2  # in-plane lattice constant a, Å
    ei: float = 20.0  # incident energy Ei, meV
    temperature: float = 5.0  # sample temperature, K
    counting_time: float = 600.0  # counting time, s
    resolution_fraction: float = 0.03  # Gaussian energy-resolution FWHM / Ei
    two_theta_min: float = 3.0  # smallest detector scattering angle, degrees
    two_theta_max: float = 135.0  # largest detector scattering angle, degrees
    signal_rate: float = 2.0  # magnetic counts/s per unit of binned ⟨(n+1) S (A-B)/ω F² P⟩ kf/ki
    background_rate: float = 0.02  # flat background, counts/s/bin
    elastic_rate: float = 20.0  # energy-integrated incoherent elastic line, counts/s per |Q| bin
    average: str = "powder"  # "powder": all Q directions (3-D); "in_plane": Q in the ab plane
    n_phi: int = 24  # in-plane Q directions in [0, π/4] (D4 symmetry gives the full circle)
    n_q_sub: int = 2  # |Q| samples per |Q| bin (and Q_par grid points per bin width, powder)
    n_theta: int = 512  # cos θ midpoints in [0, 1] for the powder average (precomputed once)
    batch_size: int = 256  # samples per vectorised batch in simulate()
    j1_range: tuple[float, float] = (0.4, 1.2)  # nearest-neighbour exchange J1, meV
    j2_range: tuple[float, float] = (0.06, 0.24)  # next-nearest-neighbour exchange J2, meV
    d_range: tuple[float, float] = (0.02, 0.15)  # single-ion anisotropy D, meV
    max_j2_over_j1: float = 0.3  # keeps the Néel state stable (classically J2/J1 < 0.5)

    def __post_init__(self) -> None:
        _check_range("ei", self.ei, EI_LIMITS, "meV")
        _check_range("temperature", self.temperature, TEMPERATURE_LIMITS, "K")
        _check_range("counting_time", self.counting_time, COUNTING_TIME_LIMITS, "s")
        if not 0.0 < self.max_j2_over_j1 < 0.5:
            raise ValueError(
                f"max_j2_over_j1={self.max_j2_over_j1} must lie in (0, 0.5) for a stable Néel state"
            )
        if self.j1_range[0] <= 0 or self.d_range[0] <= 0 or self.j2_range[0] < 0:
            raise ValueError(
                "expected j1_range and d_range above 0 and j2_range at or above 0, got "
                f"{self.j1_range}, {self.d_range}, {self.j2_range}"
            )
        if self.j2_range[0] > self.max_j2_over_j1 * self.j1_range[1]:
            raise ValueError("j2_range lies entirely above max_j2_over_j1 * J1; nothing to draw")
        if self.average not in AVERAGES:
            raise ValueError(f"average={self.average!r} is not one of {AVERAGES}")
        if min(self.n_phi, self.n_q_sub, self.n_theta) < 1:
            raise ValueError(
                f"n_phi, n_q_sub and n_theta must be at least 1, got "
                f"{self.n_phi}, {self.n_q_sub}, {self.n_theta}"
            )


def _check_range(name: str, value: float, limits: tuple[float, float], unit: str) -> None:
    """Raise a ValueError naming ``name`` when ``value`` lies outside ``limits``."""
    lo, hi = limits
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value} {unit} is out of range; expected {lo} to {hi} {unit}")


# ---------------------------------------------------------------- axes and geometry


def q_edges(config: SpinWaveConfig) -> np.ndarray:
    """|Q| bin edges in Å^-1, shape (n_q + 1,)."""
    return np.linspace(config.q_min, config.q_max, config.n_q + 1)


def e_edges(config: SpinWaveConfig) -> np.ndarray:
    """Energy-transfer bin edges in meV, shape (n_e + 1,)."""
    return np.linspace(config.e_min, config.e_max, config.n_e + 1)


def _centres(edges: np.ndarray) -> np.ndarray:
    """Bin centres from bin edges."""
    return 0.5 * (edges[1:] + edges[:-1])


def q_axis(config: SpinWaveConfig) -> np.ndarray:
    """|Q| bin centres in Å^-1, shape (n_q,)."""
    return _centres(q_edges(config))


def energy_axis(config: SpinWaveConfig) -> np.ndarray:
    """Energy-transfer bin centres in meV, shape (n_e,)."""
    return _centres(e_edges(config))


#: Units of the map's axes, as the device's data key declares them (see :func:`map_axes`).
AXIS_UNITS = {"q": "1/angstrom", "energy": "meV"}


def map_axes(config: SpinWaveConfig) -> dict[str, Any]:
    """The ``dims`` and ``coords`` that the data key of a counts map declares.

    ``{"dims": ["q", "energy"], "coords": {"q": {"values": [...], "units": "1/angstrom"},
    "energy": {"values": [...], "units": "meV"}}}``: the map's axes in order (|Q| bins,
    energy-transfer bins), and per axis the bin centres (plain floats, one per bin:
    ``n_q`` and ``n_e`` of them) with their units. The bins are contiguous and
    equally wide, so their edges lie halfway between neighbouring centres.
    """
    centres = {"q": q_axis(config), "energy": energy_axis(config)}
    return {
        "dims": list(AXIS_UNITS),
        "coords": {
            name: {"values": [round(float(v), 9) for v in centres[name]], "units": units}
            for name, units in AXIS_UNITS.items()
        },
    }


def _q_sub(config: SpinWaveConfig) -> np.ndarray:
    """``n_q_sub`` equally spaced |Q| values (midpoints) inside each |Q| bin, (n_q, n_q_sub)."""
    edges = q_edges(config)
    frac = (np.arange(config.n_q_sub) + 0.5) / config.n_q_sub
    return edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * frac[None, :]


def _phi(config: SpinWaveConfig) -> np.ndarray:
    """``n_phi`` in-plane directions φ in [0, π/4] (midpoint rule), radians."""
    return (np.arange(config.n_phi) + 0.5) * (np.pi / 4.0) / config.n_phi


def in_plane_points(config: SpinWaveConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-plane wavevectors that sample the circular |Q| average of every |Q| bin.

    Returns (qx, qy, |Q|) in Å^-1, each of shape (n_q, n_q_sub * n_phi): ``n_q_sub``
    equally spaced |Q| values inside each bin times ``n_phi`` directions φ in
    [0, π/4] (midpoint rule). The square lattice's D4 symmetry makes the average
    over [0, π/4] equal to the average over the full circle.
    """
    q_sub = _q_sub(config)
    phi = _phi(config)
    q = np.repeat(q_sub, config.n_phi, axis=1)
    phis = np.tile(phi, config.n_q_sub)[None, :]
    return q * np.cos(phis), q * np.sin(phis), q


def q_par_grid(config: SpinWaveConfig) -> np.ndarray:
    """In-plane |Q_par| grid of the powder average, Å^-1: 0, h, 2h, ... past the largest |Q|.

    h = |Q| bin width / ``n_q_sub``; shape (n_par,).
    """
    step = (config.q_max - config.q_min) / (config.n_q * config.n_q_sub)
    n_par = int(np.floor(float(_q_sub(config).max()) / step)) + 2
    return np.arange(n_par) * step


def powder_points(config: SpinWaveConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-plane wavevectors at which the config's average evaluates the spin waves.

    ``"in_plane"``: :func:`in_plane_points`, rows = |Q| bins. ``"powder"``: the
    Q_par grid (:func:`q_par_grid`) times ``n_phi`` directions φ in [0, π/4], each
    of shape (n_par, n_phi), rows = Q_par points; :func:`powder_matrix` carries
    them to the |Q| bins. Returns (qx, qy, row magnitude) in Å^-1.
    """
    if config.average == "in_plane":
        return in_plane_points(config)
    q_par = q_par_grid(config)[:, None]
    phi = _phi(config)[None, :]
    q = np.repeat(q_par, config.n_phi, axis=1)
    return q * np.cos(phi), q * np.sin(phi), q


def powder_matrix(config: SpinWaveConfig) -> np.ndarray:
    """Weights W (n_q, n_par) of the 3-D powder average: map(|Q| bin) = Σ_k W[., k] S2D(Q_par,k).

    S2D is the φ-averaged spectrum at the Q_par grid points. For each of the
    ``n_q_sub`` |Q| values q of a bin and ``n_theta`` midpoints u = cos θ in [0, 1]
    (uniform in cos θ is uniform over the sphere), Q_par = q sqrt(1 - u²) is
    spread linearly over its two neighbouring grid points with weight
    F(q)² (1 + u²) / (n_q_sub n_theta): the Mn2+ form factor and the polarisation
    factor (1 - Q̂x²) + (1 - Q̂y²) = 1 + cos²θ of transverse spin waves about moments
    along c, which is 1 for Q in the plane (θ = 90°).
    """
    grid = q_par_grid(config)
    step = float(grid[1])
    q = _q_sub(config)  # (n_q, n_q_sub)
    u = (np.arange(config.n_theta) + 0.5) / config.n_theta
    q_par = q[:, :, None] * np.sqrt(1.0 - u * u)[None, None, :]
    weight = mn2_form_factor(q)[:, :, None] ** 2 * (1.0 + u * u)[None, None, :]
    weight /= config.n_q_sub * config.n_theta
    pos = q_par / step
    k0 = np.floor(pos).astype(np.int64)
    frac = pos - k0
    row = np.arange(config.n_q, dtype=np.int64)[:, None, None] * len(grid)
    index = np.concatenate([(row + k0).ravel(), (row + k0 + 1).ravel()])
    values = np.concatenate([(weight * (1.0 - frac)).ravel(), (weight * frac).ravel()])
    flat = np.bincount(index, weights=values, minlength=config.n_q * len(grid))
    return flat.reshape(config.n_q, len(grid))


def kinematic_mask(
    q: np.ndarray, e: np.ndarray, ei: float, two_theta_min: float, two_theta_max: float
) -> np.ndarray:
    """True where (|Q| in Å^-1, E in meV) is reachable by a direct-geometry spectrometer.

    With ki² = Ei / 2.0721, kf² = (Ei - E) / 2.0721 and detectors between
    ``two_theta_min`` and ``two_theta_max`` (degrees), |Q|² = ki² + kf² - 2 ki kf cos 2θ.
    Returns a boolean array of shape (len(q), len(e)).
    """
    ki = np.sqrt(ei / E_PER_K2)
    kf = np.sqrt(np.clip(ei - e, 0.0, None) / E_PER_K2)
    cos_min, cos_max = np.cos(np.radians([two_theta_min, two_theta_max]))
    q_lo = np.sqrt(ki**2 + kf**2 - 2.0 * ki * kf * cos_min)
    q_hi = np.sqrt(ki**2 + kf**2 - 2.0 * ki * kf * cos_max)
    inside = (q[:, None] >= q_lo[None, :]) & (q[:, None] <= q_hi[None, :])
    return inside & (e < ei)[None, :]


def kf_over_ki(e: np.ndarray, ei: float) -> np.ndarray:
    """The kf/ki factor of the double-differential cross-section (0 where E ≥ Ei)."""
    return np.sqrt(np.clip(1.0 - e / ei, 0.0, None))


# ---------------------------------------------------------------- physics


def mn2_form_factor(q: np.ndarray) -> np.ndarray:
    """Magnetic form factor <j0>(|Q|) of Mn2+ (dimensionless) for |Q| in Å^-1."""
    a, aa, b, bb, c, cc, d = MN2_J0
    s2 = (np.asarray(q) / (4.0 * np.pi)) ** 2
    return a * np.exp(-aa * s2) + b * np.exp(-bb * s2) + c * np.exp(-cc * s2) + d


def lattice_sums(qx: np.ndarray, qy: np.ndarray, lattice_a: float) -> tuple[np.ndarray, np.ndarray]:
    """gamma1 = (cos qx a + cos qy a)/2 and gamma2 = cos qx a · cos qy a (q in Å^-1, a in Å)."""
    cx, cy = np.cos(qx * lattice_a), np.cos(qy * lattice_a)
    return 0.5 * (cx + cy), cx * cy


def lswt_ab(
    gamma1: np.ndarray,
    gamma2: np.ndarray,
    j1: np.ndarray,
    j2: np.ndarray,
    d: np.ndarray,
    spin: float,
) -> tuple[np.ndarray, np.ndarray]:
    """LSWT coefficients A(k), B(k) in meV of the Néel state (arrays broadcast).

    A = S [4 J1 - 4 J2 (1 - gamma2) + 2 D] and B = 4 S J1 gamma1 for H = J1 Σ S·S + J2 Σ S·S
    - D Σ (S^z)², bonds counted once, exchanges and D in meV.
    """
    a = spin * (4.0 * j1 - 4.0 * j2 * (1.0 - gamma2) + 2.0 * d)
    return a, 4.0 * spin * j1 * gamma1


def dispersion(
    qx: np.ndarray,
    qy: np.ndarray,
    j1: np.ndarray,
    j2: np.ndarray,
    d: np.ndarray,
    spin: float = 2.5,
    lattice_a: float = 4.2,
) -> np.ndarray:
    """Spin-wave energy ħω(Q) = sqrt(A² - B²) in meV at in-plane Q = (qx, qy) in Å^-1."""
    g1, g2 = lattice_sums(np.asarray(qx), np.asarray(qy), lattice_a)
    a, b = lswt_ab(g1, g2, j1, j2, d, spin)
    return np.sqrt(np.clip(a * a - b * b, 0.0, None))


def anisotropy_gap(j1: np.ndarray, d: np.ndarray, spin: float = 2.5) -> np.ndarray:
    """Spin-wave gap Δ = ω at the zone centre and the AF point = 2S sqrt(D (4 J1 + D)), meV."""
    return 2.0 * spin * np.sqrt(d * (4.0 * j1 + d))


def band_top(j1: np.ndarray, j2: np.ndarray, d: np.ndarray, spin: float = 2.5) -> np.ndarray:
    """Top of the spin-wave band, ω at (π/2a, π/2a) = S (4 J1 - 4 J2 + 2 D), meV.

    This is the band maximum for 0 ≤ J2/J1 ≤ 0.3 (checked numerically in the tests).
    """
    return spin * (4.0 * j1 - 4.0 * j2 + 2.0 * d)


def spin_wave_velocity(
    j1: np.ndarray, j2: np.ndarray, d: np.ndarray, spin: float = 2.5, lattice_a: float = 4.2
) -> np.ndarray:
    """Velocity ħv in meV·Å of ω² = Δ² + (ħv q)² near the AF point.

    (ħv)² = S² a² (8 J1² - 16 J1 J2 - 8 J2 D), from expanding A² - B² to order q².
    """
    return spin * lattice_a * np.sqrt(8.0 * j1**2 - 16.0 * j1 * j2 - 8.0 * j2 * d)


def bose_factor(e: np.ndarray, temperature: float) -> np.ndarray:
    """n(E) + 1 = 1 / (1 - exp(-E / kB T)) for energy loss E > 0 in meV, T in K."""
    return -1.0 / np.expm1(-np.asarray(e) / (K_B * temperature))


def resolution_fwhm(ei: float, fraction: float) -> float:
    """Gaussian energy-resolution FWHM in meV: a fixed ``fraction`` of Ei (meV)."""
    return fraction * ei


def resolution_matrix(fine: np.ndarray, edges: np.ndarray, sigma: float) -> np.ndarray:
    """Probability that a mode at each ``fine`` energy is recorded in each energy bin.

    A Gaussian of standard deviation ``sigma`` (meV) integrated over the bins with
    ``edges`` (meV); shape (len(fine), len(edges) - 1).
    """
    cdf = ndtr((edges[None, :] - fine[:, None]) / sigma)
    return np.diff(cdf, axis=1)


# ---------------------------------------------------------------- the instrument model


@dataclass(frozen=True)
class _Geometry:
    """Precomputed, truth-independent pieces of the S(|Q|, E) model for one setting."""

    gamma1: np.ndarray  # (rows, m): rows = n_q |Q| bins (in_plane) or n_par Q_par points (powder)
    gamma2: np.ndarray  # (rows, m)
    form2: np.ndarray | None  # (n_q, m), squared form factor (in_plane; powder: in projection)
    projection: np.ndarray | None  # (n_q, n_par) powder_matrix (powder), None (in_plane)
    fine_step: float  # meV, spacing of the deposit grid
    n_fine: int
    resolution: np.ndarray  # (n_fine, n_e)
    kf_ki: np.ndarray  # (n_e,)
    mask: np.ndarray  # (n_q, n_e) boolean
    elastic: np.ndarray  # (n_e,), fraction of the elastic line in each bin


def _geometry(config: SpinWaveConfig, ei: float) -> _Geometry:
    """Precompute lattice sums, form factor, resolution and mask for incident energy ``ei``."""
    qx, qy, q = powder_points(config)
    g1, g2 = lattice_sums(qx, qy, config.lattice_a)
    powder = config.average == "powder"
    edges = e_edges(config)
    sigma = resolution_fwhm(ei, config.resolution_fraction) / FWHM_PER_SIGMA
    step = min(float(edges[1] - edges[0]), 0.5 * sigma)
    n_fine = int(np.ceil((config.e_max + 6.0 * sigma) / step)) + 2
    fine = np.arange(n_fine) * step
    return _Geometry(
        gamma1=g1.astype(np.float32),
        gamma2=g2.astype(np.float32),
        form2=None if powder else (mn2_form_factor(q) ** 2).astype(np.float32),
        projection=powder_matrix(config).astype(np.float32) if powder else None,
        fine_step=step,
        n_fine=n_fine,
        resolution=resolution_matrix(fine, edges, sigma).astype(np.float32),
        kf_ki=kf_over_ki(energy_axis(config), ei),
        mask=kinematic_mask(
            q_axis(config), energy_axis(config), ei, config.two_theta_min, config.two_theta_max
        ),
        elastic=resolution_matrix(np.zeros(1), edges, sigma)[0],
    )


def _deposit(energy: np.ndarray, weight: np.ndarray, step: float, n_fine: int) -> np.ndarray:
    """Histogram modes onto a fine energy grid by linear interpolation between grid points.

    ``energy`` and ``weight`` have shape (nb, n_q, m); returns (nb, n_q, n_fine).
    Modes beyond the grid are dropped.
    """
    nb, n_q, _ = energy.shape
    pos = energy / step
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    keep = i0 < n_fine - 1
    i0 = np.where(keep, i0, 0)
    weight = np.where(keep, weight, 0.0)
    row = (np.arange(nb * n_q, dtype=np.int64) * n_fine).reshape(nb, n_q, 1)
    index = np.concatenate([(row + i0).ravel(), (row + i0 + 1).ravel()])
    values = np.concatenate([(weight * (1.0 - frac)).ravel(), (weight * frac).ravel()])
    hist = np.bincount(index, weights=values, minlength=nb * n_q * n_fine)
    return hist.reshape(nb, n_q, n_fine)


def _magnetic(
    geometry: _Geometry,
    j1: np.ndarray,
    j2: np.ndarray,
    d: np.ndarray,
    temperature: float,
    spin: float,
) -> np.ndarray:
    """Orientation-averaged, resolution-broadened ⟨(n+1) S (A-B)/ω F² P⟩ kf/ki, (nb, n_q, n_e).

    P is the polarisation factor 1 + cos²θ (powder; 1 for the in-plane average).
    The powder average lays the modes out as (n_par, nb, m), so that carrying the
    Q_par histograms to the |Q| bins is one matrix product with the projection.
    """
    powder = geometry.projection is not None
    shape = (1, -1, 1) if powder else (-1, 1, 1)
    j1, j2, d = (np.reshape(x, shape).astype(np.float32) for x in (j1, j2, d))
    axis = 1 if powder else 0
    gamma1, gamma2 = (np.expand_dims(g, axis) for g in (geometry.gamma1, geometry.gamma2))
    a, b = lswt_ab(gamma1, gamma2, j1, j2, d, spin)
    a_minus_b = np.clip(a - b, 1e-9, None)
    a_plus_b = np.clip(a + b, 1e-9, None)
    omega = np.sqrt(a_minus_b * a_plus_b)
    weight = np.sqrt(a_minus_b / a_plus_b) * bose_factor(omega, temperature)
    if powder:
        weight *= np.float32(spin / geometry.gamma1.shape[1])
    else:
        weight *= geometry.form2[None] * np.float32(spin / geometry.gamma1.shape[1])
    hist = _deposit(omega, weight, geometry.fine_step, geometry.n_fine).astype(np.float32)
    if powder:  # (n_par, nb, n_fine) -> (n_q, nb, n_fine): the 3-D average over θ
        n_par, nb, n_fine = hist.shape
        hist = (geometry.projection @ hist.reshape(n_par, nb * n_fine)).reshape(-1, nb, n_fine)
        binned = hist.reshape(-1, n_fine) @ geometry.resolution
        return binned.reshape(-1, nb, binned.shape[1]).transpose(1, 0, 2) * geometry.kf_ki
    binned = hist.reshape(-1, geometry.n_fine) @ geometry.resolution
    return binned.reshape(hist.shape[0], hist.shape[1], -1) * geometry.kf_ki


def expected_counts(
    j1: np.ndarray,
    j2: np.ndarray,
    d: np.ndarray,
    ei: float,
    temperature: float,
    counting_time: float,
    config: SpinWaveConfig,
) -> np.ndarray:
    """Noise-free mean counts per (|Q|, E) bin, shape (n, n_q, n_e), float64.

    Mean counts = counting_time * [signal_rate * magnetic + background_rate +
    elastic_rate * (resolution-broadened line at E = 0)] in the kinematically
    accessible bins, 0 elsewhere. ``j1``, ``j2``, ``d`` are 1-D arrays in meV.
    """
    geometry = _geometry(config, ei)
    return _counts_from(geometry, j1, j2, d, temperature, counting_time, config)


def _counts_from(
    geometry: _Geometry,
    j1: np.ndarray,
    j2: np.ndarray,
    d: np.ndarray,
    temperature: float,
    counting_time: float,
    config: SpinWaveConfig,
) -> np.ndarray:
    """Mean counts from a precomputed geometry (see :func:`expected_counts`)."""
    magnetic = _magnetic(geometry, j1, j2, d, temperature, config.spin)
    rate = config.signal_rate * magnetic + config.background_rate
    rate += config.elastic_rate * geometry.elastic
    return counting_time * rate * geometry.mask


def measure(
    j1: np.ndarray,
    j2: np.ndarray,
    d: np.ndarray,
    rng: np.random.Generator,
    config: SpinWaveConfig,
    ei: float | None = None,
    temperature: float | None = None,
    counting_time: float | None = None,
) -> np.ndarray:
    """Poisson-noisy counts maps, float32 of shape (n, n_q, n_e), in batches of ``batch_size``.

    The settings default to the config's; this one function serves both
    :func:`simulate` and the device's ``trigger()``.
    """
    ei = config.ei if ei is None else ei
    temperature = config.temperature if temperature is None else temperature
    counting_time = config.counting_time if counting_time is None else counting_time
    _check_range("ei", ei, EI_LIMITS, "meV")
    _check_range("temperature", temperature, TEMPERATURE_LIMITS, "K")
    _check_range("counting_time", counting_time, COUNTING_TIME_LIMITS, "s")
    geometry = _geometry(config, ei)
    j1, j2, d = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (j1, j2, d))
    out = np.empty((len(j1), config.n_q, config.n_e), dtype=np.float32)
    for start in range(0, len(j1), config.batch_size):
        part = slice(start, start + config.batch_size)
        lam = _counts_from(
            geometry, j1[part], j2[part], d[part], temperature, counting_time, config
        )
        out[part] = rng.poisson(lam)
    return out


def check_truth(j1: float, j2: float, d: float) -> None:
    """Raise a ValueError unless (J1, J2, D) in meV gives a stable, gapped Néel state."""
    if not (j1 > 0 and d > 0 and 0 <= j2 < 0.5 * j1):
        raise ValueError(
            f"(J1, J2, D) = ({j1}, {j2}, {d}) meV is not a gapped Néel state; "
            "expected J1 > 0, D > 0 and 0 ≤ J2 < J1/2"
        )


def draw_truth(n: int, rng: np.random.Generator, config: SpinWaveConfig) -> dict[str, np.ndarray]:
    """Draw ``n`` hidden (J1, J2, D) in meV uniformly from the config's allowed region."""
    lo = np.array([config.j1_range[0], config.j2_range[0], config.d_range[0]])
    hi = np.array([config.j1_range[1], config.j2_range[1], config.d_range[1]])
    found: list[np.ndarray] = []
    count = 0
    while count < n:
        draws = rng.uniform(lo, hi, size=(2 * n + 16, 3))
        draws = draws[draws[:, 1] <= config.max_j2_over_j1 * draws[:, 0]]
        found.append(draws)
        count += len(draws)
    params = np.concatenate(found)[:n]
    return {"j1": params[:, 0], "j2": params[:, 1], "d": params[:, 2]}


def simulate(n: int, seed: int = 0, config: SpinWaveConfig | None = None) -> SimulatedSet:
    """``n`` labelled S(|Q|, E) counts maps at the config's Ei, temperature and counting time.

    inputs: ``sqw`` float32 (n, n_q, n_e) counts; labels: ``j1``, ``j2``, ``d`` in meV
    (float32); coords: ``q`` (Å^-1) and ``energy`` (meV) bin centres.
    """
    config = SpinWaveConfig() if config is None else config
    rng = np.random.default_rng(seed)
    truth = draw_truth(n, rng, config)
    maps = measure(truth["j1"], truth["j2"], truth["d"], rng, config)
    return SimulatedSet(
        case=CASE,
        seed=seed,
        inputs={"sqw": maps},
        labels={key: value.astype(np.float32) for key, value in truth.items()},
        coords={"q": q_axis(config), "energy": energy_axis(config)},
        units={
            "sqw": "counts",
            "j1": "meV",
            "j2": "meV",
            "d": "meV",
            "q": "1/angstrom",
            "energy": "meV",
        },
        config=config_dict(config),
    )


# ---------------------------------------------------------------- ophyd devices


class MapSignal(ArraySignal):
    """The counts map, whose data key also declares its axes (:func:`map_axes`).

    The axes come from the parent spectrometer's ``config``, so the event
    descriptor says which |Q| and energy each bin of the map stands for.
    """

    def describe(self) -> dict[str, dict[str, Any]]:
        """:class:`ArraySignal`'s data key plus ``dims`` and ``coords`` of the map."""
        description = super().describe()
        config = getattr(self.parent, "config", None)
        if config is not None:
            description[self.name].update(map_axes(config))
        return description


class SpinWaveSample(Device):
    """The sample, holding the hidden exchange constants (J1, J2, D) in meV.

    The signals are of kind 'omitted', so they stay out of ``read()`` unless a user
    sets e.g. ``sample.j1.kind = "normal"``. Change them with :meth:`set_truth`.
    """

    j1 = Cpt(Signal, value=0.8, kind="omitted")
    j2 = Cpt(Signal, value=0.1, kind="omitted")
    d = Cpt(Signal, value=0.08, kind="omitted")

    def set_truth(self, j1: float, j2: float, d: float) -> None:
        """Set the hidden (J1, J2, D) in meV after checking they make a gapped Néel state."""
        check_truth(j1, j2, d)
        self.j1.put(float(j1))
        self.j2.put(float(j2))
        self.d.put(float(d))

    @property
    def truth(self) -> dict[str, float]:
        """The hidden (J1, J2, D) in meV."""
        return {"j1": self.j1.get(), "j2": self.j2.get(), "d": self.d.get()}


class SpinWaveSpectrometer(Device):
    """A direct-geometry chopper spectrometer measuring S(|Q|, E) of a 2D antiferromagnet.

    Settings: ``ei`` (meV), ``temperature`` (K) and ``counting_time`` (s), positioners
    that refuse out-of-range targets. Triggering computes a Poisson-noisy counts map
    ``sqw`` (read key ``<name>_sqw``, float32, shape (n_q, n_e)) with the same code
    as :func:`simulate`; its data key declares the axes, ``dims`` ["q", "energy"]
    and ``coords`` (bin centres in 1/angstrom and meV, :func:`map_axes`). The hidden
    truth is drawn from the config ranges with ``seed`` unless ``truth`` = (J1, J2, D)
    is given.
    """

    ei = Cpt(LimitedPositioner, limits=EI_LIMITS, egu="meV", init_pos=20.0)
    temperature = Cpt(LimitedPositioner, limits=TEMPERATURE_LIMITS, egu="K", init_pos=5.0)
    counting_time = Cpt(LimitedPositioner, limits=COUNTING_TIME_LIMITS, egu="s", init_pos=600.0)
    sqw = Cpt(MapSignal, kind="hinted", units="counts")
    sample = Cpt(SpinWaveSample)

    def __init__(
        self,
        *args: Any,
        name: str = "ins",
        seed: int = 0,
        config: SpinWaveConfig | None = None,
        truth: tuple[float, float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, name=name, **kwargs)
        self.config = SpinWaveConfig() if config is None else config
        self._rng = np.random.default_rng(seed)
        drawn = draw_truth(1, self._rng, self.config)
        values = truth if truth is not None else tuple(drawn[k][0] for k in ("j1", "j2", "d"))
        self.sample.set_truth(*values)
        for positioner, value in (
            (self.ei, self.config.ei),
            (self.temperature, self.config.temperature),
            (self.counting_time, self.config.counting_time),
        ):
            positioner.set(value)
        self.sqw.put(np.zeros((self.config.n_q, self.config.n_e), dtype=np.float32))

    @property
    def q_axis(self) -> np.ndarray:
        """|Q| bin centres in Å^-1."""
        return q_axis(self.config)

    @property
    def energy_axis(self) -> np.ndarray:
        """Energy-transfer bin centres in meV."""
        return energy_axis(self.config)

    def settings(self) -> dict[str, float]:
        """The current Ei (meV), temperature (K) and counting time (s)."""
        return {
            "ei": float(self.ei.position),
            "temperature": float(self.temperature.position),
            "counting_time": float(self.counting_time.position),
        }

    def trigger(self) -> DeviceStatus:
        """Compute one counts map at the current settings; returns a finished status."""
        truth = self.sample.truth
        check_truth(truth["j1"], truth["j2"], truth["d"])
        counts = measure(
            truth["j1"], truth["j2"], truth["d"], self._rng, self.config, **self.settings()
        )
        self.sqw.put(counts[0])
        status = DeviceStatus(self)
        status.set_finished()
        return status


def make_devices(seed: int = 0) -> dict[str, Device]:
    """Ready-to-use instruments keyed by name: ``{"ins": SpinWaveSpectrometer}``."""
    return {"ins": SpinWaveSpectrometer(name="ins", seed=seed)}
