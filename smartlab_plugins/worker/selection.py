"""Which plugins analyse a run: the session's enabled ones, narrowed by the start document."""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

from smartlab_plugins.manager import UnknownPluginError
from smartlab_plugins.run_index import short_uid

logger = logging.getLogger(__name__)

#: The start document's key for a run's own plugin choices and options.
START_KEY = "smartlab"


def plugins_for_run(
    start: Mapping[str, Any], enabled: Sequence[str], known: Sequence[str]
) -> list[str]:
    """The session's ``enabled`` plugins, narrowed by the start document's ``smartlab`` key.

    ``smartlab: {"plugins": [...]}`` names exactly the plugins to run (each
    must be one of ``known``; an unknown name is logged and left out),
    ``smartlab: {"disable": [...]}`` removes some, ``smartlab: False`` runs none.
    """
    request = start.get(START_KEY)
    names = list(enabled)
    if request is None or request is True:
        return names
    if request is False:
        return []
    if not isinstance(request, Mapping):
        logger.error(
            "run %s: ignoring start['%s']=%r: expected a dict",
            short_uid(start.get("uid", "?")),
            START_KEY,
            request,
        )
        return names
    wanted = _names(start, "plugins", request.get("plugins", names))
    disabled = set(_names(start, "disable", request.get("disable", ())))
    chosen = []
    for name in wanted:
        if name in known:
            chosen.append(name)
        else:
            logger.error(
                "run %s: %s", short_uid(start.get("uid", "?")), UnknownPluginError(name, known)
            )
    return [name for name in chosen if name not in disabled]


def plugin_options(start: Mapping[str, Any], plugin: str) -> Mapping[str, Any]:
    """``start['smartlab']['options'][plugin]``: the run's options for one plugin, or ``{}``."""
    request = start.get(START_KEY)
    options = request.get("options", {}) if isinstance(request, Mapping) else {}
    chosen = options.get(plugin, {}) if isinstance(options, Mapping) else {}
    return chosen if isinstance(chosen, Mapping) else {}


def _names(start: Mapping[str, Any], key: str, value: Any) -> list[str]:
    """``start['smartlab'][key]`` as a list of plugin names (one name may stand alone);
    anything else is logged and read as no names."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    logger.error(
        "run %s: ignoring start['%s'][%r]=%s: expected a list of plugin names",
        short_uid(start.get("uid", "?")),
        START_KEY,
        key,
        reprlib.repr(value),
    )
    return []
