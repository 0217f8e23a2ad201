"""Our file-writing detectors through SmartLab: several frames per event (ophyd-async) and
``resource``/``datum`` (ophyd's areaDetector style), analysed live and kept in the raw run."""

from __future__ import annotations

from pathlib import Path

import bluesky.plans as bp
import h5py
import numpy as np
from bluesky import RunEngine

from smartlab_plugins.devices.file_detectors import DATASET, make_file_devices
from smartlab_plugins.results import find_analyses, read_errors, read_events


def written_frames(folder: Path) -> np.ndarray:
    (path,) = folder.glob("*.h5")
    with h5py.File(path, "r") as f:
        return f[DATASET][()]


def test_three_frames_per_event_are_analysed_as_one_exposure_and_stored_whole(
    make_smartlab, client, external_dir: Path
):
    RE = RunEngine()
    folder = external_dir / "three-frames"
    devices = make_file_devices(folder, seed=5, frames_per_event=3)
    smartlab = make_smartlab(plugins=["peak_stats", "phase_cnn"])
    RE.subscribe(smartlab)

    (uid,) = RE(bp.scan([devices["mpb"]], devices["sample"].x, 0.40, 0.55, 5))
    assert smartlab.flush()

    frames = written_frames(folder)
    assert frames.shape == (15, 97, 243)
    summed = frames.reshape(5, 3, 97, 243).sum(axis=1)  # what a plugin of 2-D images sees
    stats = find_analyses(client, run_uid=uid, plugin="peak_stats")[0]
    assert stats.metadata["status"] == "complete", read_errors(stats)
    rows = read_events(stats)
    assert rows["seq_num"].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(rows["mpb_image_max"], summed.reshape(5, -1).max(axis=1), rtol=1e-6)
    phases = read_events(find_analyses(client, run_uid=uid, plugin="phase_cnn")[0])
    assert len(phases) == 5 and phases["phase_name"].notna().all()
    stored = np.asarray(client[uid]["primary"]["mpb_image"].read())
    assert stored.shape == (5, 3, 97, 243)
    np.testing.assert_array_equal(stored.reshape(15, 97, 243), frames)


def test_an_areadetector_style_device_is_read_through_resource_and_datum(
    make_smartlab, client, external_dir: Path
):
    from databroker import Broker

    RE = RunEngine()
    folder = external_dir / "ad-hdf5"
    devices = make_file_devices(folder, seed=6)
    smartlab = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab)

    (uid,) = RE(bp.count([devices["mpb_hdf5"]], 6))
    assert smartlab.flush()

    frames = written_frames(folder)
    stats = find_analyses(client, run_uid=uid, plugin="peak_stats")[0]
    assert stats.metadata["status"] == "complete", read_errors(stats)
    assert stats.metadata["raw_failures"] == 0
    rows = read_events(stats)
    assert rows["seq_num"].tolist() == list(range(1, 7))
    np.testing.assert_allclose(rows["mpb_image_max"], frames.reshape(6, -1).max(axis=1), rtol=1e-6)
    stored = np.asarray(client[uid]["primary"]["mpb_image"].read())
    np.testing.assert_array_equal(stored.reshape(frames.shape), frames)
    run = Broker(client)[uid].v2  # databroker reads the frames too
    assert run["primary"].read()["mpb_image"].shape == (6, 1, 97, 243)
