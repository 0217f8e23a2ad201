"""Live views get the results of a real scan as it runs, and draw them off the RunEngine's path."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np

from smartlab_plugins.devices import ins, mpb
from smartlab_plugins.live import LiveCouplings, LivePhases
from smartlab_plugins.results import find_analyses, read_events


def test_live_phases_plot_the_published_probabilities(RE, make_smartlab, client, tmp_path):
    devices = mpb.make_devices(seed=11)
    smartlab = make_smartlab(plugins=["phase_cnn"], isolation="process")
    view = LivePhases(x="sample_x")
    smartlab.add_live_view(view)
    RE.subscribe(smartlab)
    compositions = [0.3, 0.4, 0.46, 0.475, 0.49, 0.55, 0.7]

    (uid,) = RE(bp.list_scan([devices["mpb"]], devices["sample"].x, compositions))
    smartlab.flush()

    assert view.update()
    lines = {line.get_label(): line for line in view.ax.get_lines()}
    assert set(lines) == {"rhombohedral", "monoclinic", "tetragonal", "mixture"}
    np.testing.assert_allclose(lines["tetragonal"].get_xdata(), compositions)
    table = read_events(find_analyses(client, run_uid=uid, plugin="phase_cnn")[0])
    np.testing.assert_allclose(lines["tetragonal"].get_ydata(), table["p_tetragonal"], rtol=1e-6)
    view.figure.savefig(tmp_path / "phases.png")
    assert not view.update()  # nothing new


def test_live_couplings_start_afresh_for_each_run(RE, make_smartlab):
    spectrometer = ins.make_devices(seed=12)["ins"]
    smartlab = make_smartlab(plugins=["spinwave_cnn"])
    view = LiveCouplings()
    smartlab.add_live_view(view)
    RE.subscribe(smartlab)
    RE(bp.count([spectrometer], 2))
    (second,) = RE(bp.count([spectrometer], 3))
    smartlab.flush()

    assert view.update()
    assert view.run_uid == second
    assert len(view.series["j1"]) == 3
    (points, *_), *_ = [ax.containers[0] for ax in view.axes]  # errorbar artists
    assert len(points.get_xdata()) == 3
    smartlab.remove_live_view(view)
