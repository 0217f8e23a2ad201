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
policy or a session state, for the root, or for a node of another structure
than the endpoint takes, gets exactly tiled's answer. A node that is not
there gets tiled's 404 (the catalog's lookup looks inside files on the way,
as the walk does). The query is tiled's own (``node_from_segments``), built
once per path depth with the segments as parameters: building it afresh cost
more than running it (an append: 24 ms of client wall time before, 20 ms
after). (Replaces ``get_entry`` in ``tiled.server.router`` and uses the
catalog's ORM, private to tiled 0.2.20, pinned; measured in
``docs/benchmarks.md``.)
"""

from __future__ import annotations

import functools
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
        if given["access_policy"] is not None or given["session_state"] or not segments:
            return await walk(*args, **kwargs)
        if not _unfiltered_catalog(root_tree):
            return await walk(*args, **kwargs)
        try:
            entry = await _lookup(root_tree, segments)
        except NoEntry:  # it looked inside files on the way too: the walk would find nothing
            raise HTTPException(status_code=404, detail=f"No such entry: {segments}") from None
        except Exception:  # a broken link, ...: tiled's own answer, its own way
            return await walk(*args, **kwargs)
        if families is not None and entry.structure_family not in families:
            return await walk(*args, **kwargs)
        return entry

    setattr(get_entry, _INSTALLED, True)
    router.get_entry = get_entry


async def _lookup(root_tree: Any, segments: list[str]) -> Any:
    """``root_tree.lookup_adapter(segments)``, with the catalog query built once per depth.

    tiled builds the query anew on every request (an alias of the nodes table
    per path segment), and building it and its cache key cost more server
    time than running it. Here it is built once per path depth, with the
    segments as bound parameters, so SQLAlchemy reuses its compiled form. A
    path the query does not find goes to tiled's own lookup, which looks inside
    files on the way and raises ``NoEntry``.
    """
    from tiled.catalog.adapter import STRUCTURES

    parameters = {"root_id": root_tree.node.id}
    parameters.update({f"segment_{i}": segment for i, segment in enumerate(segments)})
    async with root_tree.context.session() as db:
        node = (await db.execute(_query(len(segments)), parameters)).scalar()
    if node is None:
        return await root_tree.lookup_adapter(segments)
    return STRUCTURES[node.structure_family](root_tree.context, node)


@functools.cache
def _query(depth: int) -> Any:
    """tiled's ``node_from_segments`` query for a path of ``depth`` segments, as parameters."""
    from sqlalchemy import bindparam, select
    from sqlalchemy.orm import aliased, selectinload
    from tiled.catalog import orm

    nodes = [aliased(orm.Node) for _ in range(depth)] + [orm.Node]
    statement = select(nodes[-1]).select_from(nodes[0])
    statement = statement.where(nodes[0].id == bindparam("root_id"))
    for i in range(depth):
        parent, child = nodes[i], nodes[i + 1]
        statement = statement.join(child, child.parent == parent.id).where(
            child.key == bindparam(f"segment_{i}")
        )
    return statement.options(
        selectinload(orm.Node.data_sources).selectinload(orm.DataSource.structure)
    )


def _unfiltered_catalog(node: Any) -> bool:
    """A catalog container with no search conditions or access filters on it."""
    return (
        hasattr(node, "lookup_adapter")
        and not getattr(node, "conditions", True)
        and not getattr(node, "access_filters", True)
    )
