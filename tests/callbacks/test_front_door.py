"""The front door (``SmartLab.__call__`` and its feeder thread) survives what it is fed."""

from __future__ import annotations

import logging
import time

import bluesky.plans as bp
import pytest
from sample_plugins import Hangs

from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.results import find_analyses, read_events


def nested(depth: int) -> dict:
    """Metadata nested ``depth`` levels deep: more than pickle (and the RunEngine) can take."""
    top: dict = {}
    level = top
    for _ in range(depth):
        level["a"] = {}
        level = level["a"]
    return top


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_metadata_nested_too_deep_costs_its_run_only(RE, make_smartlab, client, caplog, isolation):
    """A start document pickle refuses (RecursionError) used to kill the feeder thread of a
    worker process: every later run of the session went unanalysed while ``close()`` said
    True. In a worker thread (nothing pickled) the worker refuses the document itself."""
    beam = make_devices(seed=5)
    recorded: list = []
    RE(bp.count([beam["beam"]], 2), lambda name, doc: recorded.append((name, doc)))
    smartlab = make_smartlab(plugins=["peak_stats"], raw=False, isolation=isolation)
    bad_uid = recorded[0][1]["uid"]
    with caplog.at_level(logging.ERROR):
        for name, doc in recorded:  # as a bad source would send it: the RunEngine itself
            if name == "start":  # cannot copy metadata this deep
                doc = {**doc, "deep": nested(600)}
            smartlab(name, doc)
        RE.subscribe(smartlab)
        (good_uid,) = RE(bp.count([beam["beam"]], 3))
        assert smartlab.flush(timeout=60)

    assert "RecursionError" in caplog.text
    if isolation == "process":  # refused at the front door, named, and counted
        assert smartlab.unsendable == 1
        assert f"'start' document of run {bad_uid[:8]}" in caplog.text
        assert "its run is not analysed" in caplog.text
    else:
        assert "rejected start document: RecursionError" in caplog.text
    (analysis,) = find_analyses(client, run_uid=good_uid, plugin="peak_stats")
    assert read_events(analysis)["seq_num"].tolist() == [1, 2, 3]
    assert analysis.metadata["status"] == "complete"
    assert not find_analyses(client, run_uid=bad_uid)


def test_close_that_runs_out_of_time_returns_false_and_says_what_is_pending(
    RE, make_smartlab, caplog
):
    """A worker still busy when ``close(timeout)`` ends (here: a plugin hung at the end of a
    run, within a long plugin_timeout) used to make close raise ``WorkerError: ... did not
    answer 'close'``; now it returns False and the log says what happened."""
    hangs = Hangs(at=1)
    smartlab = make_smartlab(plugins=[], plugin_timeout=120, raw=False)
    smartlab.register(hangs)
    smartlab.enable("hangs")
    RE.subscribe(smartlab)
    try:
        RE(bp.count([make_devices(seed=3)["beam"]], 2))
        with caplog.at_level(logging.ERROR):
            started = time.monotonic()
            assert smartlab.close(timeout=2) is False
            took = time.monotonic() - started
    finally:
        hangs.release.set()
    assert took < 2 + 10 + 10 + 5  # its own time, the request's grace, the worker's join
    assert "SmartLab's worker did not finish within 2 s" in caplog.text
    assert "journal" in caplog.text  # where what was not published waits
