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
from smartlab_plugins.devices import ins, mpb
from smartlab_plugins.live import LiveCouplings, LivePhases
from smartlab_plugins.server import EmbeddedServer

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def main() -> None:
    matplotlib.use("Agg")
    with tempfile.TemporaryDirectory() as folder, EmbeddedServer(Path(folder)) as server:
        RE = RunEngine()
        with SmartLab(server.uri, server.api_key, plugins=["phase_cnn", "spinwave_cnn"]) as sl:
            RE.subscribe(sl)
            phases, couplings = LivePhases(x="sample_x"), LiveCouplings(x="ins_temperature")
            sl.add_live_view(phases)
            sl.add_live_view(couplings)
            diffraction = mpb.make_devices(seed=21)
            RE(bp.scan([diffraction["mpb"]], diffraction["sample"].x, 0.40, 0.55, 31))
            spectrometer = ins.make_devices(seed=22)["ins"]
            spectrometer.sample.set_truth(0.7, 0.12, 0.08)
            RE(bp.scan([spectrometer], spectrometer.temperature, 5, 60, 12))
            sl.flush()
            for view, name in ((phases, "live_phases.png"), (couplings, "live_couplings.png")):
                view.update()
                view.figure.savefig(FIGURES / name, dpi=90)
                print(f"wrote {FIGURES / name}")


if __name__ == "__main__":
    main()
