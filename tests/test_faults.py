"""Plugins that hang, crawl, leak or raise, all in one real scan: the scan and the others go on.

Each fault stays with its plugin: the scan is never aborted, every healthy
plugin's results are complete, and the faulty plugin's failure is in Tiled
with the run uid, the event it was on and where it failed.
"""

from __future__ import annotations

import time

import bluesky.plans as bp
import pytest
from sample_plugins import AlwaysFails, Crawls, Hangs, Leaks, TotalIntensity

from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.results import find_analyses, read_errors, read_events

EVENTS = 60
TIMEOUT_S = 3.0


def analysis_of(client, uid: str, plugin: str):
    (analysis,) = find_analyses(client, run_uid=uid, plugin=plugin)
    return analysis


@pytest.fixture
def faulty():
    plugins = {
        "hangs": Hangs(at=5),
        "crawls": Crawls(per_event=0.2),
        "always_fails": AlwaysFails(),
        "total_intensity": TotalIntensity(),
    }
    yield plugins
    plugins["hangs"].release.set()  # let the abandoned thread end with the test


def test_hung_slow_and_raising_plugins_never_hold_up_the_scan_or_the_others(
    RE, make_smartlab, client, faulty
):
    beam = make_devices(seed=21)
    smartlab = make_smartlab(
        plugins=["peak_stats"],
        plugin_timeout=TIMEOUT_S,
        lane_capacity=8,
    )
    for plugin in faulty.values():
        smartlab.register(plugin)
        smartlab.enable(plugin.name)
    RE.subscribe(smartlab)

    started = time.monotonic()
    (uid,) = RE(bp.count([beam["beam"]], num=EVENTS, delay=0.02))
    scan_s = time.monotonic() - started
    assert smartlab.flush(timeout=60)
    # A second run gets a fresh lane for every plugin: the healthy ones still work.
    (second,) = RE(bp.count([beam["beam"]], num=3))
    assert smartlab.flush(timeout=60)

    assert client[uid].metadata["stop"]["exit_status"] == "success"
    # far less than the crawling plugin alone needs (0.2 s an event): the scan never waited
    assert scan_s < EVENTS * 0.2, f"the scan took {scan_s:.1f} s"
    for healthy in ("peak_stats", "total_intensity"):
        for run in (uid, second):
            analysis = analysis_of(client, run, healthy)
            assert analysis.metadata["status"] == "complete"
            expected = EVENTS if run == uid else 3
            assert read_events(analysis)["seq_num"].tolist() == list(range(1, expected + 1))

    hung = analysis_of(client, uid, "hangs")
    assert hung.metadata["timed_out"] and hung.metadata["status"] == "disabled"
    (timeout,) = read_errors(hung).query("stage == 'timeout'").itertuples()
    assert timeout.seq_num <= 5 and timeout.error == "PluginTimeout"
    assert f"plugin_timeout={TIMEOUT_S:g} s" in timeout.message
    assert "sample_plugins.py" in timeout.traceback and "smartlab_analyze" in timeout.traceback
    assert hung.metadata["run_uid"] == uid

    slow = analysis_of(client, uid, "crawls")  # far behind: waited for, then timed out
    assert slow.metadata["timed_out"] and slow.metadata["status"] == "disabled"
    (behind,) = read_errors(slow).query("stage == 'timeout'").itertuples()
    assert f"plugin_timeout={TIMEOUT_S:g} s" in behind.message
    assert slow.metadata["events"] < EVENTS

    failing = analysis_of(client, uid, "always_fails")
    assert set(read_errors(failing)["stage"]) == {"analyze", "disabled"}

    summary = next(s for s in smartlab.run_summaries if s["run_uid"] == uid)
    assert summary["plugins"]["hangs"]["timed_out"]
    assert summary["plugins"]["crawls"]["timed_out"]


def test_a_leaking_plugin_is_disabled_for_the_run(RE, make_smartlab, client):
    """A plugin keeping 16 MB per event is stopped once it has grown 200 MB.

    Growth is charged only for calls that ran alone (resident memory is one figure
    for the process), so the leaking plugin runs alone here: beside others, whether
    enough of its calls run alone depends on scheduling. That the others go on
    beside a faulty plugin is the test above."""
    beam = make_devices(seed=22)
    smartlab = make_smartlab(plugins=[], max_growth_mb=200)
    leaks = Leaks(mb_per_event=16)
    smartlab.register(leaks)
    smartlab.enable(leaks.name)
    RE.subscribe(smartlab)

    (uid,) = RE(bp.count([beam["beam"]], num=EVENTS, delay=0.02))
    assert smartlab.flush(timeout=60)

    leaking = analysis_of(client, uid, "leaks")
    (memory,) = read_errors(leaking).query("stage == 'memory'").itertuples()
    assert "max_growth_mb=200" in memory.message and memory.error == "PluginMemoryGrowth"
    assert leaking.metadata["status"] == "disabled"
    assert leaking.metadata["events"] < EVENTS
    assert len(leaks.kept) * 16 < 200 * 5, "it went on long after its limit"
