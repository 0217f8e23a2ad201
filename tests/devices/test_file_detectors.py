"""Tests of the file-writing detectors: documents, the HDF5 files, the physics and Tiled.

Every test runs a real RunEngine on real devices. The physics check is exact: the file
detectors drive the in-memory devices, so replaying the recorded stage positions on an
in-memory device with the same seed must give the very frames found in the file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from ophyd_async.core import TriggerInfo
from ophyd_async.plan_stubs import ensure_connected

from smartlab_plugins.devices.file_detectors import DATASET, FileDevices, make_file_devices
from smartlab_plugins.devices.microscopy import (
    MicroscopyConfig,
    MicrostructureConfig,
    SEMCamera,
    XYStage,
)
from smartlab_plugins.devices.mpb import DETECTOR_SHAPE, MPBDetector, MPBStage

SEED = 7
# A small specimen (25.6 um, 64 px frames) keeps the SEM tests fast; the imaging is the same.
SMALL_SEM = MicroscopyConfig(frame_size=64, structure=MicrostructureConfig(size_px=512))
FRAME_SHAPES = {"mpb": DETECTOR_SHAPE, "camera": (64, 64)}
KEYS = {"mpb": "mpb_image", "camera": "camera_image"}

Documents = list[tuple[str, dict[str, Any]]]


def make(folder: Path, frames_per_event: int) -> FileDevices:
    """The devices under test, connected in the current RunEngine's loop."""
    return make_file_devices(
        folder, seed=SEED, frames_per_event=frames_per_event, microscopy_config=SMALL_SEM
    )


def plan_for(devices: FileDevices, detector: str, kind: str) -> tuple[Any, int]:
    """A count, scan or grid_scan of ``devices[detector]`` over its stage; (plan, events).

    ``detector`` is a key of :class:`FileDevices`: ``mpb`` and ``mpb_hdf5`` move the
    sample stage, ``camera`` the xy stage.
    """
    det = devices[detector]
    if detector == "camera":
        slow, fast = devices["xy"].y, devices["xy"].x
        ranges = ((0.0, 12.8), (0.0, 19.2))
    else:
        slow, fast = devices["sample"].temperature, devices["sample"].x
        ranges = ((200.0, 400.0), (0.40, 0.55))
    if kind == "count":
        return bp.count([det], 10), 10
    if kind == "scan":
        return bp.scan([det], fast, *ranges[1], 5), 5
    return bp.grid_scan([det], slow, *ranges[0], 2, fast, *ranges[1], 3), 6


def run(RE: RunEngine, plan: Any) -> Documents:
    """Run ``plan`` and return every document it emitted, in order."""
    docs: Documents = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def of(docs: Documents, name: str) -> list[dict[str, Any]]:
    """The documents called ``name``."""
    return [doc for n, doc in docs if n == name]


def read_frames(path: Path | str) -> np.ndarray:
    """Every frame in an HDF5 file written by the detectors (opened as an SWMR reader)."""
    with h5py.File(path, "r", swmr=True) as file:
        return file[DATASET][()]


def file_of(docs: Documents) -> Path:
    """The HDF5 file of a run's single stream_resource or resource document."""
    if stream_resources := of(docs, "stream_resource"):
        (stream_resource,) = stream_resources
        return Path(urlparse(stream_resource["uri"]).path)
    (resource,) = of(docs, "resource")
    return Path(resource["root"]) / resource["resource_path"]


def replayed_frames(
    detector: str, events: list[dict[str, Any]], frames_per_event: int
) -> np.ndarray:
    """The frames an in-memory device with the same seed takes at the events' positions."""
    if detector == "camera":
        xy = XYStage(travel_um=SMALL_SEM.travel_um)
        sensor = SEMCamera(xy, seed=SEED, config=SMALL_SEM)
        motors = {"xy_x": xy.x, "xy_y": xy.y}
    else:
        sample = MPBStage()
        sensor = MPBDetector(stage=sample, seed=SEED)
        motors = {"sample_x": sample.x, "sample_temperature": sample.temperature}
    frames = []
    for event in events:
        for key, motor in motors.items():
            if key in event["data"]:
                motor.set(event["data"][key]).wait()
        for _ in range(frames_per_event):
            sensor.trigger()
            frames.append(sensor.image.get().copy())
    return np.stack(frames)


@pytest.mark.parametrize("kind", ["count", "scan", "grid_scan"])
@pytest.mark.parametrize("frames_per_event", [1, 3])
@pytest.mark.parametrize("detector", ["mpb", "camera"])
def test_ophyd_async_detector_streams_frames_to_hdf5(
    RE: RunEngine, tmp_path: Path, detector: str, frames_per_event: int, kind: str
) -> None:
    devices = make(tmp_path, frames_per_event)
    plan, n_events = plan_for(devices, detector, kind)
    key, shape = KEYS[detector], FRAME_SHAPES[detector]
    docs = run(RE, plan)

    (descriptor,) = of(docs, "descriptor")
    data_key = descriptor["data_keys"][key]
    assert data_key["shape"] == [frames_per_event, *shape]
    assert data_key["external"] == "STREAM:"
    assert data_key["dtype_numpy"] == "<f4"
    (resource,) = of(docs, "stream_resource")
    assert resource["data_key"] == key
    assert resource["mimetype"] == "application/x-hdf5"
    assert resource["parameters"]["dataset"] == DATASET
    path = file_of(docs)
    assert path.parent == tmp_path.resolve()

    datums = of(docs, "stream_datum")
    assert [d["indices"] for d in datums] == [{"start": i, "stop": i + 1} for i in range(n_events)]
    assert [d["seq_nums"] for d in datums] == [
        {"start": i, "stop": i + 1} for i in range(1, n_events + 1)
    ]
    events = of(docs, "event")
    assert [e["seq_num"] for e in events] == list(range(1, n_events + 1))
    assert all(key not in e["data"] for e in events)  # frames live in the file only

    frames = read_frames(path)
    assert frames.shape == (n_events * frames_per_event, *shape)
    assert frames.dtype == np.float32
    np.testing.assert_array_equal(frames, replayed_frames(detector, events, frames_per_event))


