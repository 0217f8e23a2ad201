"""The SmartLab callback as a session meets it: never raises, never blocks, counts what it drops."""

from __future__ import annotations

import logging

import bluesky.plans as bp
import pytest
from ophyd.sim import det
from sample_plugins import Slow
from tiled_keys import API_KEY

from smartlab_plugins import SmartLab, TiledUnavailableError
from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.results import find_analyses, read_events
from smartlab_plugins.server import free_port


def test_process_isolation_analyses_a_scan_and_publishes_to_tiled(RE, make_smartlab, client):
    beam = make_devices(seed=2)
    smartlab = make_smartlab(isolation="process", plugins=["peak_stats"])
    RE.subscribe(smartlab)

    (uid,) = RE(bp.scan([beam["beam"]], beam["steer"], -3, 3, 13))
    assert smartlab.flush()

    (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
    metadata = analysis.metadata
    assert metadata["status"] == "complete"
    assert metadata["scan_id"] == client[uid].metadata["start"]["scan_id"]
    assert metadata["plugin_version"] == "1.0.0"
    table = read_events(analysis)
    assert list(table["seq_num"]) == list(range(1, 14))
    centres = beam["beam"].centre0 + beam["beam"].drift * client[uid]["primary"]["steer"].read()
    assert (
        abs(table["beam_profile_centroid"] - centres).max() < 2.0
    )  # pixels: noise pulls the weakest frames inwards
    assert metadata["summary"]["beam_profile_sum"]["x"] == "steer"
    assert client[uid]["primary"]["beam_profile"].shape == (13, 256)  # the raw run, via TiledWriter


@pytest.mark.parametrize(
    ("name", "doc"),
    [
        (None, None),
        ("event", 5),
        (object(), {}),
        ("start", {"uid": ["unhashable"]}),
        ("stop", {}),
        ("descriptor", "text"),
        (["list"], {"a": 1}),
    ],
)
def test_calling_with_anything_never_raises(make_smartlab, name, doc):
    smartlab = make_smartlab(plugins=[])
    smartlab(name, doc)
    assert smartlab.flush()


def test_garbage_does_not_stop_the_following_scan(RE, make_smartlab, client):
    smartlab = make_smartlab(plugins=["peak_stats"])
    for name, doc in [(None, None), ("event", {"descriptor": "x"}), ("stop", {"run_start": "y"})]:
        smartlab(name, doc)
    RE.subscribe(smartlab)
    (uid,) = RE(bp.count([det], 3))
    smartlab.flush()
    assert (
        find_analyses(client, run_uid=uid, plugin="peak_stats")[0].metadata["status"] == "complete"
    )


def test_when_analysis_falls_behind_the_scan_goes_on_and_drops_are_counted(
    RE, make_smartlab, client, caplog
):
    """With ``backpressure="drop"``, what does not fit is dropped (or skipped for the
    slow plugin) and every event is accounted for."""
    smartlab = make_smartlab(plugins=[], max_pending=3, max_batch=2, backpressure="drop")
    smartlab.register(Slow(delay=0.2))
    smartlab.enable("slow")
    RE.subscribe(smartlab)

    with caplog.at_level(logging.WARNING, logger="smartlab_plugins"):
        with smartlab._host._send_lock:  # the worker takes nothing while the scan runs
            (uid,) = RE(bp.count([det], 40))
        smartlab.flush()

    # all but the 3 in memory, less those the feeder took before it was held
    assert smartlab.dropped_total >= 40 - 3 - 5
    (analysis,) = find_analyses(client, run_uid=uid, plugin="slow")
    assert analysis.metadata["dropped"] == smartlab.dropped_total
    metadata = analysis.metadata
    assert metadata["events"] + metadata["dropped"] + metadata["skipped"] == 40
    assert "SmartLab could not keep up" in caplog.text


def test_unreachable_tiled_says_how_to_start_one():
    with pytest.raises(TiledUnavailableError, match="smartlab serve"):
        SmartLab(f"http://127.0.0.1:{free_port()}", "key")


def test_wrong_key_says_which_setting_to_fix(tiled_server):
    with pytest.raises(TiledUnavailableError, match="SMARTLAB_API_KEY"):
        SmartLab(tiled_server.uri, "wrongkey")


def test_no_server_configured_says_what_to_set(monkeypatch):
    monkeypatch.delenv("SMARTLAB_TILED_URI", raising=False)
    with pytest.raises(TiledUnavailableError, match="SMARTLAB_TILED_URI"):
        SmartLab()


def test_no_arguments_reads_the_environment(tiled_env, RE, client):
    with SmartLab(isolation="thread", plugins=["peak_stats"]) as smartlab:
        RE.subscribe(smartlab)
        (uid,) = RE(bp.count([det], 2))
    assert (
        find_analyses(client, run_uid=uid, plugin="peak_stats")[0].metadata["status"] == "complete"
    )


def test_unknown_plugin_lists_the_available_ones(tiled_server):
    with pytest.raises(KeyError, match=r"available plugins: .*peak_stats"):
        SmartLab(tiled_server.uri, API_KEY, plugins=["peak_stat"], isolation="thread")
