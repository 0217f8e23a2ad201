"""File-backed detectors end to end: ophyd-async's own SimBlobDetector, a real RunEngine, a real
Tiled server; every frame analysed and stored, and files read only where allowed."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from event_model import compose_run
from ophyd_async.core import StaticFilenameProvider, StaticPathProvider, init_devices
from ophyd_async.sim import SimBlobDetector
from tiled_keys import API_KEY

from smartlab_plugins.assembly.batching import BatchAssembler
from smartlab_plugins.results import find_analyses, read_errors, read_events

FRAME = (24, 32)


def blob_detector(folder: Path, name: str = "blob") -> SimBlobDetector:
    """ophyd-async's simulated detector writing HDF5 frames into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    provider = StaticPathProvider(StaticFilenameProvider(name), folder)
    with init_devices():
        detector = SimBlobDetector(provider, name=name)
    return detector


def test_every_frame_of_a_full_speed_count_is_analysed_and_stored(
    make_smartlab, client, external_dir: Path
):
    RE = RunEngine()
    folder = external_dir / "blob-count"
    detector = blob_detector(folder)
    smartlab = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab)

    (uid,) = RE(bp.count([detector], 60))
    assert smartlab.flush()

    (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
    assert analysis.metadata["status"] == "complete", read_errors(analysis)
    assert analysis.metadata["raw_failures"] == 0
    table = read_events(analysis)
    assert list(table["seq_num"]) == list(range(1, 61))  # frames analysed / written = 1.000
    with h5py.File(folder / "blob.h5", "r") as f:
        written = f["/entry/data/data"][()]
    assert written.shape[0] == 60
    expected_max = written.reshape(60, -1).max(axis=1)
    np.testing.assert_allclose(table["blob_max"], expected_max)
    stored = client[uid]["primary"]["blob"].read()  # the raw run keeps the file-backed field
    assert stored.shape == (60, 1, *written.shape[1:])
    np.testing.assert_array_equal(np.asarray(stored)[:, 0], written)


def test_the_raw_run_of_a_file_backed_detector_reads_back_through_databroker(
    make_smartlab, tiled_server, external_dir: Path
):
    from databroker import Broker  # noqa: F401  (databroker 2 reads Tiled runs)

    RE = RunEngine()
    detector = blob_detector(external_dir / "blob-db")
    smartlab = make_smartlab(plugins=[])
    RE.subscribe(smartlab)
    (uid,) = RE(bp.count([detector], 5))
    assert smartlab.flush()
    run = tiled_server.client()[uid]
    dataset = run["primary"].read()
    assert dataset["blob"].shape[0] == 5


# -- documents that name files they should not ----------------------------------------------


def hostile_run(uri: str, shape=(1, *FRAME), dtype="<u2", mimetype="application/x-hdf5"):
    """A run whose one event's frame is said to be in ``uri`` (as a detector's documents say)."""
    bundle = compose_run()
    descriptor = bundle.compose_descriptor(
        name="primary",
        data_keys={
            "frame": {
                "source": "test",
                "dtype": "array",
                "dtype_numpy": dtype,
                "shape": list(shape),
                "external": "STREAM:",
            }
        },
    )
    resource = bundle.compose_stream_resource(
        mimetype=mimetype,
        uri=uri,
        data_key="frame",
        parameters={"dataset": "/entry/data/data", "chunk_shape": list(shape)},
    )
    datum = resource.compose_stream_datum(
        indices={"start": 0, "stop": 1},
        seq_nums={"start": 1, "stop": 2},
        descriptor=descriptor.descriptor_doc,
    )
    event = descriptor.compose_event(data={}, timestamps={}, seq_num=1, time=time.time(), filled={})
    return [
        ("start", bundle.start_doc),
        ("descriptor", descriptor.descriptor_doc),
        ("stream_resource", resource.stream_resource_doc),
        ("stream_datum", datum),
        ("event", event),
        ("stop", bundle.compose_stop()),
    ]


def write_frames(path: Path, frames: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=frames)


SECRET = "tH1s-iS-s3cret-c0ntent"


@pytest.fixture
def places(tmp_path: Path, tiled_server) -> dict[str, str]:
    """A data root holding a good file, and ways out of it to a secret."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.h5"
    write_frames(secret, np.full((1, *FRAME), 7, np.uint16))
    text = outside / "passwd.csv"
    text.write_text(f"{SECRET}:x:0:0\n{SECRET}:y:1:1\n")
    write_frames(root / "good.h5", np.arange(np.prod(FRAME), dtype=np.uint16).reshape(1, *FRAME))
    (root / "link.h5").symlink_to(secret)
    with h5py.File(root / "bomb.h5", "w") as f:  # tiny on disk, 800 MB declared
        f.create_dataset(
            "/entry/data/data", shape=(1, 10_000, 10_000), dtype="f8", compression="gzip"
        )
    return {
        "root": str(root),
        "good": (root / "good.h5").as_uri(),
        "absolute": secret.as_uri(),
        "dotdot": f"file://localhost{root}/../outside/secret.h5",
        "symlink": (root / "link.h5").as_uri(),
        "csv": text.as_uri(),
        "key": (tiled_server.data_dir / "api_key").as_uri(),
        "catalog": (tiled_server.data_dir / "catalog.db").as_uri(),
        "bomb": (root / "bomb.h5").as_uri(),
    }


class Sink:
    def __init__(self):
        self.batches, self.problems = [], []

    def open_run(self, start): ...

    def open_stream(self, run_uid, descriptor): ...

    def add_batch(self, run_uid, batch):
        self.batches.append(batch)

    def close_run(self, stop): ...

    def reject(self, problem):
        self.problems.append(problem)


def assemble(docs, roots) -> Sink:
    sink = Sink()
    assembler = BatchAssembler(sink, policy=_policy(roots), stop_wait=0.2)
    for name, doc in docs:
        assembler(name, doc)
        assembler.flush()
    return sink


def _policy(roots):
    from smartlab_plugins.assembly.external import ReadPolicy

    return ReadPolicy.build(roots)


def test_a_file_under_the_data_roots_is_read(places):
    sink = assemble(hostile_run(places["good"]), [places["root"]])
    assert sink.problems == []
    (batch,) = sink.batches
    assert batch.data["frame"].shape == (1, 1, *FRAME)
    assert batch.data["frame"][0, 0, 1, 2] == 34


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("absolute", "outside the data roots"),
        ("dotdot", "outside the data roots"),
        ("symlink", "outside the data roots"),
        ("csv", "outside the data roots"),
        ("key", "Tiled server's own folder"),
        ("catalog", "Tiled server's own folder"),
        ("bomb", "over the per-event budget"),
    ],
)
def test_files_outside_the_rules_are_refused_with_a_clear_error(places, where, words):
    mimetype = "text/csv" if where == "csv" else "application/x-hdf5"
    shape = (1, 10_000, 10_000) if where == "bomb" else (1, *FRAME)
    dtype = "<f8" if where == "bomb" else "<u2"
    docs = hostile_run(places[where], shape=shape, dtype=dtype, mimetype=mimetype)
    sink = assemble(docs, [places["root"]])
    messages = " | ".join(p.reason for p in sink.problems)
    assert words in messages
    assert "'frame'" in messages
    assert SECRET not in messages
    assert all("frame" not in b.data for b in sink.batches)  # the event goes on without it


def test_the_key_file_is_refused_even_with_no_roots(places):
    sink = assemble(hostile_run(places["key"]), None)
    assert "Tiled server's own folder" in " ".join(p.reason for p in sink.problems)
    assert all("frame" not in b.data for b in sink.batches)


def test_a_worker_with_no_roots_reads_no_file(places):
    sink = assemble(hostile_run(places["good"]), [])
    assert "no folder (no data roots configured)" in sink.problems[0].reason


def test_refused_files_publish_nothing_of_their_content(make_smartlab, client, places):
    smartlab = make_smartlab(plugins=["peak_stats"], data_roots=[places["root"]])
    uids = []
    for where in ("csv", "key", "catalog", "symlink", "bomb"):
        docs = hostile_run(
            places[where],
            shape=(1, 10_000, 10_000) if where == "bomb" else (1, *FRAME),
            dtype="<f8" if where == "bomb" else "<u2",
            mimetype="text/csv" if where == "csv" else "application/x-hdf5",
        )
        for name, doc in docs:
            smartlab(name, doc)
        uids.append(docs[0][1]["uid"])
    assert smartlab.flush()
    key = API_KEY  # the server's key, which its api_key file would hold
    for uid in uids:
        assert "frame" not in client[uid]["primary"]  # nothing registered with Tiled
        for analysis in find_analyses(client, run_uid=uid):
            errors = read_errors(analysis)
            text = " ".join(errors["message"]) + " ".join(errors.get("traceback", []))
            assert SECRET not in text and key not in text
            assert analysis.metadata["status"] != "complete"


def test_a_frame_written_after_its_datum_is_waited_for(tmp_path: Path):
    path = tmp_path / "late.h5"
    docs = hostile_run(path.as_uri())
    sink = Sink()
    assembler = BatchAssembler(sink, policy=_policy([tmp_path]), stop_wait=5.0)
    for name, doc in docs[:-1]:
        assembler(name, doc)
        assembler.flush()
    assert sink.batches == [] and sink.problems == []  # waiting, not dropped
    frames = np.full((1, *FRAME), 3, np.uint16)
    writer = threading.Timer(0.5, write_frames, (path, frames))
    writer.start()
    started = time.monotonic()
    assembler(*docs[-1])  # the stop waits (bounded) for the frame
    writer.join()
    assert sink.problems == []
    (batch,) = sink.batches
    assert batch.data["frame"].max() == 3
    assert 0.4 < time.monotonic() - started < 5.0


def test_a_frame_never_written_costs_that_field_at_the_stop(tmp_path: Path):
    docs = hostile_run((tmp_path / "never.h5").as_uri())
    sink = Sink()
    assembler = BatchAssembler(sink, policy=_policy([tmp_path]), stop_wait=0.2)
    for name, doc in docs:
        assembler(name, doc)
    (problem,) = sink.problems
    assert "not written yet" in problem.reason or "does not exist" in problem.reason
    (batch,) = sink.batches
    assert "frame" not in batch.data and len(batch) == 1


def test_environment_data_roots_reach_the_in_process_default(monkeypatch, tmp_path: Path):
    from smartlab_plugins import settings

    monkeypatch.setenv("SMARTLAB_DATA_ROOTS", os.pathsep.join([str(tmp_path), "/x"]))
    assert settings.data_roots() == [str(tmp_path), "/x"]
    monkeypatch.delenv("SMARTLAB_DATA_ROOTS")
    assert settings.data_roots() is None
