"""Documents through a real Redis broker to real ``smartlab worker`` processes.

Each test starts its own redis-server on a free loopback port; the Tiled server is the
session's. Workers run as separate processes, as they would on other machines.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import bluesky.plans as bp
import msgpack
import numpy as np
import pytest
import redis

from smartlab_plugins.adaptive.qserver import RedisServer
from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.results import find_analyses, read_events
from smartlab_plugins.server import free_port
from smartlab_plugins.transport import BrokerPublisher, BrokerSettings, BrokerUnreachable, codec


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def broker_analysis(client, uid: str, timeout: float = 60.0):
    """The broker workers' peak_stats analysis of run ``uid``, once complete."""
    found = []

    def complete() -> bool:
        found[:] = find_analyses(client, run_uid=uid, plugin="peak_stats", transport="redis")
        return bool(found) and found[-1].metadata["status"] == "complete"

    wait_for(complete, timeout, f"the worker to complete run {uid[:8]}")
    assert len(found) == 1, f"{len(found)} analyses of one run"
    return found[0]


def assert_every_event_once(analysis, events: int) -> None:
    rows = read_events(analysis)
    assert rows["seq_num"].tolist() == list(range(1, events + 1))
    assert rows.drop(columns=["seq_num", "time"]).notna().all().all()


def pending(client: redis.Redis) -> int:
    settings = BrokerSettings.load()
    return sum(
        client.xpending(settings.stream(s), settings.group)["pending"]
        for s in range(settings.shards)
    )


def test_documents_survive_the_codec_and_pickles_are_refused():
    doc = {"uid": "e", "seq_num": 3, "data": {"img": np.arange(6.0).reshape(2, 3), "x": 1.5}}
    name, back = codec.decode({codec.NAME: b"event", codec.DOC: codec.encode(doc)})
    assert name == "event" and back["seq_num"] == 3 and back["data"]["x"] == 1.5
    np.testing.assert_array_equal(back["data"]["img"], doc["data"]["img"])
    with pytest.raises(TypeError, match="objects"):
        codec.encode({"a": np.array([object()])})
    forged = msgpack.packb({"a": msgpack.ExtType(1, msgpack.packb(["|O", [1]]) + b"\0" * 8)})
    with pytest.raises(codec.MalformedMessage, match="objects"):
        codec.decode({codec.NAME: b"event", codec.DOC: forged})


def test_results_through_the_broker_equal_the_in_process_ones(
    RE, broker, broker_client, start_worker, make_smartlab, client
):
    """The same scan analysed by an in-process SmartLab and, through the broker, by a
    ``smartlab worker`` process: the same rows, and every broker entry acknowledged."""
    worker = start_worker("solo")
    wait_for(lambda: len(worker.shards(broker_client)) == 8, 60, "the worker to own the shards")
    local = make_smartlab(plugins=["peak_stats"], raw=False)
    publisher = BrokerPublisher()
    RE.subscribe(local)
    RE.subscribe(publisher)
    (uid,) = RE(bp.scan([make_devices(seed=3)["beam"]], make_devices(seed=3)["steer"], -4, 4, 41))
    assert publisher.flush(timeout=30) and local.flush(timeout=60)
    publisher.close()

    remote = broker_analysis(client, uid)
    (in_process,) = [a for a in find_analyses(client, run_uid=uid) if "transport" not in a.metadata]
    remote_rows, local_rows = read_events(remote), read_events(in_process)
    assert len(remote_rows) == 41
    assert remote_rows.equals(local_rows)
    assert remote.metadata["summary"] == in_process.metadata["summary"]
    wait_for(lambda: pending(broker_client) == 0, 10, "every entry to be acknowledged")


def test_a_worker_killed_mid_run_is_taken_over_with_nothing_lost_or_repeated(
    RE, broker, broker_client, start_worker, client
):
    """Two workers share the shards; the one analysing a run is killed (SIGKILL) at event
    20 of 60; the other takes its shard over after the lease and finishes the run: every
    event's results once, in the same analysis node."""
    first, second = start_worker("a"), start_worker("b")
    wait_for(
        lambda: len(first.shards(broker_client)) == len(second.shards(broker_client)) == 4,
        60,
        "the workers to share the shards",
    )
    owner = first if 0 in first.shards(broker_client) else second  # a new publisher starts at 0
    other = second if owner is first else first
    publisher = BrokerPublisher()
    killed = threading.Event()

    def kill_at_event_20(name, doc):
        if name == "event" and doc["seq_num"] == 20:
            threading.Thread(target=lambda: (time.sleep(0.3), owner.kill(), killed.set())).start()

    RE.subscribe(kill_at_event_20)
    RE.subscribe(publisher)
    beam = make_devices(seed=5)
    (uid,) = RE(bp.count([beam["beam"]], num=60, delay=0.1))
    assert publisher.flush(timeout=30)
    publisher.close()

    assert killed.is_set()
    analysis = broker_analysis(client, uid, timeout=60)
    assert_every_event_once(analysis, 60)
    assert analysis.metadata["worker"] == owner.name  # carried on, not made again
    assert "took over shard 0" in other.log
    assert "already in Tiled" in other.log
    wait_for(lambda: pending(broker_client) == 0, 10, "every entry to be acknowledged")


