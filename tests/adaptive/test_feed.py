"""ResultsFeed: the worker's live messages become observations; waiting is bounded."""

from __future__ import annotations

import threading
import time

import numpy as np

from smartlab_plugins.adaptive.feed import ResultsFeed, observations_of
from smartlab_plugins.hookspecs import EventBatch, Results
from smartlab_plugins.worker.records import live_message


class Views:
    """Stands in for SmartLab's live-view registry (add_live_view / remove_live_view)."""

    def __init__(self):
        self.views = []

    def add_live_view(self, view):
        self.views.append(view)

    def remove_live_view(self, view):
        self.views.remove(view)


def message(seq_nums, plugin="phase_cnn", run="run-1"):
    batch = EventBatch(
        stream="primary",
        seq_num=np.array(seq_nums),
        time=np.zeros(len(seq_nums)),
        data={},
        context={
            "sample_x": np.array([0.1 * n for n in seq_nums]),
            "note": np.array(["a"] * len(seq_nums)),
        },
    )
    results = Results(scalars={"p_tetragonal": np.array([0.5] * len(seq_nums))})
    return live_message(run, plugin, batch, results)


def test_a_results_message_becomes_one_observation_per_event():
    (first, second) = observations_of(message([3, 4]))
    assert (first.run_uid, first.seq_num, first.plugin) == ("run-1", 3, "phase_cnn")
    assert first.position == {"sample_x": 0.30000000000000004}  # strings are no positions
    assert second.values == {"p_tetragonal": 0.5}


def test_each_watched_plugin_gets_one_view_and_only_its_messages_count():
    views = Views()
    feed = ResultsFeed(views, plugins=["phase_cnn", "phase_cnn", "transition_lstm"])
    assert [v.plugin for v in views.views] == ["phase_cnn", "transition_lstm"]
    for view in views.views:  # SmartLab hands every message to every view
        view(message([1]))
    assert len(feed.since("run-1")) == 1 and feed.latest("run-1", "phase_cnn") == 1
    assert feed.since("run-1", 1) == [] and feed.since("another run") == []
    feed.close()
    assert views.views == []


def test_wait_for_returns_when_results_arrive_and_gives_up_after_its_timeout():
    feed = ResultsFeed(Views(), plugins=["phase_cnn"])
    threading.Timer(0.05, feed.put, args=(message([1, 2]),)).start()
    started = time.monotonic()
    assert feed.wait_for("run-1", 2, ["phase_cnn"], timeout=5.0)
    assert time.monotonic() - started < 4.0  # returned when they came, not at the timeout
    started = time.monotonic()
    assert not feed.wait_for("run-1", 3, ["phase_cnn"], timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 3.0
    feed.put({"not": "a results message"})  # malformed: ignored, never raises
