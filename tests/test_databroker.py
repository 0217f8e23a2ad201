"""Existing analysis code keeps working: databroker 2.x reads the raw run SmartLab wrote."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
from ophyd.sim import det, motor

from smartlab_plugins.results import find_analyses, read_events


def test_databroker_reads_the_raw_run_and_smartlab_results_sit_beside_it(RE, make_smartlab, client):
    from databroker import Broker
    from databroker.client import BlueskyRun

    smartlab = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab)
    (uid,) = RE(bp.scan([det], motor, -2, 2, 9))
    smartlab.flush()

    run = client[uid]
    assert isinstance(run, BlueskyRun)
    np.testing.assert_allclose(run["primary"].read()["motor"], np.linspace(-2, 2, 9))
    table = Broker(client)[uid].table()  # the v1 API that older analysis code uses
    assert list(table["det"].round(6)) == list(np.exp(-(np.linspace(-2, 2, 9) ** 2) / 2).round(6))

    (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
    assert analysis.metadata["summary"]["det"]["max"] == [0.0, 1.0]
    assert read_events(analysis).empty  # scalars only: peak_stats reports them per run
