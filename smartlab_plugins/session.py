"""An interactive Bluesky session with SmartLab, as the IPython profile builds it.

``start_session()`` returns the names a beamline user expects: ``RE``, ``bp``,
``bps``, the simulated devices, ``sl`` (the subscribed SmartLab callback,
which also writes the raw runs to Tiled through ``TiledWriter`` off the
RunEngine thread) and ``c`` (a Tiled client of the same server). If no server
is configured, the embedded one is started for the session's lifetime.
"""

from __future__ import annotations

import atexit
from typing import Any

from smartlab_plugins import settings


def start_session(tiled_uri: str | None = None, api_key: str | None = None) -> dict[str, Any]:
    """Build the session's namespace: RunEngine, devices, SmartLab and a Tiled client."""
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd.sim import det, motor
    from tiled.client import from_uri

    from smartlab_plugins import SmartLab
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
    sl = SmartLab(uri, key)
    RE.subscribe(sl)
    c = from_uri(uri, api_key=key)
    _add_magics(sl, c)
    plugins = ", ".join(sl.plugins.names())
    print(f"SmartLab: RE, bp, bps, sl, c ready; plugins: {plugins}; Tiled at {uri}")
    print("SmartLab: %smartlab status | plugins | enable NAME | disable NAME | latest [PLUGIN]")
    return {
        "RE": RE,
        "bp": bp,
        "bps": bps,
        "sl": sl,
        "c": c,
        "motor": motor,
        "det": det,
        "find_analyses": find_analyses,
        "read_events": read_events,
        **make_devices(),
    }


def _add_magics(smartlab: Any, client: Any) -> None:
    """Register ``%smartlab`` when running inside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        from smartlab_plugins.magics import register

        register(shell, smartlab, client)
