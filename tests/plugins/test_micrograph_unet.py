"""micrograph_unet in real scans: phase maps and fractions published live, close to the truth."""

from __future__ import annotations

from pathlib import Path

import bluesky.plans as bp
import numpy as np
import pytest
from event_model import compose_run
from ophyd import Kind

from smartlab_plugins.devices.microscopy import MicroscopyConfig, make_devices
from smartlab_plugins.models import segmentation
from smartlab_plugins.models.segmentation import MicrographTask
from smartlab_plugins.models.store import shared_model
from smartlab_plugins.models.training import TrainingConfig, train_model
from smartlab_plugins.plugins import micrograph_unet
from smartlab_plugins.results import find_analyses, read_array, read_errors, read_events

NAME = micrograph_unet.NAME
FRACTIONS = [f"fraction_{name}" for name in segmentation.phase_names()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net (width 8, 1,000 crops of one specimen, ~15 s on one thread) and its card."""
    out = tmp_path_factory.mktemp("micrograph_unet")
    config = TrainingConfig(
        n_samples=1000,
        seed=5,
        batch_size=8,
        learning_rate=3e-3,
        max_epochs=3,
        max_minutes=1.0,
        threads=1,
    )
    train_model(MicrographTask(width=8, n_specimens=1, held_out=8), config, out, progress=False)
    return out


@pytest.fixture
def smartlab(model_dir, make_smartlab, monkeypatch):
    """SmartLab with micrograph_unet (from its entry point) alone, loading the tiny model."""
    monkeypatch.setenv("SMARTLAB_MODEL_DIR", str(model_dir))
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
    """A run of two 64 x 64 frames, the first with a NaN pixel, fed to SmartLab directly."""
    run = compose_run(metadata={"smartlab": {"plugins": [NAME]}})
    descriptor = run.compose_descriptor(
        name="primary",
        data_keys={"camera_image": {"source": "sim", "dtype": "array", "shape": [64, 64]}},
    )
    smartlab("start", run.start_doc)
    smartlab("descriptor", descriptor.descriptor_doc)
    frame = np.full((64, 64), 0.25, dtype=np.float32)
    for seq_num, value in ((1, np.nan), (2, 0.9)):
        image = frame.copy()
        image[10, 10] = value
        event = descriptor.compose_event(
            data={"camera_image": image}, timestamps={"camera_image": 0.0}, seq_num=seq_num
        )
        smartlab("event", event)
    smartlab("stop", run.compose_stop())
    return run.start_doc["uid"]
