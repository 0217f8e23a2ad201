"""Results in Tiled: incremental, linked to the run, and consistent for a reader polling live."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import bluesky.plans as bp
from conftest import API_KEY

from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.publish import ANALYSIS_SPEC
from smartlab_plugins.results import find_analyses, read_events

READER = Path(__file__).with_name("live_reader.py")


def test_a_separate_process_reads_results_during_the_scan_without_errors(
    RE, make_smartlab, tiled_server, client, tmp_path
):
    beam = make_devices(seed=5)
    smartlab = make_smartlab(isolation="process", plugins=["peak_stats"])
    uid_file, report_file = tmp_path / "uid", tmp_path / "report.json"
    reader = subprocess.Popen(
        [
            sys.executable,
            str(READER),
            tiled_server.uri,
            API_KEY,
            str(uid_file),
            str(report_file),
            "150",
        ]
    )
    ready = tmp_path / "ready"
    deadline = time.time() + 120
    while not ready.exists() and reader.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # the reader's imports and connection must not eat into the scan
    stopped_at = {}

    def note(name, doc):
        if name == "start":
            uid_file.write_text(doc["uid"])
        elif name == "stop":
            stopped_at["time"] = time.time()

    RE.subscribe(note)
    RE.subscribe(smartlab)
    RE(bp.count([beam["beam"]], num=200, delay=0.05))
    smartlab.flush()
    assert reader.wait(timeout=120) == 0
    report = json.loads(report_file.read_text())

    assert report["errors"] == []
    during = [r for r in report["reads"] if r["time"] < stopped_at["time"] and r["rows"]]
    assert during, "the reader saw no results before the stop document"
    for read in report["reads"]:  # every read is a consistent prefix of the run
        assert read["seq"] == list(range(1, read["rows"] + 1))
    assert report["reads"][-1]["rows"] == 200
    assert [r["rows"] for r in report["reads"]] == sorted(r["rows"] for r in report["reads"])


def test_results_are_found_by_run_uid_and_plugin_with_their_provenance(RE, make_smartlab, client):
    beam = make_devices(seed=6)
    smartlab = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab)
    (uid,) = RE(bp.count([beam["beam"]], num=4), sample="LaB6")
    smartlab.flush()

    (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
    metadata = analysis.metadata
    assert [spec.name for spec in analysis.specs] == [ANALYSIS_SPEC]
    for key in (
        "run_uid",
        "scan_id",
        "plugin",
        "plugin_version",
        "model",
        "sha256",
        "device",
        "status",
    ):
        assert key in metadata
    assert metadata["device"] == "cpu"
    assert metadata["model"] is None  # peak_stats has no model
    assert metadata["streams"] == ["primary"]
    assert len(read_events(analysis)) == 4
    assert client[uid].metadata["start"]["sample"] == "LaB6"
