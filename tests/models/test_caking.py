"""Frames to (chi, q) cakes through pyFAI: declared geometry checked, instruments made alike."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from smartlab_plugins.devices import mpb
from smartlab_plugins.models import caking, phase


def test_a_geometry_missing_a_parameter_or_in_angstrom_is_refused_by_name() -> None:
    geometry = mpb.poni_geometry(mpb.MPBConfig())
    assert caking.checked_geometry(geometry, "mpb_image") == geometry
    with pytest.raises(ValueError, match="declares a geometry without rot1, pixel2"):
        caking.checked_geometry(
            {k: v for k, v in geometry.items() if k not in ("rot1", "pixel2")}, "mpb_image"
        )
    with pytest.raises(ValueError, match=r"wavelength=1.5406 must be in metres"):
        caking.checked_geometry({**geometry, "wavelength": 1.5406}, "mpb_image")
    with pytest.raises(ValueError, match=r"geometry dist='far' is not a number"):
        caking.checked_geometry({**geometry, "dist": "far"}, "mpb_image")
    with pytest.raises(ValueError, match=r"geometry pixel1=0.0 m must be > 0"):
        caking.checked_geometry({**geometry, "pixel1": 0.0}, "mpb_image")


def noise_free(x: float, config: mpb.MPBConfig) -> np.ndarray:
    """A tetragonal frame without noise, jitter or texture at ``config``'s geometry."""
    nuisance = {
        "beam_shift": np.zeros((1, 2)),
        "crystallite_size": np.full(1, 150.0),
        "texture_amplitude": np.zeros((1, 3)),
        "texture_phase": np.zeros((1, 3)),
        "scale": np.ones(1),
        "background": np.full(1, 20.0),
    }
    return mpb.mean_counts(np.array([x]), np.array([300.0]), nuisance, config)


def test_the_rings_sit_at_the_same_q_bins_for_another_distance_arm_and_wavelength() -> None:
    nominal = mpb.MPBConfig()
    others = [
        replace(nominal, distance=118.0, arm_two_theta=51.5),
        replace(nominal, distance=138.0, arm_two_theta=54.5),
        # Mo K-alpha: the rings move to small 2-theta; the arm follows them
        replace(nominal, wavelength=0.7107, arm_two_theta=24.0, distance=300.0),
    ]
    reference = phase.preprocess(noise_free(0.8, nominal), mpb.poni_geometry(nominal))
    peaks = np.argsort(reference[0, 0].mean(axis=0))[-5:]
    for config in others:
        moved = phase.preprocess(noise_free(0.8, config), mpb.poni_geometry(config))
        profile = moved[0, 0].mean(axis=0)
        assert set(np.argsort(profile)[-5:]) & set(peaks), config
        if config.wavelength != nominal.wavelength:
            continue  # the peaks are wider in q there: another instrument resolution
        both = np.isfinite(profile) & (moved[0, 0] != 0).any(axis=0)
        r = np.corrcoef(profile[both], reference[0, 0].mean(axis=0)[both])[0, 1]
        assert r > 0.9, (config.distance, config.arm_two_theta, r)


def test_a_blank_or_constant_frame_is_refused_not_classified() -> None:
    geometry = mpb.poni_geometry(mpb.MPBConfig())
    for frame in (np.zeros((1, 97, 243)), np.full((1, 97, 243), 7.0)):
        with pytest.raises(ValueError, match="frame 0 has no varying finite counts"):
            phase.preprocess(frame, geometry)