def test_an_unreachable_broker_at_start_names_the_uri(monkeypatch, tiled_server):
    uri = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BrokerUnreachable, match=f"cannot reach the SmartLab broker at {uri}"):
        BrokerPublisher(uri)
    monkeypatch.setenv("SMARTLAB_BROKER_URI", uri)
    with pytest.raises(BrokerUnreachable, match="from SMARTLAB_BROKER_URI"):
        BrokerPublisher()
    done = subprocess.run(
        [sys.executable, "-m", "smartlab_plugins.transport.cli", "worker", "--tiled",
         tiled_server.uri],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"cannot reach the SmartLab broker at {uri}" in done.stderr


def test_a_broker_restarted_mid_scan_loses_nothing(
    RE, broker, broker_client, start_worker, client, caplog
):
    """Redis shut down for 3 s at event 10 of a 40-event scan: the scan goes on at its pace,
    the documents wait on local disk, and all reach the worker once Redis is back."""
    worker = start_worker("steady")
    wait_for(lambda: len(worker.shards(broker_client)) == 8, 60, "the worker to own the shards")
    publisher = BrokerPublisher()
    restarted = threading.Event()
    successors: list[RedisServer] = []

    def restart_broker():
        broker_client.shutdown(save=True)  # its streams and pending entries go to dump.rdb
        broker.process.wait(timeout=20)
        time.sleep(3.0)
        successors.append(RedisServer(broker.run_dir, port=broker.port).start())
        restarted.set()

    def outage_at_event_10(name, doc):
        if name == "event" and doc["seq_num"] == 10:
            threading.Thread(target=restart_broker, daemon=True).start()

    RE.subscribe(outage_at_event_10)
    RE.subscribe(publisher)
    try:
        started = time.monotonic()
        (uid,) = RE(bp.count([make_devices(seed=7)["beam"]], num=40, delay=0.15))
        scan_s = time.monotonic() - started
        wait_for(restarted.is_set, 30, "Redis to restart")
        assert publisher.flush(timeout=30)
        status = publisher.status()
        publisher.close()
        analysis = broker_analysis(client, uid)
    finally:
        for successor in successors:  # the fixture stops only the Redis it started
            successor.stop()

    assert scan_s < 40 * 0.15 * 1.5, f"the scan took {scan_s:.1f} s"
    assert status["kept_while_away"] > 0 and status["unsendable"] == 0
    assert "lost the broker" in caplog.text and "is back" in caplog.text
    assert_every_event_once(analysis, 40)
    assert "lost the broker" in worker.log


def test_malformed_entries_are_rejected_logged_and_acknowledged(
    RE, broker, broker_client, start_worker, client
):
    worker = start_worker("careful")
    wait_for(lambda: len(worker.shards(broker_client)) == 8, 60, "the worker to own the shards")
    stream = BrokerSettings.load().stream(0)
    garbage = [
        {b"junk": b"1"},
        {codec.NAME: b"event", codec.DOC: b"\xc1\xff not msgpack"},
        {codec.NAME: b"event", codec.DOC: msgpack.packb([1, 2, 3])},
        {codec.NAME: b"\xff\xfe", codec.DOC: msgpack.packb({})},
        {codec.NAME: b"event", codec.DOC: msgpack.packb({"x": msgpack.ExtType(9, b"")})},
        {codec.NAME: b"event", codec.DOC: msgpack.packb({"descriptor": "nope", "seq_num": 1})},
    ]
    for fields in garbage:
        broker_client.xadd(stream, fields)
    publisher = BrokerPublisher()
    RE.subscribe(publisher)
    (uid,) = RE(bp.count([make_devices(seed=9)["beam"]], num=10))
    assert publisher.flush(timeout=30)
    publisher.close()

    assert_every_event_once(broker_analysis(client, uid), 10)
    assert worker.process.poll() is None
    assert worker.log.count("rejected entry") == 5
    for reason in ("no 'name' field", "undecodable", "not a mapping", "not UTF-8", "extension"):
        assert reason in worker.log
    wait_for(lambda: pending(broker_client) == 0, 10, "every entry to be acknowledged")


def test_the_broker_password_is_never_shown(monkeypatch, tiled_server, caplog):
    """It used to be logged in clear on every worker start and in connection errors."""
    secret = "s3cret-broker-password"
    uri = f"redis://:{secret}@127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.DEBUG), pytest.raises(BrokerUnreachable) as refused:
        BrokerPublisher(uri)
    assert "redis://:***@127.0.0.1" in str(refused.value)
    assert secret not in str(refused.value) and secret not in caplog.text
    monkeypatch.setenv("SMARTLAB_BROKER_URI", uri)
    done = subprocess.run(
        [sys.executable, "-m", "smartlab_plugins.transport.cli", "worker", "--tiled",
         tiled_server.uri],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "redis://:***@" in done.stderr
    assert secret not in done.stderr + done.stdout
