"""One SmartLab (real worker, real plugins, real Tiled) and one results feed per test module."""

from __future__ import annotations

import pytest

from smartlab_plugins.adaptive.feed import ResultsFeed
from smartlab_plugins.devices import operando

PLUGINS = ["transition_lstm", "phase_cnn", "spinwave_cnn"]


@pytest.fixture(scope="module")
def smartlab(tiled_server, tmp_path_factory):
    from smartlab_plugins import SmartLab

    spool = tmp_path_factory.mktemp("adaptive-spool")
    with SmartLab(
        tiled_server.uri, tiled_server.api_key, plugins=PLUGINS, isolation="thread", spool_dir=spool
    ) as smartlab:
        yield smartlab


@pytest.fixture
def feed(smartlab, RE):
    RE.subscribe(smartlab)
    feed = ResultsFeed(smartlab)
    yield feed
    feed.close()


@pytest.fixture
def ramp_devices():
    """A sample with T_up = 535.4 K, T_down = 520.8 K (seed 11)."""
    devices = operando.make_devices(seed=11)
    return devices["operando"], devices["temperature"]
