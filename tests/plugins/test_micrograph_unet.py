"""micrograph_unet in real scans: phase maps and fractions published live, close to the truth."""

from __future__ import annotations

import logging
from dataclasses import replace

import bluesky.plans as bp
import numpy as np
import pytest
from event_model import compose_run
from ophyd import Kind

from smartlab_plugins.devices.microscopy import MicroscopyConfig, MicrostructureConfig, make_devices
from smartlab_plugins.models import segmentation
from smartlab_plugins.models.store import shared_model
from smartlab_plugins.plugins import micrograph_unet
from smartlab_plugins.results import find_analyses, read_array, read_errors, read_events

NAME = micrograph_unet.NAME
FRACTIONS = [f"fraction_{name}" for name in segmentation.phase_names()]


@pytest.fixture
def smartlab(make_smartlab):
    """SmartLab with micrograph_unet (from its entry point) alone, loading the shipped model."""
    shared_model.cache_clear()
    yield make_smartlab(plugins=[NAME])
    shared_model.cache_clear()


def analysis_of(client, uid):
    (analysis,) = find_analyses(client, run_uid=uid, plugin=NAME)
    return analysis


def test_a_raster_publishes_phase_maps_and_fractions_live_that_match_the_truth(
    RE, smartlab, client
):
    devices = make_devices(seed=21)
    camera, xy = devices["camera"], devices["xy"]
    camera.mask.kind = Kind.normal
    midway: dict = {}

    def read_midway(name, doc):  # on the RunEngine thread, during the scan
        if name == "start":
            midway["uid"] = doc["uid"]
        if name == "event" and doc["seq_num"] == 5:
            smartlab.flush()
            analysis = analysis_of(client, midway["uid"])
            midway["status"] = analysis.metadata["status"]
            midway["masks"] = len(read_array(analysis, "mask"))
            midway["rows"] = len(read_events(analysis))

    RE.subscribe(smartlab)
    RE.subscribe(read_midway)
    (uid,) = RE(bp.grid_scan([camera], xy.y, 0, 40, 3, xy.x, 0, 40, 3))
    smartlab.flush()

    assert midway == {"uid": uid, "status": "running", "masks": 5, "rows": 5}
    analysis = analysis_of(client, uid)
    assert analysis.metadata["status"] == "complete"
    assert analysis.metadata["model"] == NAME and len(analysis.metadata["sha256"]) == 64
    assert {analysis.metadata["units"][name] for name in [*FRACTIONS, "mask"]} == {""}
    masks = read_array(analysis, "mask")
    truth = np.asarray(client[uid]["primary"]["camera_mask"].read())
    assert masks.dtype == np.uint8 and masks.shape == truth.shape == (9, 256, 256)
    assert (masks == truth).mean() > 0.97
    table = read_events(analysis)
    assert list(table["seq_num"]) == list(range(1, 10))
    true_fractions = segmentation.phase_fractions(truth)
    np.testing.assert_allclose(table[FRACTIONS].to_numpy(), true_fractions, atol=0.03)
    np.testing.assert_allclose(table[FRACTIONS].sum(axis=1), 1.0)
    assert "uncertainty" not in analysis["primary"]
    summary = analysis.metadata["summary"]
    assert summary["frames"] == 9
    means = [summary["mean_fractions"][name] for name in segmentation.phase_names()]
    np.testing.assert_allclose(means, true_fractions.mean(axis=0), atol=0.01)


def test_uncertainty_maps_are_published_when_the_run_asks(RE, smartlab, client):
    devices = make_devices(seed=22)
    camera, xy = devices["camera"], devices["xy"]
    camera.mask.kind = Kind.normal
    RE.subscribe(smartlab)
    (uid,) = RE(
        bp.list_scan([camera], xy.x, [5.0, 60.0], xy.y, [10.0, 30.0]),
        smartlab={"options": {NAME: {"uncertainty": True}}},
    )
    smartlab.flush()

    analysis = analysis_of(client, uid)
    uncertainty = read_array(analysis, "uncertainty")
    masks = read_array(analysis, "mask")
    truth = np.asarray(client[uid]["primary"]["camera_mask"].read())
    assert uncertainty.shape == (2, 256, 256) and uncertainty.dtype == np.float32
    wrong = masks != truth
    assert uncertainty[wrong].mean() > 3 * uncertainty[~wrong].mean()
    table = read_events(analysis)
    np.testing.assert_allclose(table["uncertainty_mean"], uncertainty.mean(axis=(1, 2)), rtol=1e-5)


def test_other_frame_sizes_are_segmented_tiny_and_nan_frames_refused_per_event(
    RE, smartlab, client
):
    small = make_devices(seed=23, config=MicroscopyConfig(frame_size=200))
    small["camera"].mask.kind = Kind.normal
    tiny = make_devices(seed=23, config=MicroscopyConfig(frame_size=8))
    RE.subscribe(smartlab)
    (small_uid,) = RE(bp.count([small["camera"]], 2))
    (tiny_uid,) = RE(bp.count([tiny["camera"]], 2))
    nan_uid = run_with_a_nan_frame(smartlab)
    smartlab.flush()

    masks = read_array(analysis_of(client, small_uid), "mask")
    truth = np.asarray(client[small_uid]["primary"]["camera_mask"].read())
    assert masks.shape == (2, 200, 200) and (masks == truth).mean() > 0.97

    errors = read_errors(analysis_of(client, tiny_uid))
    assert len(errors) == 2 and set(errors["stage"]) == {"analyze"}
    assert (
        "micrograph_unet: expected 2-D frames of at least 16x16 pixels in field 'camera_image', "
        "got 8x8" in errors["message"].iloc[0]
    )
    assert read_events(analysis_of(client, tiny_uid)).empty

    nan_analysis = analysis_of(client, nan_uid)
    errors = read_errors(nan_analysis)
    assert list(errors["stage"]) == ["input"] and list(errors["seq_num"]) == [1]
    assert "NaN" in errors["message"].iloc[0]
    assert list(read_events(nan_analysis)["seq_num"]) == [2]
    assert nan_analysis.metadata["status"] == "partial"  # one event refused: not complete
    assert nan_analysis.metadata["rejected"] == 1


