"""Plugin discovery, registration, selection and per-plugin hook calls.

Plugins load in two layers, as pytest's do: installed entry points in the
``smartlab.plugins`` group (SmartLab's own built-ins arrive this way too), then
objects registered explicitly with :meth:`PluginManager.register`. Hooks are
called for one plugin at a time so that each plugin's failure stays its own.
The machinery is :class:`~smartlab_plugins.registry.Registry`, shared with the
planners; this module names the plugins' family.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from smartlab_plugins import hookspecs
from smartlab_plugins.hookspecs import PluginInfo
from smartlab_plugins.registry import Kind, Registry, UnknownNameError

ENTRY_POINT_GROUP = "smartlab.plugins"


class UnknownPluginError(UnknownNameError):
    """A plugin name that no installed or registered plugin has."""

    noun = "plugin"


#: Analysis plugins: the hooks of :mod:`~smartlab_plugins.hookspecs`, in ``smartlab.plugins``.
PLUGINS = Kind(hookspecs, ENTRY_POINT_GROUP, "smartlab_describe", PluginInfo, UnknownPluginError)


class PluginManager(Registry[PluginInfo]):
    """SmartLab's plugins: which exist, what they accept, and calling them."""

    def __init__(self, load_entrypoints: bool = True) -> None:
        super().__init__(PLUGINS, load_entrypoints)


def plugin_reference(plugin: object) -> object:
    """A picklable stand-in for ``plugin``: a module travels by its name."""
    return ("module", plugin.__name__) if isinstance(plugin, ModuleType) else plugin


def from_reference(reference: object) -> object:
    """The plugin named by :func:`plugin_reference`."""
    if isinstance(reference, tuple) and len(reference) == 2 and reference[0] == "module":
        return importlib.import_module(reference[1])
    return reference
