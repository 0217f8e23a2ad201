"""An interactive Bluesky session with SmartLab, as the IPython profile builds it.

``start_session()`` returns the names a beamline user expects: ``RE``, ``bp``,
``bps``, the simulated devices, ``sl`` (the subscribed SmartLab callback,
which also writes the raw runs to Tiled through ``TiledWriter`` off the
RunEngine thread), ``bec`` (bluesky's ``BestEffortCallback``, subscribed
beside SmartLab: the live table, and plots where there is a display) and ``c``
(a Tiled client of the same server). If no server is configured, the embedded
one is started for the session's lifetime.

``RE.md`` is a ``bluesky.utils.PersistentDict`` in ``runengine-metadata`` in
the SmartLab data folder, so ``scan_id`` and whatever a user puts in ``RE.md``
carry on from one session to the next (one session at a time: zict, which
stores it, cannot share the folder between processes). Inside IPython,
bluesky's magics (``%mov``, ``%movr``, ``%ct``, ``%wa``, which find devices by
their ``labels``) and ``%smartlab`` are registered.
"""

from __future__ import annotations

import atexit
from typing import Any

from smartlab_plugins import settings

RUNENGINE_METADATA = "runengine-metadata"  # RE.md's folder in the data folder


def start_session(tiled_uri: str | None = None, api_key: str | None = None) -> dict[str, Any]:
    """Build the session's namespace: RunEngine, devices, SmartLab and a Tiled client."""
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp
    from bluesky import RunEngine
    from bluesky.callbacks.best_effort import BestEffortCallback
    from bluesky.utils import PersistentDict
    from ophyd.sim import det, motor

    from smartlab_plugins import SmartLab
    from smartlab_plugins.connection import connect
    from smartlab_plugins.devices.beam import make_devices
    from smartlab_plugins.results import find_analyses, read_events

    uri = tiled_uri or settings.tiled_uri()
    key = api_key or settings.api_key()
    if not uri:
        from smartlab_plugins.server import EmbeddedServer, free_port

        server = EmbeddedServer(port=free_port()).start()
        atexit.register(server.stop)
        uri, key = server.uri, server.api_key
        print(f"SmartLab: started the embedded Tiled server at {uri} (data in {server.data_dir})")
    RE = RunEngine()
    metadata_dir = settings.default_data_dir() / RUNENGINE_METADATA
    metadata_dir.mkdir(parents=True, exist_ok=True)
    RE.md = PersistentDict(str(metadata_dir))
    sl = SmartLab(uri, key)
    RE.subscribe(sl)
    bec = BestEffortCallback()
    plots = _can_plot()
    if not plots:
        bec.disable_plots()
    RE.subscribe(bec)
    c = connect(uri, key)
    _add_magics(sl, c, plots)
    plugins = ", ".join(sl.plugins.names())
    print(f"SmartLab: RE, bp, bps, sl, bec, c ready; plugins: {plugins}; Tiled at {uri}")
    print(
        f"SmartLab: RE.md kept in {metadata_dir} (last scan_id {RE.md.get('scan_id', 'none')}); "
        f"live plots {'on' if plots else 'off (no display)'}"
    )
    print("SmartLab: %smartlab status | plugins | enable NAME | disable NAME | latest [PLUGIN]")
    print("Bluesky: %wa [LABEL] | %ct [LABEL] | %mov DEVICE POSITION | %movr DEVICE STEP")
    return {
        "RE": RE,
        "bp": bp,
        "bps": bps,
        "sl": sl,
        "bec": bec,
        "c": c,
        "motor": motor,
        "det": det,
        "find_analyses": find_analyses,
        "read_events": read_events,
        **make_devices(),
    }


def _can_plot() -> bool:
    """Whether matplotlib draws on a screen here: an interactive backend (or a third-party one).

    Without a display (no ``DISPLAY`` on Linux) matplotlib falls back to Agg, and
    ``MPLBACKEND=Agg`` asks for it: then BestEffortCallback prints its table only.
    """
    import matplotlib
    from matplotlib.backends import BackendFilter, backend_registry

    backend = matplotlib.get_backend().lower()
    interactive = backend_registry.list_builtin(BackendFilter.INTERACTIVE)
    return backend.startswith("module://") or backend in interactive


def _add_magics(smartlab: Any, client: Any, plots: bool) -> None:
    """Inside IPython: ``%smartlab``, bluesky's magics, and GUI event-loop integration for plots."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from bluesky.magics import BlueskyMagics

    from smartlab_plugins.magics import register

    register(shell, smartlab, client)
    shell.register_magics(BlueskyMagics)
    if plots:
        shell.enable_matplotlib()  # figures redraw while the prompt waits, as %matplotlib does
