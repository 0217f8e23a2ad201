"""Diffraction frames to (chi, q) cakes with pyFAI, for any declared detector geometry.

An area detector declares where its pixels sit as pyFAI PONI parameters
(``geometry: {dist, poni1, poni2, rot1, rot2, rot3, wavelength, pixel1, pixel2}``
in the frame's data key, SI units as pyFAI uses them). pyFAI's azimuthal
integration, the field's standard, regroups the pixels into bins of scattering
vector q and azimuth chi, so what the network sees no longer depends on the
detector distance, the beam centre, the pixel size or the wavelength: a ring is
at the same q on every instrument. Binning in q rather than 2-theta is what
makes the wavelength drop out (q = 4 pi sin(theta) / lambda).

pyFAI is imported on first use (about 1.5 s), in the worker's process only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

import numpy as np

GEOMETRY_KEYS: Final = ("dist", "poni1", "poni2", "rot1", "rot2", "rot3", "wavelength")
PIXEL_KEYS: Final = ("pixel1", "pixel2")
Q_RANGE: Final = (2.5, 4.6)  # 1/angstrom: the pseudo-cubic {111}, {200} and {220} rings
Q_BINS: Final = 336  # 0.00625 1/angstrom per bin, ~0.1 deg of 2-theta at Cu K-alpha
CHI_RANGE: Final = (-9.0, 9.0)  # deg of azimuth about the detector arm's plane
CHI_BINS: Final = 12
CAKE_SHAPE: Final = (CHI_BINS, Q_BINS)
WAVELENGTH_LIMITS: Final = (1e-11, 1e-9)  # m: 0.1 to 10 angstrom


def checked_geometry(declared: Mapping[str, Any], field: str) -> dict[str, float]:
    """The PONI parameters of ``declared``, as floats; ValueError naming what is wrong.

    Every key of :data:`GEOMETRY_KEYS` and :data:`PIXEL_KEYS` must be a finite
    number; the distance and pixel sizes positive, the wavelength 0.1-10 angstrom
    (in m, as pyFAI takes it: a value in angstrom is the usual slip).
    """
    missing = [key for key in (*GEOMETRY_KEYS, *PIXEL_KEYS) if key not in declared]
    if missing:
        raise ValueError(
            f"field {field!r} declares a geometry without {', '.join(missing)}; pyFAI PONI "
            f"parameters need {', '.join((*GEOMETRY_KEYS, *PIXEL_KEYS))} (m and rad)"
        )
    geometry: dict[str, float] = {}
    for key in (*GEOMETRY_KEYS, *PIXEL_KEYS):
        try:
            value = float(declared[key])
        except (TypeError, ValueError):
            raise ValueError(
                f"field {field!r}: geometry {key}={declared[key]!r} is not a number"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"field {field!r}: geometry {key}={value} is not finite")
        geometry[key] = value
    for key in ("dist", *PIXEL_KEYS):
        if geometry[key] <= 0:
            raise ValueError(f"field {field!r}: geometry {key}={geometry[key]} m must be > 0")
    low, high = WAVELENGTH_LIMITS
    if not low <= geometry["wavelength"] <= high:
        raise ValueError(
            f"field {field!r}: geometry wavelength={geometry['wavelength']} must be in metres "
            f"({low:g} to {high:g}, i.e. 0.1 to 10 angstrom)"
        )
    return geometry


@lru_cache(maxsize=64)
def _integrator(geometry: tuple[tuple[str, float], ...], shape: tuple[int, int]) -> Any:
    """A pyFAI azimuthal integrator for one geometry and frame shape (cached: its set-up)."""
    # silx warns at import that pyopencl is missing; the CPU (cython) engine is used here
    logging.getLogger("silx.opencl.common").setLevel(logging.ERROR)
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    values = dict(geometry)
    detector = Detector(pixel1=values["pixel1"], pixel2=values["pixel2"], max_shape=shape)
    return AzimuthalIntegrator(detector=detector, **{k: values[k] for k in GEOMETRY_KEYS})


def cakes(frames: np.ndarray, geometry: Mapping[str, float]) -> np.ndarray:
    """Frames (n, rows, cols) in counts to cakes (n, 12, 336): mean counts per (chi, q) bin.

    Solid angle and polarisation are not corrected: the network learnt the raw
    ring intensities. Bins that no pixel reaches are NaN.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3:
        raise ValueError(f"expected frames of shape (n, rows, cols), got {frames.shape}")
    key = tuple(sorted((k, float(v)) for k, v in geometry.items()))
    integrator = _integrator(key, tuple(frames.shape[1:]))
    out = np.empty((len(frames), *CAKE_SHAPE), dtype=np.float32)
    for i, frame in enumerate(frames):
        result = integrator.integrate2d_ng(
            frame,
            Q_BINS,
            CHI_BINS,
            unit="q_A^-1",
            radial_range=Q_RANGE,
            azimuth_range=CHI_RANGE,
            correctSolidAngle=False,
            method=("bbox", "csr", "cython"),
        )
        cake = np.asarray(result.intensity, dtype=np.float32)
        empty = np.asarray(result.count) <= 0
        cake[empty] = np.nan
        out[i] = cake
    return out
