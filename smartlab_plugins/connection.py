"""Connecting to the Tiled server, with errors that say what to do."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

START_HINT = (
    "Start one with `smartlab serve` (it prints the URI and the API key), then set "
    "SMARTLAB_TILED_URI and SMARTLAB_API_KEY, or pass tiled_uri= and api_key=."
)


class TiledUnavailableError(ConnectionError):
    """No usable Tiled server: none configured, unreachable, or the key is refused."""


def connect(tiled_uri: str | None, api_key: str | None) -> Any:
    """A Tiled client of ``tiled_uri``, or a TiledUnavailableError saying what to do."""
    import httpx
    from tiled.client import from_uri

    if not tiled_uri:
        raise TiledUnavailableError(f"SmartLab needs a Tiled server to publish to. {START_HINT}")
    try:
        # One quick probe first: tiled's client retries a refused connection for ~25 s.
        httpx.get(f"{tiled_uri.rstrip('/')}/api/v1/", timeout=5.0)
        return from_uri(tiled_uri, api_key=api_key)
    except httpx.TransportError as exc:
        raise TiledUnavailableError(
            f"could not reach a Tiled server at {tiled_uri} ({exc}). {START_HINT}"
        ) from None
    except Exception as exc:
        text = str(exc)
        if "401" in text or "API key" in text or "authentication" in text:
            raise TiledUnavailableError(
                f"the Tiled server at {tiled_uri} refused access ({text.splitlines()[0]}): set "
                "SMARTLAB_API_KEY (or pass api_key=) to the key `smartlab serve` printed or stored "
                "in its data folder"
            ) from None
        raise


def client_factory(tiled_uri: str, api_key: str | None) -> Callable[[], Any]:
    """A function that makes a new client of ``tiled_uri`` at each call.

    For the worker's writers, which make a client again after an outage; no
    probe: a worker started before its server waits for it rather than failing.
    """

    def make_client() -> Any:
        from tiled.client import from_uri

        return from_uri(tiled_uri, api_key=api_key)

    return make_client


#: Modules tiled's client imports the first time it meets a table or an array node, and
#: ``distributed``, which dask imports on the first read (it looks for a cluster's client).
NODE_CLIENT_MODULES = ("tiled.client.dataframe", "tiled.client.array", "distributed")


def preload_node_clients() -> None:
    """Import what tiled's client imports on meeting its first table or array (dask: ~1-2 s).

    tiled imports these lazily, inside the first request that returns such a
    node or the first read, so the first table a publisher makes, or the
    first rows a follower reads, would otherwise come a second or two late.
    A module that is not installed is left out (tiled then does without it).
    """
    import importlib

    for module in NODE_CLIENT_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            logger.debug("not preloaded: %s (%s)", module, exc)
