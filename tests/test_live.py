"""Live views are RunEngine callbacks: they get a real scan's results and draw them, with units,
uncertainty bands and legends, off the RunEngine's path (matplotlib Agg here)."""

from __future__ import annotations

import bluesky.plans as bp
import numpy as np
from matplotlib.collections import PolyCollection
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

from smartlab_plugins.devices import ins, microscopy, mpb, operando
from smartlab_plugins.live import LiveCouplings, LiveMask, LivePhases, LiveTransition
from smartlab_plugins.results import find_analyses, read_events


def legend_texts(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_live_phases_plot_the_published_probabilities(RE, make_smartlab, client, tmp_path):
    devices = mpb.make_devices(seed=11)
    smartlab = make_smartlab(plugins=["phase_cnn"], isolation="process")
    RE.subscribe(smartlab)
    view = LivePhases(smartlab, x="sample_x")
    RE.subscribe(view)
    compositions = [0.3, 0.4, 0.46, 0.475, 0.49, 0.55, 0.7]

    (uid,) = RE(bp.list_scan([devices["mpb"]], devices["sample"].x, compositions))
    smartlab.flush()

    assert view.update()
    lines = {line.get_label(): line for line in view.ax.get_lines()}
    phases = ["rhombohedral", "monoclinic", "tetragonal", "cubic", "mixture"]
    table = read_events(find_analyses(client, run_uid=uid, plugin="phase_cnn")[0])
    outside = table[table["in_distribution"] == 0]
    crossed = ["not in distribution"] if len(outside) else []
    assert set(lines) == {*phases, *crossed}
    assert legend_texts(view.ax) == [*phases, *crossed]
    if crossed:  # the confidence of each event flagged out of distribution, crossed out
        at = np.asarray(compositions)[outside["seq_num"].to_numpy() - 1]  # x of those events
        np.testing.assert_allclose(lines[crossed[0]].get_xdata(), at)
        np.testing.assert_allclose(lines[crossed[0]].get_ydata(), outside["confidence"])
    np.testing.assert_allclose(lines["tetragonal"].get_xdata(), compositions)
    np.testing.assert_allclose(lines["tetragonal"].get_ydata(), table["p_tetragonal"], rtol=1e-6)
    assert view.ax.get_xlabel() == "sample_x (Ti fraction)"  # the unit from the descriptor
    assert view.ax.get_title() == f"phase_cnn, scan 1 ({uid[:8]})"
    view.figure.savefig(tmp_path / "phases.png")
    assert not view.update()  # nothing new


def test_live_couplings_draw_a_band_of_one_std_and_start_afresh_for_each_run(
    RE, make_smartlab, client
):
    spectrometer = ins.make_devices(seed=12)["ins"]
    smartlab = make_smartlab(plugins=["spinwave_cnn"])
    RE.subscribe(smartlab)
    view = LiveCouplings(smartlab, x="ins_temperature")
    RE.subscribe(view)
    RE(bp.count([spectrometer], 2))
    (second,) = RE(bp.scan([spectrometer], spectrometer.temperature, 5, 15, 3))
    smartlab.flush()

    assert view.update()
    assert view.run_uid == second
    table = read_events(find_analyses(client, run_uid=second, plugin="spinwave_cnn")[0])
    for ax, name in zip(view.axes, ("j1", "j2", "d"), strict=True):
        (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
        lower, upper = table[name] - table[f"{name}_std"], table[name] + table[f"{name}_std"]
        y = band.get_paths()[0].vertices[:, 1]
        np.testing.assert_allclose([y.min(), y.max()], [lower.min(), upper.max()], rtol=1e-5)
        assert legend_texts(ax) == ["± 1 std", name.upper()]
        assert ax.get_ylabel() == f"{name.upper()} (meV)"  # the plugin's declared unit
        assert ax.get_xlabel() == "ins_temperature (K)"
        (line,) = ax.get_lines()
        np.testing.assert_allclose(line.get_xdata(), [5, 10, 15])

    view.close()
    RE(bp.count([spectrometer], 1))
    smartlab.flush()
    assert not view.update()  # closed: no more results


def test_live_transition_shows_the_onset_with_its_std_in_the_descriptors_unit(
    RE, make_smartlab, client
):
    stage = operando.make_devices(seed=11)
    detector, controller = stage["operando"], stage["temperature"]
    t_up = detector.truth["t_up"]
    smartlab = make_smartlab(plugins=["transition_lstm"])
    RE.subscribe(smartlab)
    view = LiveTransition(smartlab)
    RE.subscribe(view)

    (uid,) = RE(operando.ramp(detector, controller, t_up - 30, t_up + 30, 4.0, 30))
    smartlab.flush()

    assert view.update()
    table = read_events(find_analyses(client, run_uid=uid, plugin="transition_lstm")[0])
    flagged = table[table["flag"] == 1].iloc[0]
    onset, std = flagged["onset_temperature"], flagged["onset_temperature_std"]
    assert legend_texts(view.ax) == [
        "p(transition begun)",
        f"flag: onset {onset:.1f} ± {std:.1f} K",
        f"in distribution: {'yes' if flagged['in_distribution'] else 'no'}",
    ]
    (span,) = view.ax.patches  # the band onset ± std
    x = span.get_path().transformed(span.get_patch_transform()).vertices[:, 0]
    np.testing.assert_allclose([x.min(), x.max()], [onset - std, onset + std], rtol=1e-6)
    assert view.ax.get_xlabel() == "operando_temperature (K)"


def test_live_mask_shows_a_phase_legend_and_a_scale_bar(RE, make_smartlab):
    sem = microscopy.make_devices(seed=24)
    smartlab = make_smartlab(plugins=["micrograph_unet"])
    RE.subscribe(smartlab)
    unscaled = LiveMask(smartlab)
    scaled = LiveMask(smartlab, pixel_size=(0.05, "um"))
    RE.subscribe(unscaled)
    RE.subscribe(scaled)

    RE(bp.grid_scan([sem["camera"]], sem["xy"].y, 0, 20, 2, sem["xy"].x, 0, 20, 2))
    smartlab.flush()

    assert unscaled.update() and scaled.update()
    phases = ["ferrite", "spheroidite", "gb_carbide", "pearlite"]
    assert [text.split()[0] for text in legend_texts(scaled.ax)] == phases
    assert scaled.ax.get_legend().get_title().get_text() == "phase"

    def bar_label(view):
        (bar,) = [a for a in view.ax.artists if isinstance(a, AnchoredSizeBar)]
        return bar.txt_label.get_text()

    assert bar_label(scaled) == "2 um"  # 256 pixels of 0.05 um: a fifth is 2.56 um
    assert bar_label(unscaled) == "50 px (no pixel size recorded)"
    assert "event 4" in scaled.ax.get_title()
