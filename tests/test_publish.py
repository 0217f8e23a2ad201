"""Results in Tiled: incremental, linked to the run, and consistent for a reader polling live."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import bluesky.plans as bp
import httpx
import numpy as np
import pandas as pd
from tiled_keys import API_KEY

from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.hookspecs import Results
from smartlab_plugins.layout import ANALYSIS_SPEC
from smartlab_plugins.publish import Publisher
from smartlab_plugins.results import EventFollower, find_analyses, read_events
from smartlab_plugins.retry import Backoff

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
        if name == "start":  # written whole, then renamed: the reader never sees it half-written
            uid_file.with_suffix(".part").write_text(doc["uid"])
            uid_file.with_suffix(".part").rename(uid_file)
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
    # found from the run itself
    (path,) = client[uid].metadata["smartlab_analyses"]["peak_stats"]
    assert client[path].metadata["analysis_uid"] == metadata["analysis_uid"]


def test_a_follower_reads_each_new_row_once_during_and_after_the_scan(RE, make_smartlab, client):
    beam = make_devices(seed=7)
    smartlab = make_smartlab(plugins=["peak_stats"])
    polled: list = []
    follower: dict = {}

    def poll_during(name, doc):  # on the RunEngine thread, at events 4 and 8
        if name == "start":
            follower["uid"] = doc["uid"]
        if name == "event" and doc["seq_num"] in (4, 8):
            smartlab.flush()
            if "it" not in follower:
                (analysis,) = find_analyses(client, run_uid=follower["uid"], plugin="peak_stats")
                follower["it"] = EventFollower(analysis)
            polled.append(follower["it"].poll())

    RE.subscribe(smartlab)
    RE.subscribe(poll_during)
    (uid,) = RE(bp.count([beam["beam"]], num=12))
    smartlab.flush()
    polled.append(follower["it"].poll())
    polled.append(follower["it"].poll())  # nothing new

    assert [list(part["seq_num"]) for part in polled[:2]] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert list(polled[2]["seq_num"]) == [9, 10, 11, 12] and polled[3].empty
    (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
    joined = pd.concat(polled[:3], ignore_index=True)
    pd.testing.assert_frame_equal(joined, read_events(analysis))


def test_results_arriving_within_the_min_interval_are_merged_into_one_append(tiled_server, client):
    appends = {}
    for min_interval in (0.0, 1.0):
        publisher = Publisher(tiled_server.client, min_interval=min_interval)
        key = publisher.open_analysis({"plugin": "merge-test", "run_uid": f"merge-{min_interval}"})
        publisher.flush(30)
        for seq_num in range(1, 11):  # 10 events, 200 ms apart: slower than a part is written,
            results = Results(scalars={"value": np.array([float(seq_num)])})  # even on a busy CI
            publisher.append(key, "primary", np.array([seq_num]), np.array([0.0]), results)
            if seq_num == 1 or min_interval == 0.0:
                # the stream's containers exist: each later part is one write; with no
                # min_interval each append is written before the next comes, however busy
                # the server, so each is its own write
                publisher.flush(30)
            time.sleep(0.2)
        assert publisher.close(30)
        (analysis,) = find_analyses(client, run_uid=f"merge-{min_interval}")
        # the analysis and stream containers, then one write per append to the events table
        appends[min_interval] = publisher.stats()["written"] - 2
        assert list(read_events(analysis)["value"]) == [float(s) for s in range(1, 11)]
    # min_interval=1: the first event's append, then at most one a second over the 1.8 s that
    # follow (two), and what close() flushes; min_interval=0: one append per event.
    assert appends[1.0] <= 4 and appends[0.0] == 10, appends


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("PUT", "http://tiled.invalid/api/v1/table/full/x")
    return httpx.HTTPStatusError("", request=request, response=httpx.Response(code))


def test_backoff_doubles_to_its_cap_and_gives_up_on_what_will_not_pass() -> None:
    """Both writers share one backoff: an outage is retried at growing intervals for as
    long as it lasts, a 5xx only a few times, a refusal (4xx) never; a success resets."""
    backoff = Backoff(initial=0.5, maximum=2.0, server_error_attempts=2)
    away = httpx.ConnectError("connection refused")
    assert [backoff.next_delay(away) for _ in range(5)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    backoff.succeeded()
    assert backoff.next_delay(away) == 0.5
    backoff.succeeded()
    failing = _status_error(503)
    assert [backoff.next_delay(failing) for _ in range(3)] == [0.5, 1.0, None]
    assert backoff.next_delay(away) == 0.5  # given up: the next request starts afresh
    assert backoff.next_delay(_status_error(403)) is None
    assert backoff.next_delay(_status_error(429)) == 0.5