def frames_seen_by_another_process(path: str) -> int:
    """How many frames a separate SWMR reader process finds in the file now."""
    script = "import sys, h5py; print(h5py.File(sys.argv[1], 'r', swmr=True)[sys.argv[2]].shape[0])"
    result = subprocess.run(
        [sys.executable, "-c", script, path, DATASET],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(result.stdout)


def test_file_grows_and_is_readable_while_the_scan_runs(RE: RunEngine, tmp_path: Path) -> None:
    """Another process reading the file (SWMR) sees N more frames at each event."""
    devices = make(tmp_path, frames_per_event=3)
    paths: list[str] = []
    seen: list[int] = []

    def reader(name: str, doc: dict[str, Any]) -> None:
        if name == "stream_resource":
            paths.append(urlparse(doc["uri"]).path)
        elif name == "event":
            seen.append(frames_seen_by_another_process(paths[0]))

    RE(bp.scan([devices["mpb"]], devices["sample"].x, 0.3, 0.6, 3), reader)
    assert seen == [3, 6, 9]


def test_a_plan_that_prepares_sets_frames_per_event_and_exposure_time(
    RE: RunEngine, tmp_path: Path
) -> None:
    """A plan's own TriggerInfo overrides the staged default: shape, frames and count time."""
    devices = make(tmp_path, frames_per_event=1)
    det = devices["mpb"]

    @bpp.stage_decorator([det])
    @bpp.run_decorator()
    def two_events() -> Any:
        yield from bps.prepare(det, TriggerInfo(collections_per_event=2, livetime=2.0), wait=True)
        for _ in range(2):
            yield from bps.trigger_and_read([det])

    docs = run(RE, two_events())
    (descriptor,) = of(docs, "descriptor")
    assert descriptor["data_keys"]["mpb_image"]["shape"] == [2, *DETECTOR_SHAPE]
    assert descriptor["configuration"]["mpb"]["data"] == {"mpb_count_time": 2.0}
    assert read_frames(file_of(docs)).shape == (4, *DETECTOR_SHAPE)


def test_devices_made_unconnected_are_connected_by_a_plan(RE: RunEngine, tmp_path: Path) -> None:
    """The recipe for code that runs in the RunEngine's loop (e.g. queueserver startup)."""
    devices = make_file_devices(tmp_path, seed=SEED, microscopy_config=SMALL_SEM, connect=False)
    RE(ensure_connected(devices["mpb"], devices["camera"]))
    docs = run(RE, bp.count([devices["mpb"], devices["camera"]], 2))
    assert len(of(docs, "event")) == 2
    assert {d["data_key"] for d in of(docs, "stream_resource")} == {"mpb_image", "camera_image"}


@pytest.mark.parametrize(
    ("kind", "frames_per_event"), [("count", 1), ("scan", 3), ("grid_scan", 3)]
)
def test_areadetector_style_device_emits_resource_and_datum(
    RE: RunEngine, tmp_path: Path, kind: str, frames_per_event: int
) -> None:
    devices = make(tmp_path, frames_per_event)
    plan, n_events = plan_for(devices, "mpb_hdf5", kind)
    docs = run(RE, plan)

    (descriptor,) = of(docs, "descriptor")
    data_key = descriptor["data_keys"]["mpb_image"]
    assert data_key["external"] == "FILESTORE:"
    assert data_key["shape"] == [frames_per_event, *DETECTOR_SHAPE]
    (resource,) = of(docs, "resource")
    assert resource["spec"] == "AD_HDF5"
    assert resource["root"] == str(tmp_path.resolve())
    assert resource["resource_kwargs"] == {"frame_per_point": frames_per_event}
    datums = of(docs, "datum")
    assert [d["datum_kwargs"] for d in datums] == [{"point_number": i} for i in range(n_events)]
    events = of(docs, "event")
    assert [e["data"]["mpb_image"] for e in events] == [d["datum_id"] for d in datums]
    assert [e["seq_num"] for e in events] == list(range(1, n_events + 1))

    frames = read_frames(file_of(docs))
    assert frames.shape == (n_events * frames_per_event, *DETECTOR_SHAPE)
    np.testing.assert_array_equal(frames, replayed_frames("mpb", events, frames_per_event))


def test_stock_tiled_writer_stores_the_frames_of_both_forms(
    RE: RunEngine, client: Any, external_dir: Path
) -> None:
    """TiledWriter registers the files; the server reads the frames back, [events, N, H, W]."""
    devices = make(external_dir / "file_detectors", frames_per_event=3)
    RE.subscribe(TiledWriter(client))
    runs = [
        ("mpb_image", 4, run(RE, bp.scan([devices["mpb"]], devices["sample"].x, 0.4, 0.55, 4))),
        ("mpb_image", 2, run(RE, bp.count([devices["mpb_hdf5"]], 2))),
        ("camera_image", 2, run(RE, bp.count([devices["camera"]], 2))),
    ]
    for key, n_events, docs in runs:
        frames = read_frames(file_of(docs))
        stored = client[of(docs, "start")[0]["uid"]]["primary"][key].read()
        assert stored.shape == (n_events, 3, *frames.shape[1:])
        np.testing.assert_array_equal(stored, frames.reshape(stored.shape))
