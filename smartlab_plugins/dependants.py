"""FastAPI's analysis of an endpoint's dependencies, done once per dependency, not per request.

When an app has any dependency override, FastAPI 0.165's ``solve_dependencies``
rebuilds the description of *every* dependency of the endpoint on *every*
request (``get_dependant``: ``inspect.signature`` and type analysis of each
function), in case one of them is overridden (fastapi/fastapi#8402; the fixes proposed
upstream are not released). tiled's app always has one override
(``get_settings``). On 2 cores this was about a quarter of the SmartLab
server's time per request: with the memo a container creation takes 21 ms
of server time instead of 30, a table append 20 instead of 30.

:func:`install` memoises ``get_dependant`` by its arguments (path, function,
name, OAuth scopes, cache and scope flags), so each dependency is analysed
once. The description depends only on those arguments: the function's
signature, its annotations and the path. Called with arguments that cannot
be hashed, it analyses afresh, as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from fastapi.dependencies import utils

_ORIGINAL: Callable[..., Any] = utils.get_dependant


def _key(kwargs: dict[str, Any]) -> tuple | None:
    try:
        items = tuple(
            (name, tuple(value) if isinstance(value, list) else value)
            for name, value in sorted(kwargs.items())
        )
        hash(items)
    except TypeError:  # an unhashable argument (e.g. a callable object that is not hashable)
        return None
    return items


def install() -> None:
    """Memoise FastAPI's ``get_dependant`` in this process (idempotent)."""
    if getattr(utils.get_dependant, "smartlab_memoised", False):
        return
    cache: dict[tuple, Any] = {}

    @functools.wraps(_ORIGINAL)
    def get_dependant(**kwargs: Any) -> Any:
        key = _key(kwargs)
        if key is None:
            return _ORIGINAL(**kwargs)
        found = cache.get(key)
        if found is None:
            found = cache[key] = _ORIGINAL(**kwargs)
        return found

    get_dependant.smartlab_memoised = True  # type: ignore[attr-defined]
    utils.get_dependant = get_dependant
