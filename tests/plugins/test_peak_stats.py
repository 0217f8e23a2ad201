"""peak_stats against analytic Gaussians, and live in a real scan."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
import pytest

from smartlab_plugins.devices import beam, ins
from smartlab_plugins.hookspecs import EventBatch, RunContext
from smartlab_plugins.plugins import peak_stats
from smartlab_plugins.results import find_analyses, read_events

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def gaussian(x, centre, sigma, height, background=0.0):
    return background + height * np.exp(-((x - centre) ** 2) / (2 * sigma**2))


def test_profile_stats_recover_analytic_gaussians():
    x = np.arange(400, dtype=float)
    centres = np.array([120.3, 200.0, 277.7])
    sigmas = np.array([5.0, 11.5, 20.0])
    profiles = np.stack(
        [gaussian(x, c, s, 50.0, background=3.0) for c, s in zip(centres, sigmas, strict=True)]
    )

    stats = peak_stats.profile_stats(profiles)

    np.testing.assert_allclose(stats["centroid"], centres, atol=0.01)
    np.testing.assert_allclose(stats["sigma"], sigmas, rtol=0.01)
    np.testing.assert_allclose(stats["fwhm"], FWHM_PER_SIGMA * sigmas, rtol=0.01)
    np.testing.assert_allclose(
        stats["max"], gaussian(np.round(centres), centres, sigmas, 50.0, 3.0)
    )
    np.testing.assert_array_equal(stats["argmax"], np.round(centres))
    np.testing.assert_allclose(
        stats["sum"], 3.0 * 400 + 50.0 * sigmas * np.sqrt(2 * np.pi), rtol=1e-3
    )


def test_image_stats_recover_centre_and_widths_along_both_axes():
    rows, cols = np.mgrid[0:80, 0:120].astype(float)
    image = 100 * np.exp(-((rows - 30.5) ** 2) / (2 * 4.0**2) - (cols - 70.25) ** 2 / (2 * 9.0**2))

    stats = peak_stats.image_stats(image[None])

    assert stats["centroid_row"][0] == pytest.approx(30.5, abs=0.01)
    assert stats["centroid_col"][0] == pytest.approx(70.25, abs=0.01)
    assert stats["sigma_row"][0] == pytest.approx(4.0, rel=0.01)
    assert stats["fwhm_col"][0] == pytest.approx(FWHM_PER_SIGMA * 9.0, rel=0.01)
    assert (stats["argmax_row"][0], stats["argmax_col"][0]) == (30.0, 70.0)


def test_fwhm_is_nan_when_the_peak_runs_off_the_edge():
    x = np.arange(50, dtype=float)
    assert np.isnan(peak_stats.fwhm(x, gaussian(x, 2.0, 6.0, 10.0)))


def test_run_summary_finds_the_peak_across_the_scanned_motor():
    motor = np.linspace(-8, 8, 65)
    signal = gaussian(motor, 1.25, 1.5, 10.0)
    run = RunContext(
        uid="run",
        start={"uid": "run", "motors": ["m"]},
        descriptors={"primary": {"data_keys": {"m": {}, "det": {}}, "object_keys": {"m": ["m"]}}},
    )
    peak_stats.smartlab_start_run(run)
    for chunk in np.array_split(np.arange(65), 4):  # several batches, as live
        batch = EventBatch(
            "primary", chunk + 1, chunk * 0.1, {"m": motor[chunk], "det": signal[chunk]}
        )
        assert peak_stats.smartlab_analyze(run, "primary", batch) is None  # scalars: run level only
    summary = peak_stats.smartlab_finish_run(run, {})

    det = summary["det"]
    assert det["x"] == "m"
    assert det["max"] == [pytest.approx(1.25), pytest.approx(10.0)]
    assert det["centroid"] == pytest.approx(1.25, abs=0.02)
    assert det["fwhm"] == pytest.approx(FWHM_PER_SIGMA * 1.5, rel=0.02)
    assert det["points"] == 65


def test_units_in_the_metadata_follow_each_field_read(RE, make_smartlab, client):
    spectrometer = ins.make_devices(seed=2)["ins"]
    monitor = beam.make_devices()["beam"]
    smartlab = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab)
    (with_units,) = RE(bp.scan([spectrometer], spectrometer.temperature, 5, 10, 2))
    (without,) = RE(bp.count([monitor], 1))
    smartlab.flush()

    (analysis,) = find_analyses(client, run_uid=with_units, plugin="peak_stats")
    units = analysis.metadata["units"]
    table = read_events(analysis)
    assert {"ins_sqw_max", "ins_sqw_sum", "ins_sqw_centroid_row"} <= set(table.columns)
    assert units["ins_sqw_max"] == units["ins_sqw_sum"] == "counts"  # ins_sqw's own unit
    assert units["ins_sqw_centroid_row"] == units["ins_sqw_fwhm_col"] == "pixel"
    (analysis,) = find_analyses(client, run_uid=without, plugin="peak_stats")
    units = analysis.metadata["units"]
    assert units["beam_image_max"] is None  # the descriptor gives beam_image no unit: unknown
    assert units["beam_image_sigma_row"] == "pixel"
