"""Resolving a node's path in one catalog query, in SmartLab's Tiled server.

tiled 0.2.20's server finds the node of every request by walking its path one
segment at a time (``tiled.server.dependencies.get_entry``), one catalog
query per segment, so that an access policy can filter at each level. Each
level costs the server ~7-10 ms of CPU on a 2-core machine: an append to a
results table four levels down (``smartlab/<analysis>/<stream>/events``)
cost ~45 ms of server CPU, of which ~35 ms went on finding the table.

SmartLab's server has no access policy (one API key, or public read), so the
walk filters nothing, and the catalog can jump to the node in one query
(``CatalogContainerAdapter.lookup_adapter`` with every segment; tiled's own
comment on the walk says it "can jump directly to the node of interest").
:func:`install` makes the server do that for requests that succeed, and
leaves everything else to tiled's own walk: any request with an access
policy, a session state or a one-segment path, or for a node of another
structure than the endpoint takes, gets exactly tiled's answer. A node that
is not there gets tiled's 404 (the catalog's lookup looks inside files on the
way, as the walk does). (Replaces ``get_entry`` in ``tiled.server.router``, private
to tiled 0.2.20, pinned; measured in ``docs/benchmarks.md``.)
"""

from __future__ import annotations

import inspect
from typing import Any

_INSTALLED = "_smartlab_one_query"


def install() -> None:
    """Have this process' Tiled server resolve paths in one query where nothing is filtered."""
    from fastapi import HTTPException
    from tiled.server import router
    from tiled.server.core import NoEntry

    walk = router.get_entry
    if getattr(walk, _INSTALLED, False):
        return

    parameters = inspect.signature(walk)

    async def get_entry(*args: Any, **kwargs: Any) -> Any:
        """tiled's ``get_entry``, called as tiled calls it; one query where nothing is filtered."""
        call = parameters.bind(*args, **kwargs)
        call.apply_defaults()
        given = call.arguments
        root_tree, families = given["root_tree"], given["structure_families"]
        segments = [segment for segment in given["path"].split("/") if segment]
        if given["access_policy"] is not None or given["session_state"] or len(segments) < 2:
            return await walk(*args, **kwargs)
        if not _unfiltered_catalog(root_tree):
            return await walk(*args, **kwargs)
        try:
            entry = await root_tree.lookup_adapter(segments)
        except NoEntry:  # it looked inside files on the way too: the walk would find nothing
            raise HTTPException(status_code=404, detail=f"No such entry: {segments}") from None
        except Exception:  # a broken link, ...: tiled's own answer, its own way
            return await walk(*args, **kwargs)
        if families is not None and entry.structure_family not in families:
            return await walk(*args, **kwargs)
        return entry

    setattr(get_entry, _INSTALLED, True)
    router.get_entry = get_entry


def _unfiltered_catalog(node: Any) -> bool:
    """A catalog container with no search conditions or access filters on it."""
    return (
        hasattr(node, "lookup_adapter")
        and not getattr(node, "conditions", True)
        and not getattr(node, "access_filters", True)
    )
