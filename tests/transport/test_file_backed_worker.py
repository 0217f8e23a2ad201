"""``smartlab worker`` and file-backed detectors: documents come over the network, so the worker
reads no detector file until data roots are configured, and then only under them."""

from __future__ import annotations

from pathlib import Path

import bluesky.plans as bp
from bluesky import RunEngine
from ophyd_async.core import StaticFilenameProvider, StaticPathProvider, init_devices
from ophyd_async.sim import SimBlobDetector
from test_transport import wait_for

from smartlab_plugins.results import find_analyses, read_errors, read_events
from smartlab_plugins.transport import BrokerPublisher
from smartlab_plugins.transport.local import WorkerProcess


def finished_analysis(client, uid: str, timeout: float = 90.0):
    found = []

    def finished() -> bool:
        found[:] = find_analyses(client, run_uid=uid, plugin="peak_stats", transport="redis")
        return bool(found) and found[-1].metadata["status"] != "running"

    wait_for(finished, timeout, f"the worker to finish run {uid[:8]}")
    return found[-1]


def count_with_a_file_detector(folder: Path, events: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    RE = RunEngine()
    with init_devices():
        blob = SimBlobDetector(StaticPathProvider(StaticFilenameProvider("blob"), folder))
    publisher = BrokerPublisher()
    RE.subscribe(publisher)
    (uid,) = RE(bp.count([blob], events))
    assert publisher.flush(timeout=30)
    publisher.close()
    return uid


def test_a_worker_reads_detector_files_only_under_its_data_roots(
    broker, tiled_server, client, tmp_path: Path
):
    folder = tiled_server.external_dir / f"worker-{tmp_path.name}"
    folder.mkdir(parents=True)

    closed = WorkerProcess("closed", tiled_server.uri, tiled_server.api_key, tmp_path)
    try:
        uid = count_with_a_file_detector(folder / "a", 4)
        analysis = finished_analysis(client, uid)
    finally:
        closed.stop()
    assert "reads no detector files" in closed.log  # said at start
    assert analysis.metadata["status"] == "partial"
    messages = " ".join(read_errors(analysis)["message"])
    assert "no folder (no data roots configured)" in messages  # and per event
    assert read_events(analysis).empty

    opened = WorkerProcess(
        "opened",
        tiled_server.uri,
        tiled_server.api_key,
        tmp_path,
        extra_args=["--data-root", str(folder)],
    )
    try:
        uid = count_with_a_file_detector(folder / "b", 4)
        analysis = finished_analysis(client, uid)
    finally:
        opened.stop()
    assert analysis.metadata["status"] == "complete", read_errors(analysis)
    assert read_events(analysis)["seq_num"].tolist() == [1, 2, 3, 4]
