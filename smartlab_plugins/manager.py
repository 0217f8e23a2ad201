"""Plugin discovery, registration, selection and per-plugin hook calls.

Plugins load in two layers, as pytest's do: installed entry points in the
``smartlab.plugins`` group (SmartLab's own built-ins arrive this way too), then
objects registered explicitly with :meth:`PluginManager.register`. Hooks are
called for one plugin at a time so that each plugin's failure stays its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

import pluggy

from smartlab_plugins import hookspecs
from smartlab_plugins.hookspecs import PluginInfo

ENTRY_POINT_GROUP = "smartlab.plugins"


class UnknownPluginError(KeyError):
    """A plugin name that no installed or registered plugin has."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = sorted(available)
        super().__init__(name)

    def __str__(self) -> str:
        listed = ", ".join(self.available) or "none"
        return f"unknown plugin {self.name!r}; available plugins: {listed}"


class PluginManager:
    """SmartLab's plugins: which exist, what they accept, and calling them."""

    def __init__(self, load_entrypoints: bool = True) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._sources: dict[str, str] = {}
        self._callers: dict[tuple[str, str], Any] = {}
        if load_entrypoints:
            self._load_entrypoints()

    def _load_entrypoints(self) -> None:
        self._pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        self._pm.check_pending()
        for plugin, dist in self._pm.list_plugin_distinfo():
            name = self._pm.get_name(plugin)
            info = self._describe(name)
            if info.name != name:
                self._pm.unregister(plugin)
                raise pluggy.PluginValidationError(
                    plugin,
                    f"plugin from entry point {name!r} of {dist.project_name} describes "
                    f"itself as {info.name!r}; the two names must match",
                )
            self._infos[name] = info
            self._sources[name] = f"{dist.project_name} {dist.version}"

    def register(self, plugin: object, source: str = "registered in this session") -> str:
        """Register a plugin object or module and return its name.

        Raises ``pluggy.PluginValidationError`` when a hook implementation does
        not match its specification, or names a hook that does not exist.
        """
        describe = getattr(plugin, "smartlab_describe", None)
        if describe is None:
            raise pluggy.PluginValidationError(
                plugin, f"{plugin!r} does not implement the required hook smartlab_describe"
            )
        info = describe()
        if not isinstance(info, PluginInfo):
            raise pluggy.PluginValidationError(
                plugin, f"smartlab_describe of {plugin!r} returned {info!r}, not a PluginInfo"
            )
        if info.name in self._infos:
            raise ValueError(f"a plugin named {info.name!r} is already registered")
        self._pm.register(plugin, name=info.name)
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError:
            self._pm.unregister(plugin)
            raise
        self._infos[info.name] = info
        self._sources[info.name] = source
        self._callers.clear()
        return info.name

    def unregister(self, name: str) -> None:
        """Remove a plugin from this manager."""
        self._pm.unregister(name=self._check(name))
        del self._infos[name], self._sources[name]
        self._callers.clear()

    def names(self) -> list[str]:
        """Names of all plugins, sorted."""
        return sorted(self._infos)

    def info(self, name: str) -> PluginInfo:
        return self._infos[self._check(name)]

    def source(self, name: str) -> str:
        """Where a plugin came from: its distribution and version, or this session."""
        return self._sources[self._check(name)]

    def plugin(self, name: str) -> object:
        return self._pm.get_plugin(self._check(name))

    def resolve(self, names: Iterable[str]) -> list[str]:
        """Check plugin names, raising :class:`UnknownPluginError` for the first unknown one."""
        return [self._check(name) for name in names]

    def call(self, hook: str, plugin_name: str, **kwargs: Any) -> Any:
        """Call ``hook`` of one plugin only; its return value, or None if it has none."""
        caller = self._callers.get((hook, plugin_name))
        if caller is None:
            others = [p for n, p in self._pm.list_name_plugin() if n != plugin_name]
            caller = self._pm.subset_hook_caller(hook, remove_plugins=others)
            self._callers[(hook, plugin_name)] = caller
        results = caller(**kwargs)
        return results[0] if results else None

    def _describe(self, name: str) -> PluginInfo:
        info = self.call("smartlab_describe", name)
        if not isinstance(info, PluginInfo):
            raise pluggy.PluginValidationError(
                self._pm.get_plugin(name),
                f"plugin {name!r} must implement smartlab_describe returning a PluginInfo, "
                f"got {info!r}",
            )
        return info

    def _check(self, name: str) -> str:
        if name not in self._infos:
            raise UnknownPluginError(name, self._infos)
        return name


def plugin_reference(plugin: object) -> object:
    """A picklable stand-in for ``plugin``: a module travels by its name."""
    return ("module", plugin.__name__) if isinstance(plugin, ModuleType) else plugin


def from_reference(reference: object) -> object:
    """The plugin named by :func:`plugin_reference`."""
    if isinstance(reference, tuple) and len(reference) == 2 and reference[0] == "module":
        import importlib

        return importlib.import_module(reference[1])
    return reference
