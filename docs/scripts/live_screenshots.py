"""Screenshots of the live views for the docs: real scans, real SmartLab, an embedded server.

python docs/scripts/live_screenshots.py      # writes docs/figures/live_*.png
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import bluesky.plans as bp
import matplotlib
from bluesky import RunEngine

from smartlab_plugins import SmartLab
from smartlab_plugins.devices import ins, microscopy, mpb, operando
from smartlab_plugins.live import LiveCouplings, LiveMask, LivePhases, LiveTransition
from smartlab_plugins.server import EmbeddedServer

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def main() -> None:
    matplotlib.use("Agg")
    with tempfile.TemporaryDirectory() as folder, EmbeddedServer(Path(folder)) as server:
        RE = RunEngine()
        plugins = ["phase_cnn", "spinwave_cnn", "transition_lstm", "micrograph_unet"]
        with SmartLab(server.uri, server.api_key, plugins=plugins) as sl:
            RE.subscribe(sl)
            phases = LivePhases(sl, x="sample_x")
            couplings = LiveCouplings(sl, x="ins_temperature")
            ramp_view = LiveTransition(sl)
            mask_view = LiveMask(sl, pixel_size=(0.05, "um"))  # the simulated SEM's pixels
            views = {
                "live_phases.png": phases,
                "live_couplings.png": couplings,
                "live_transition.png": ramp_view,
                "live_mask.png": mask_view,
            }
            for view in views.values():
                RE.subscribe(view)
            diffraction = mpb.make_devices(seed=21)
            RE(bp.scan([diffraction["mpb"]], diffraction["sample"].x, 0.40, 0.55, 31))
            spectrometer = ins.make_devices(seed=22)["ins"]
            spectrometer.sample.set_truth(0.7, 0.12, 0.08)
            RE(bp.scan([spectrometer], spectrometer.temperature, 5, 60, 12))
            stage = operando.make_devices(seed=23)
            t_up = stage["operando"].truth["t_up"]
            RE(operando.ramp(stage["operando"], stage["temperature"], t_up - 40, t_up + 40, 4, 40))
            sem = microscopy.make_devices(seed=24)
            RE(bp.grid_scan([sem["camera"]], sem["xy"].y, 0, 20, 2, sem["xy"].x, 0, 20, 2))
            sl.flush()
            for name, view in views.items():
                view.update()
                view.figure.savefig(FIGURES / name, dpi=90)
                print(f"wrote {FIGURES / name}")


if __name__ == "__main__":
    main()