def run_with_a_nan_frame(smartlab) -> str:
    """A run of two 64 x 64 frames, the first with a NaN pixel."""
    frames = [frame_of(seed=23), frame_of(seed=23)]
    frames[0][10, 10] = np.nan
    return run_with_frames(smartlab, frames)


def at_pixel_size(pixel_size: float, frame_size: int = 200) -> MicroscopyConfig:
    """A camera over a small specimen (768 pixels a side) imaged at ``pixel_size`` um."""
    structure = MicrostructureConfig(size_px=768, pixel_size_um=pixel_size)
    return MicroscopyConfig(frame_size=frame_size, structure=structure)


def test_a_declared_pixel_size_is_resampled_and_one_far_off_refused_per_event(
    RE, smartlab, client, caplog
):
    finer = make_devices(seed=24, config=at_pixel_size(0.04))
    finer["camera"].mask.kind = Kind.normal
    far = make_devices(seed=24, config=at_pixel_size(0.2, frame_size=64))
    RE.subscribe(smartlab)
    with caplog.at_level(logging.INFO, logger=micrograph_unet.__name__):
        (finer_uid,) = RE(bp.count([finer["camera"]], 2))
        (far_uid,) = RE(bp.count([far["camera"]], 2))
        smartlab.flush()

    key = finer["camera"].describe()["camera_image"]  # the data key of the run's descriptor
    assert (key["pixel_size"], key["pixel_size_units"]) == (0.04, "um")
    masks = read_array(analysis_of(client, finer_uid), "mask")
    truth = np.asarray(client[finer_uid]["primary"]["camera_mask"].read())
    assert masks.shape == truth.shape == (2, 200, 200)
    assert (masks == truth).mean() > 0.93
    resampled = [r for r in caplog.records if "resampling its frames" in r.getMessage()]
    assert len(resampled) == 1 and "pixel_size 0.04 um" in resampled[0].getMessage()

    far_analysis = analysis_of(client, far_uid)
    errors = read_errors(far_analysis)
    assert list(errors["seq_num"]) == [1, 2] and set(errors["stage"]) == {"analyze"}
    assert (
        "micrograph_unet: field 'camera_image' declares pixel_size 0.2 um; the model was trained "
        "at 0.05 um and resamples frames from 0.025 to 0.1 um only" in errors["message"].iloc[0]
    )
    assert read_events(far_analysis).empty


def test_a_detector_gain_and_gamma_change_leaves_the_published_maps_unchanged(RE, smartlab, client):
    plain = make_devices(seed=25)
    changed = make_devices(seed=25)  # same specimen, same noise draws
    changed["camera"].gain.set(1.9).wait()
    changed["camera"].offset.set(0.08).wait()
    changed["camera"].gamma.set(0.62).wait()
    RE.subscribe(smartlab)
    uids = [RE(bp.count([devices["camera"]], 2))[0] for devices in (plain, changed)]
    smartlab.flush()

    images = [np.asarray(client[uid]["primary"]["camera_image"].read()) for uid in uids]
    assert abs(images[1].mean() / images[0].mean() - 1) > 0.2  # the grey scale did change
    masks = [read_array(analysis_of(client, uid), "mask") for uid in uids]
    assert (masks[0] == masks[1]).mean() > 0.999


def test_a_blank_frame_is_refused_for_its_event_and_a_missing_pixel_size_noted_once(
    smartlab, client, caplog
):
    with caplog.at_level(logging.INFO, logger=micrograph_unet.__name__):
        uid = run_with_frames(smartlab, [np.zeros((64, 64), np.float32), frame_of(seed=26)])
        smartlab.flush()

    analysis = analysis_of(client, uid)
    errors = read_errors(analysis)
    assert list(errors["seq_num"]) == [1] and list(errors["stage"]) == ["analyze"]
    assert (
        "micrograph_unet: frame in field 'camera_image' has no contrast (most pixels equal 0; "
        "event 1)" in errors["message"].iloc[0]
    )
    assert list(read_events(analysis)["seq_num"]) == [2]
    noted = [r for r in caplog.records if "declares no pixel_size" in r.getMessage()]
    assert len(noted) == 1 and "assuming the training pixel size, 0.05 um" in noted[0].getMessage()


def frame_of(seed: int) -> np.ndarray:
    """One 64 x 64 frame of the simulated camera."""
    camera = make_devices(seed=seed, config=replace(MicroscopyConfig(), frame_size=64))["camera"]
    camera.trigger()
    return camera.image.get()


def run_with_frames(smartlab, frames: list[np.ndarray]) -> str:
    """A run of the given frames in a data key without a pixel size, fed to SmartLab directly."""
    run = compose_run(metadata={"smartlab": {"plugins": [NAME]}})
    shape = list(frames[0].shape)
    descriptor = run.compose_descriptor(
        name="primary",
        data_keys={"camera_image": {"source": "sim", "dtype": "array", "shape": shape}},
    )
    smartlab("start", run.start_doc)
    smartlab("descriptor", descriptor.descriptor_doc)
    for seq_num, image in enumerate(frames, start=1):
        event = descriptor.compose_event(
            data={"camera_image": image}, timestamps={"camera_image": 0.0}, seq_num=seq_num
        )
        smartlab("event", event)
    smartlab("stop", run.compose_stop())
    return run.start_doc["uid"]
