"""Nothing lost when Tiled goes away mid-scan, or when the worker is killed mid-run.

Each test runs its own real Tiled server (not the session's), so that it can
stop and restart it on the same port and data folder, as an outage would.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bluesky.plans as bp
import numpy as np
import pytest
from tiled_keys import API_KEY

from smartlab_plugins import SmartLab
from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.hookspecs import Results
from smartlab_plugins.publish import Publisher
from smartlab_plugins.results import find_analyses, read_array, read_events
from smartlab_plugins.server import EmbeddedServer

OUTAGE_S = 30.0


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path / "tiled", api_key=API_KEY) as server:
        yield server


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def assert_every_event_once(client, run_uid: str, events: int) -> None:
    """The run's peak_stats analysis is complete with each event's results exactly once."""
    (analysis,) = find_analyses(client, run_uid=run_uid, plugin="peak_stats")
    assert analysis.metadata["status"] == "complete"
    rows = read_events(analysis)
    assert rows["seq_num"].tolist() == list(range(1, events + 1))
    assert rows.drop(columns=["seq_num", "time"]).notna().all().all()


def test_a_30_s_tiled_outage_mid_scan_loses_no_results(RE, own_server: EmbeddedServer, caplog):
    """Tiled stopped for 30 s while a scan runs: the scan finishes on time, every result
    is written after the restart, once, in order, and so is the raw run."""
    beam = make_devices(seed=11)
    smartlab = SmartLab(own_server.uri, API_KEY, plugins=["peak_stats"])
    events, delay = 90, 0.5  # a 45 s scan; Tiled is away from about 5 s to 35 s
    analysed = []
    outage: dict[str, float] = {}

    def outage_at_event_10(name, doc):
        if name == "event":
            analysed.append(doc["seq_num"])
            if doc["seq_num"] == 10:
                threading.Thread(target=take_tiled_away, daemon=True).start()

    def take_tiled_away():
        own_server.stop()
        outage["stopped"] = time.monotonic()
        time.sleep(OUTAGE_S)
        own_server.start()
        outage["restarted"] = time.monotonic()

    RE.subscribe(outage_at_event_10)
    RE.subscribe(smartlab)
    started = time.monotonic()
    (uid,) = RE(bp.count([beam["beam"]], num=events, delay=delay))
    scan_s = time.monotonic() - started
    wait_for(lambda: "restarted" in outage, OUTAGE_S + 30, "Tiled to restart")
    assert smartlab.flush(timeout=120)
    stats = smartlab.status()["worker"]["publisher"]
    smartlab.close()

    assert len(analysed) == events
    assert scan_s < events * delay * 1.5, f"the scan took {scan_s:.0f} s"
    assert outage["restarted"] - outage["stopped"] >= OUTAGE_S
    client = own_server.client()
    assert_every_event_once(client, uid, events)
    assert stats["failed"] == 0 and stats["backlog_rounds"] == 0
    raw = client[uid]
    assert raw.metadata["stop"]["num_events"]["primary"] == events
    assert len(raw["primary"].read()["time"]) == events
    assert "cannot write to Tiled" in caplog.text
    assert "reachable again" in caplog.text


def test_a_killed_worker_leaves_its_results_for_the_next_one(
    RE, own_server: EmbeddedServer, spool_dir: Path
):
    """Results the worker made while Tiled was away survive ``kill -9`` of the worker,
    and a SmartLab started afterwards publishes them, once."""
    beam = make_devices(seed=12)
    smartlab = SmartLab(own_server.uri, API_KEY, plugins=["peak_stats"], raw=False)
    RE.subscribe(smartlab)
    own_server.stop()
    events = 25
    (uid,) = RE(bp.count([beam["beam"]], num=events))
    wait_for(lambda: smartlab.run_summaries, 60, "the worker to finish the run")
    wait_for(
        lambda: smartlab.status()["worker"]["publisher"]["not_journaled"] == 0,
        30,
        "the results to reach the journal",
    )
    assert smartlab.run_summaries[-1]["plugins"]["peak_stats"]["events"] == events
    os.kill(smartlab.status()["worker_pid"], signal.SIGKILL)
    wait_for(lambda: not smartlab.status()["worker_alive"], 30, "the worker to die")
    journals = [p for p in spool_dir.iterdir() if p.is_dir()]
    assert journals and any(list(j.glob("*.round")) for j in journals)

    own_server.start()
    successor = SmartLab(own_server.uri, API_KEY, plugins=["peak_stats"], raw=False)
    assert successor.flush(timeout=60)
    successor.close()
    smartlab.close(timeout=5)

    assert_every_event_once(own_server.client(), uid, events)
    assert not list(spool_dir.glob("*/*.round")), "rounds left in the journal"


def test_results_replayed_twice_are_written_once(own_server: EmbeddedServer, tmp_path):
    """A journal replayed after Tiled already has it (as after a lost answer, or a crash
    before the journal was cleared) leaves one copy of each part, with the right values."""
    journal, copy = tmp_path / "journal", tmp_path / "copy"
    own_server.stop()
    first = Publisher(own_server.client, journal_dir=journal, tiled_uri=own_server.uri)
    key = first.open_analysis({"plugin": "replayed", "run_uid": "r"})
    for start in (1, 4):
        seq = np.arange(start, start + 3)
        results = Results(scalars={"x": seq * 2.0}, arrays={"a": np.ones((3, 2)) * seq[:, None]})
        first.append(key, "primary", seq, seq * 1.0, results)
        assert not first.flush(timeout=1.0)  # Tiled is away: the rounds wait on disk
    first.close_analysis(key, {"status": "complete"})
    assert not first.close(timeout=1.0)
    assert list(journal.glob("*/released")), "the journal was not handed on"
    shutil.copytree(journal, copy)

    own_server.start()
    for _ in range(2):  # the journal, then the same journal again
        replayer = Publisher(own_server.client, journal_dir=journal, tiled_uri=own_server.uri)
        assert replayer.flush(timeout=60)
        assert replayer.close(timeout=60)
        assert not list(journal.glob("*/*.round"))
        shutil.rmtree(journal)
        shutil.copytree(copy, journal)

    (analysis,) = find_analyses(own_server.client(), plugin="replayed")
    assert read_events(analysis)["x"].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert read_array(analysis, "a")[:, 0].tolist() == [1, 2, 3, 4, 5, 6]
    assert analysis.metadata["status"] == "complete"
