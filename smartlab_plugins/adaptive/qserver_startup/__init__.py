"""The RE Worker's environment for SmartLab's out-of-loop experiments.

bluesky-queueserver's RE Manager imports this module each time its worker
environment opens (``start-re-manager --startup-module
smartlab_plugins.adaptive.qserver_startup``); every plan and device in its
namespace becomes submittable (``user_group_permissions.yaml`` beside it says who
may submit what). It holds:

- ``RE``, a RunEngine with SmartLab subscribed, publishing raw runs and live
  results to the Tiled server named by ``SMARTLAB_TILED_URI`` with
  ``SMARTLAB_API_KEY`` (read from the environment, never written here);
- the simulated instruments: ``mpb`` and ``sample`` (diffraction across the
  morphotropic phase boundary, :mod:`smartlab_plugins.devices.mpb`), ``operando`` and
  ``temperature`` (an operando ramp, :mod:`smartlab_plugins.devices.operando`);
- the plans an agent submits: :func:`measure_compositions` and
  :func:`operando_ramp`, and bluesky's ``count``, ``scan`` and ``list_scan``.

Only these names are public: anything else the module needs is imported
privately (a leading underscore), which the permissions forbid.
"""

import bluesky.plan_stubs as _bps
import bluesky.plans as _bp
from bluesky import RunEngine as _RunEngine
from bluesky.plans import count, list_scan, scan

from smartlab_plugins import SmartLab as _SmartLab
from smartlab_plugins.devices import mpb as _mpb
from smartlab_plugins.devices import operando as _operando

__all__ = [
    "RE",
    "count",
    "list_scan",
    "measure_compositions",
    "mpb",
    "operando",
    "operando_ramp",
    "sample",
    "scan",
    "temperature",
]

RE = _RunEngine()
_smartlab = _SmartLab()
RE.subscribe(_smartlab)

_diffraction = _mpb.make_devices(seed=1)
mpb = _diffraction["mpb"]
sample = _diffraction["sample"]
_ramp = _operando.make_devices(seed=1)
operando = _ramp["operando"]
temperature = _ramp["temperature"]


def measure_compositions(compositions: list[float], kelvin: float = 300.0, md: dict | None = None):
    """Diffraction frames at each composition x (Ti fraction), at ``kelvin`` K.

    One run (a ``list_scan`` of ``sample.x``) with ``mpb_image`` frames for
    ``phase_cnn`` and the stage's temperature recorded beside them.
    """
    yield from _bps.mv(sample.temperature, kelvin)
    yield from _bp.list_scan([mpb, sample.temperature], sample.x, list(compositions), md=md)


def operando_ramp(
    start: float, stop: float, rate: float = 4.0, frames: int = 30, md: dict | None = None
):
    """A heating ramp from ``start`` to ``stop`` K at ``rate`` K/min, ``frames`` frames."""
    yield from _operando.ramp(operando, temperature, start, stop, rate, frames, md=md)
