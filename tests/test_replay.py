"""Replay: plugins re-run over a stored run reproduce the live results, published beside them."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
from tiled_keys import API_KEY

from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.replay import replay
from smartlab_plugins.results import find_analyses, read_events


def test_replay_reproduces_the_live_results(RE, make_smartlab, tiled_server, client):
    beam = make_devices(seed=4)
    smartlab = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab)
    (uid,) = RE(bp.scan([beam["beam"]], beam["steer"], -2, 2, 11))
    smartlab.flush()

    (summary,) = replay(uid, tiled_server.uri, API_KEY, plugins=["peak_stats"], progress=False)

    live, replayed = find_analyses(client, run_uid=uid, plugin="peak_stats")
    assert live.metadata["mode"] == "live"
    assert replayed.metadata["mode"] == "replay"
    assert summary["plugins"]["peak_stats"]["key"] == replayed.item["id"]
    live_table, replayed_table = read_events(live), read_events(replayed)
    assert list(live_table.columns) == list(replayed_table.columns)
    for column in live_table.columns:
        np.testing.assert_allclose(replayed_table[column], live_table[column], rtol=1e-9)
    assert replayed.metadata["summary"] == live.metadata["summary"]


def test_replay_of_an_unknown_run_says_so(tiled_server):
    import pytest

    with pytest.raises(KeyError, match="no run with uid 'nope'"):
        replay("nope", tiled_server.uri, API_KEY, progress=False)
