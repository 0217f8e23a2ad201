"""Backpressure: a worker that cannot take documents loses nothing, and memory stays bounded."""

from __future__ import annotations

import logging
import time

import bluesky.plans as bp
from sample_plugins import Crawls

from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.results import find_analyses, read_events

EVENTS = 40
PER_EVENT_S = 0.2  # the plugin is slower than the scan, so the worker stays behind after it
MAX_PENDING = 20


def test_a_scan_ten_times_faster_than_analysis_spills_to_disk_and_loses_nothing(
    RE, make_smartlab, client, caplog
):
    """Documents beyond ``max_pending`` wait on disk, in order; every event is analysed.

    The backlog is caused, not hoped for: the hand-off to the worker is held for the
    whole scan (as a worker busy with a long batch holds it), so every event past
    ``max_pending`` must go to disk however fast the machine is.
    """
    beam = make_devices(seed=31)
    smartlab = make_smartlab(
        plugins=[], max_pending=MAX_PENDING, max_batch=4, lane_capacity=2, plugin_timeout=60
    )
    smartlab.register(Crawls(per_event=PER_EVENT_S))
    smartlab.enable("crawls")
    in_memory = []
    RE.subscribe(lambda name, doc: in_memory.append(smartlab.in_memory))
    RE.subscribe(smartlab)

    with caplog.at_level(logging.INFO, logger="smartlab_plugins"):
        with smartlab._host._send_lock:  # the worker takes nothing while the scan runs
            started = time.monotonic()
            (uid,) = RE(bp.count([beam["beam"]], num=EVENTS))
            scan_s = time.monotonic() - started
        assert smartlab.flush(timeout=120)

    assert scan_s < EVENTS * PER_EVENT_S  # the scan did not wait for the worker
    # all but MAX_PENDING, less the few the feeder took just before it was held
    assert smartlab.spilled_total >= EVENTS - MAX_PENDING - 10 and smartlab.dropped_total == 0
    assert max(in_memory) <= MAX_PENDING + 2  # the run's opening documents never wait on disk
    assert smartlab.status()["on_disk"] == 0
    (analysis,) = find_analyses(client, run_uid=uid, plugin="crawls")
    assert analysis.metadata["status"] == "complete"
    assert analysis.metadata["skipped"] == 0 and analysis.metadata["dropped"] == 0
    assert read_events(analysis)["seq_num"].tolist() == list(range(1, EVENTS + 1))
    assert "wait on local disk" in caplog.text and "caught up" in caplog.text
