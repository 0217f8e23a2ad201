"""BatchAssembler: documents of real scans in, filled batches and clear rejections out."""

from __future__ import annotations

import copy
from pathlib import Path

import bluesky.plans as bp
import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from event_model import compose_run, pack_event_page
from ophyd.sim import det, img, motor

from smartlab_plugins.assembly.batching import BatchAssembler
from smartlab_plugins.devices.beam import make_devices


class Sink:
    """Collects what the assembler produces."""

    def __init__(self):
        self.runs, self.streams, self.batches, self.stops, self.problems = [], [], [], [], []

    def open_run(self, start):
        self.runs.append(start["uid"])

    def open_stream(self, run_uid, descriptor):
        self.streams.append(descriptor["name"])

    def add_batch(self, run_uid, batch):
        self.batches.append(batch)

    def close_run(self, stop):
        self.stops.append(stop["run_start"])

    def reject(self, problem):
        self.problems.append(problem)

    def column(self, field):
        return np.concatenate([b.data[field] for b in self.batches])


def scan_documents(plan) -> list[tuple[str, dict]]:
    docs = []
    RE = RunEngine()
    RE.subscribe(lambda name, doc: docs.append((name, copy.deepcopy(doc))))
    RE(plan)
    return docs


def assemble(docs, max_batch=256, flush_every=1) -> Sink:
    sink = Sink()
    assembler = BatchAssembler(sink, max_batch=max_batch)
    for i, (name, doc) in enumerate(docs):
        assembler(name, doc)
        if i % flush_every == 0:
            assembler.flush()
    assembler.flush()
    return sink


@pytest.fixture(scope="module")
def beam_scan():
    devices = make_devices(seed=3)
    return scan_documents(bp.scan([devices["beam"]], devices["steer"], -2, 2, 9))


def test_events_are_stacked_per_stream_in_order(beam_scan):
    sink = assemble(beam_scan, flush_every=3)
    assert sink.problems == []
    assert sink.streams == ["primary"]
    seq = np.concatenate([b.seq_num for b in sink.batches])
    np.testing.assert_array_equal(seq, np.arange(1, 10))
    assert sink.column("beam_profile").shape == (9, 256)
    assert sink.column("beam_image").shape == (9, 64, 256)
    events = [doc for name, doc in beam_scan if name == "event"]
    np.testing.assert_array_equal(sink.column("beam_profile")[4], events[4]["data"]["beam_profile"])
    assert len(sink.stops) == 1


def test_event_pages_give_the_same_batches_as_events(beam_scan):
    paged = []
    for name, doc in beam_scan:
        paged.append(("event_page", pack_event_page(doc)) if name == "event" else (name, doc))
    by_event, by_page = assemble(beam_scan), assemble(paged)
    for field in ("beam_profile", "beam_image", "steer"):
        np.testing.assert_array_equal(by_event.column(field), by_page.column(field))


def test_batches_never_exceed_max_batch(beam_scan):
    sink = assemble(beam_scan, max_batch=4, flush_every=100)
    assert [len(b) for b in sink.batches] == [4, 4, 1]


def test_frames_written_to_files_are_read_back_before_plugins_see_them(tmp_path: Path):
    img.save_path = str(tmp_path)
    docs = scan_documents(bp.count([img, det], num=3))
    assert any(name == "datum" for name, _ in docs)

    sink = assemble(docs)

    assert sink.problems == []
    frames = sink.column("img")
    assert frames.shape == (3, 10, 10)
    (resource,) = [doc for name, doc in docs if name == "resource"]
    first_file = Path(resource["root"], resource["resource_path"] + "_0.npy")
    np.testing.assert_array_equal(frames[0], np.load(first_file))


