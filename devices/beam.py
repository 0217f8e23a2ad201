"""A beam-profile monitor: the simplest instrument with a peak to find.

A Gaussian beam lands on a 1-D strip detector and a 2-D camera; where it
lands follows a steering motor, and how much of it passes follows the motor
too (a Gaussian transmission, as through a slit scanned across the beam).
With Poisson counting noise. Used by the demo and by ``peak_stats``' tests,
where the truth is analytic.

Model, for motor position m (mm) and pixel position p (pixels)::

    centre(m)  = centre0 + drift * m                       pixels
    flux(m)    = peak_counts * exp(-(m - m0)^2 / (2 w^2))  counts at the peak pixel
    I(p; m)    = background + flux(m) * exp(-(p - centre(m))^2 / (2 sigma^2))

The 2-D camera uses the same centre along columns and ``centre_row`` along rows.
"""

from __future__ import annotations

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SynAxis, SynSignal

from smartlab_plugins.devices.signals import ArraySignal

GAUSSIAN_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def gaussian(positions: np.ndarray, centre: float, sigma: float, height: float) -> np.ndarray:
    """A Gaussian of ``height`` at ``centre`` with standard deviation ``sigma`` (same units)."""
    return height * np.exp(-((positions - centre) ** 2) / (2.0 * sigma**2))


class SynArraySignal(ArraySignal, SynSignal):
    """A SynSignal (value computed by a function on trigger) described like an ArraySignal."""


class BeamMonitor(Device):
    """1-D and 2-D images of a Gaussian beam steered by ``motor``.

    Read keys: ``<name>_profile`` (``pixels``,) float64 counts and
    ``<name>_image`` (``rows``, ``pixels``) float64 counts.
    """

    profile = Cpt(SynArraySignal, kind="hinted")
    image = Cpt(SynArraySignal, kind="normal")
    sigma = Cpt(Signal, value=6.0, kind="config")
    peak_counts = Cpt(Signal, value=1000.0, kind="config")
    background = Cpt(Signal, value=5.0, kind="config")

    def __init__(
        self,
        motor: SynAxis,
        *,
        name: str = "beam",
        pixels: int = 256,
        rows: int = 64,
        centre0: float = 128.0,
        drift: float = 10.0,
        centre_row: float = 32.0,
        transmission_centre: float = 0.0,
        transmission_width: float = 2.0,
        noise: bool = True,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self._motor = motor
        self.pixels, self.rows = pixels, rows
        self.centre0, self.drift, self.centre_row = centre0, drift, centre_row
        self.transmission_centre = transmission_centre
        self.transmission_width = transmission_width
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        self.profile.sim_set_func(self._profile)
        self.image.sim_set_func(self._image)
        self.profile.put(self._profile())
        self.image.put(self._image())

    def centre(self) -> float:
        """Where the beam lands now, in pixels along the strip."""
        return self.centre0 + self.drift * self._position()

    def flux(self) -> float:
        """Counts at the peak pixel for the current motor position, before noise."""
        offset = self._position() - self.transmission_centre
        return float(self.peak_counts.get()) * float(
            np.exp(-(offset**2) / (2.0 * self.transmission_width**2))
        )

    def trigger(self):
        self.image.trigger()
        return self.profile.trigger()

    def _position(self) -> float:
        return float(self._motor.position)

    def _profile(self) -> np.ndarray:
        positions = np.arange(self.pixels, dtype=float)
        clean = self.background.get() + gaussian(
            positions, self.centre(), self.sigma.get(), self.flux()
        )
        return self._counted(clean)

    def _image(self) -> np.ndarray:
        rows = gaussian(np.arange(self.rows, dtype=float), self.centre_row, self.sigma.get(), 1.0)
        cols = gaussian(np.arange(self.pixels, dtype=float), self.centre(), self.sigma.get(), 1.0)
        clean = self.background.get() + self.flux() * np.outer(rows, cols)
        return self._counted(clean)

    def _counted(self, expected: np.ndarray) -> np.ndarray:
        return self._rng.poisson(expected).astype(float) if self.noise else expected


def make_devices(seed: int = 0) -> dict[str, Device]:
    """A steering motor ``steer`` (mm) and the ``beam`` monitor that follows it."""
    steer = SynAxis(name="steer", labels={"motors"})
    beam = BeamMonitor(steer, name="beam", seed=seed, labels={"detectors"})
    return {"steer": steer, "beam": beam}
