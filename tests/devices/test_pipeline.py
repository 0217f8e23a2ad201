"""Every simulated instrument through the live pipeline: its data and live results in Tiled."""

from __future__ import annotations

import bluesky.plans as bp
import pytest

from smartlab_plugins.devices import ins, microscopy, mpb, operando
from smartlab_plugins.results import find_analyses, read_events


def ins_scan():
    devices = ins.make_devices(seed=1)
    spectrometer = devices["ins"]
    return bp.scan([spectrometer], spectrometer.temperature, 5, 50, 3), "ins_sqw", (96, 160)


def mpb_scan():
    devices = mpb.make_devices(seed=1)
    return bp.scan([devices["mpb"]], devices["sample"].x, 0.3, 0.7, 3), "mpb_image", (97, 243)


def operando_scan():
    devices = operando.make_devices(seed=1)
    return (
        bp.scan([devices["operando"]], devices["temperature"], 400, 500, 3),
        "operando_pattern",
        (512,),
    )


def microscopy_scan():
    devices = microscopy.make_devices(seed=1)
    xy = devices["xy"]
    plan = bp.grid_scan([devices["camera"]], xy.y, 0, 20, 2, xy.x, 0, 20, 2)
    return plan, "camera_image", (256, 256)


@pytest.mark.parametrize("make_scan", [ins_scan, mpb_scan, operando_scan, microscopy_scan])
def test_instrument_data_and_live_results_land_in_tiled(RE, make_smartlab, client, make_scan):
    plan, field, shape = make_scan()
    smartlab = make_smartlab(plugins=["peak_stats"])
    RE.subscribe(smartlab)

    (uid,) = RE(plan)
    smartlab.flush()

    raw = client[uid]["primary"][field].read()
    assert raw.shape[1:] == shape
    (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
    table = read_events(analysis)
    assert len(table) == len(raw)
    assert (table[f"{field}_sum"].to_numpy() > 0).all()