def test_stream_resources_are_read_from_hdf5(tmp_path: Path):
    frames = np.random.default_rng(0).random((4, 5, 6))
    path = tmp_path / "frames.h5"
    with h5py.File(path, "w") as f:
        f["entry/data"] = frames
    run = compose_run()
    descriptor = run.compose_descriptor(
        name="primary",
        data_keys={
            "x": {"source": "sim", "dtype": "number", "shape": []},
            "cam": {
                "source": "sim",
                "dtype": "array",
                "shape": [5, 6],
                "dtype_numpy": "<f8",
                "external": "STREAM:",
            },
        },
    )
    resource = run.compose_stream_resource(
        mimetype="application/x-hdf5",
        uri=f"file://localhost{path}",
        data_key="cam",
        parameters={"dataset": "entry/data"},
    )
    docs = [
        ("start", run.start_doc),
        ("descriptor", descriptor.descriptor_doc),
        ("stream_resource", resource.stream_resource_doc),
    ]
    for i in range(4):
        docs.append(
            (
                "stream_datum",
                resource.compose_stream_datum(
                    indices={"start": i, "stop": i + 1},
                    seq_nums={"start": i + 1, "stop": i + 2},
                    descriptor=descriptor.descriptor_doc,
                ),
            )
        )
        docs.append(
            (
                "event",
                descriptor.compose_event(
                    data={"x": float(i)}, timestamps={"x": 0.0}, seq_num=i + 1
                ),
            )
        )
    docs.append(("stop", run.compose_stop()))

    sink = assemble(docs)

    assert sink.problems == []
    np.testing.assert_array_equal(sink.column("cam"), frames)
    np.testing.assert_array_equal(sink.column("x"), [0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("name", "mangle", "expected"),
    [
        ("event", lambda d: d.pop("seq_num"), "'seq_num' is a required property"),
        ("event", lambda d: d["data"].pop("beam_profile"), "['beam_profile']"),
        (
            "event",
            lambda d: d["data"].update(beam_profile=np.zeros(100)),
            "field 'beam_profile' has shape (100,), the descriptor says (256,)",
        ),
        ("event", lambda d: d.update(descriptor="nope"), "refers to unknown descriptor 'nope'"),
        ("event", lambda d: d.update(data="not a dict"), "invalid document"),
    ],
)
def test_malformed_events_are_rejected_with_a_clear_reason(beam_scan, name, mangle, expected):
    docs = copy.deepcopy(beam_scan)
    third = [doc for n, doc in docs if n == name][2]
    mangle(third)

    sink = assemble(docs)

    assert len(sink.problems) == 1, sink.problems
    assert expected in str(sink.problems[0])
    assert len(np.concatenate([b.seq_num for b in sink.batches])) == 8  # the others are analysed
    assert len(sink.stops) == 1


@pytest.mark.parametrize(
    ("name", "doc", "expected"),
    [
        ("gossip", {}, "unknown document name"),
        ("event", ["not", "a", "dict"], "expected a dict, got list"),
        ("stop", {"uid": "x"}, "missing required key(s) ['run_start']"),
        ("descriptor", {"uid": "d", "run_start": "gone"}, "'data_keys' is a required property"),
        (None, None, "unknown document name"),
    ],
)
def test_documents_that_fit_nowhere_are_rejected(name, doc, expected):
    sink = Sink()
    BatchAssembler(sink)(name, doc)
    assert len(sink.problems) == 1
    assert expected in str(sink.problems[0])


def test_scalar_scan_keeps_motor_and_detector_columns():
    docs = scan_documents(bp.scan([det], motor, -1, 1, 5))
    sink = assemble(docs)
    np.testing.assert_allclose(sink.column("motor"), np.linspace(-1, 1, 5))
    assert sink.column("det").shape == (5,)


def test_documents_of_a_run_that_never_started_are_rejected():
    run = compose_run()
    descriptor = run.compose_descriptor(name="primary", data_keys={})
    sink = Sink()
    BatchAssembler(sink)("descriptor", descriptor.descriptor_doc)
    assert f"no open run with uid '{run.start_doc['uid']}'" in str(sink.problems[0])
