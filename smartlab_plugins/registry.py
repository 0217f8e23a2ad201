"""One registry for SmartLab's extensions: analysis plugins and planners alike.

An extension is an object or module whose hook functions carry its family's
``hookimpl`` marker and that names itself through a describe hook. A
:class:`Registry` loads them in two layers, as pytest loads its plugins:
installed entry points of the family's group (SmartLab's own arrive this way
too), then objects registered explicitly with :meth:`Registry.register`. A
process that needs only some installed extensions (a Dask worker) loads them
one by one with :meth:`Registry.load`. Every hook is called for one extension
at a time (:meth:`Registry.call`), so each extension's failure stays its own.

The two families are :data:`smartlab_plugins.manager.PLUGINS` and
:data:`smartlab_plugins.adaptive.manager.PLANNERS`; their registries
(:class:`~smartlab_plugins.manager.PluginManager`,
:class:`~smartlab_plugins.adaptive.manager.PlannerManager`) add the hook calls
that are theirs. Each family has its own pluggy project, so a planner's hook
marked with the plugins' ``hookimpl`` (or the reverse) is refused, not ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import pluggy

#: Where an extension registered by :meth:`Registry.register` came from, unless told.
REGISTERED = "registered in this session"


class UnknownNameError(KeyError):
    """A name that no installed or registered extension has; lists the ones there are."""

    #: What the registry holds, as the message names it.
    noun: ClassVar[str] = "extension"

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = sorted(available)
        # Both arguments in ``args``, so that the error survives pickling (a Dask task's does).
        super().__init__(name, self.available)

    def __str__(self) -> str:
        listed = ", ".join(self.available) or "none"
        return f"unknown {self.noun} {self.name!r}; available {self.noun}s: {listed}"


class Described(Protocol):
    """What a describe hook returns (``PluginInfo``, ``PlannerInfo``): at least a name."""

    @property
    def name(self) -> str:
        """The extension's name, unique in its registry."""
        ...


InfoT = TypeVar("InfoT", bound=Described)


@dataclass(frozen=True)
class Kind(Generic[InfoT]):
    """A family of extensions: its hook specifications, entry-point group and describe hook.

    ``hookspecs`` is the module of the family's hook specifications; it defines
    ``PROJECT_NAME``, the pluggy project of its ``hookspec`` and ``hookimpl``
    markers. ``describe`` names the hook every member must implement, returning
    an ``info``; ``error`` is raised for a name the registry does not have.
    """

    hookspecs: ModuleType
    group: str
    describe: str
    info: type[InfoT]
    error: type[UnknownNameError]

    @property
    def noun(self) -> str:
        """What one member is called in messages: ``plugin``, ``planner``."""
        return self.error.noun

    @property
    def project(self) -> str:
        """The pluggy project name of the family's markers."""
        return str(self.hookspecs.PROJECT_NAME)

    @property
    def marker(self) -> str:
        """Where the family's ``hookimpl`` marker is imported from, for messages."""
        return f"{self.hookspecs.__name__}.hookimpl"

    def installed(self) -> dict[str, EntryPoint]:
        """The installed entry points of the group, by name (the first one of a name wins)."""
        found: dict[str, EntryPoint] = {}
        for entry_point in entry_points(group=self.group):
            found.setdefault(entry_point.name, entry_point)
        return found


class Registry(Generic[InfoT]):
    """The extensions of one :class:`Kind`: which exist, where from, and calling them one at a time.

    With ``load_entrypoints`` (the default), every installed entry point of the
    kind's group is loaded and checked at once; without, the registry starts
    empty and takes extensions from :meth:`register` and :meth:`load`.
    """

    def __init__(self, kind: Kind[InfoT], load_entrypoints: bool = True) -> None:
        self.kind = kind
        self._pm = pluggy.PluginManager(kind.project)
        self._pm.add_hookspecs(kind.hookspecs)
        self._hooks = [
            name
            for name in dir(kind.hookspecs)
            if self._pm.parse_hookspec_opts(kind.hookspecs, name) is not None
        ]
        self._infos: dict[str, InfoT] = {}
        self._sources: dict[str, str] = {}
        self._callers: dict[tuple[str, str], Any] = {}
        if load_entrypoints:
            for entry_point in kind.installed().values():
                self._load(entry_point)

    def register(self, plugin: object, source: str = REGISTERED) -> str:
        """Register an object or module and return the name it describes itself by.

        Raises ``pluggy.PluginValidationError`` when it lacks the kind's describe
        hook, or a hook implementation does not match its specification, names a
        hook that does not exist, or is not marked with the kind's ``hookimpl``;
        ``ValueError`` when the registry already has an extension of that name.
        """
        return self._add(plugin, source)

    def load(self, name: str) -> str:
        """Register the installed entry point ``name`` alone and return the name.

        For a process that needs one installed extension, not all of them. The
        registry's own extension of that name, if it has one, is kept. Raises the
        kind's unknown-name error when no entry point of the group has that name.
        """
        if name not in self._infos:
            installed = self.kind.installed()
            if name not in installed:
                raise self.kind.error(name, installed.keys() | self._infos.keys())
            self._load(installed[name])
        return name

    def unregister(self, name: str) -> None:
        """Remove an extension from this registry."""
        self._pm.unregister(name=self._check(name))
        del self._infos[name], self._sources[name]
        self._callers.clear()

    def names(self) -> list[str]:
        """Names of all extensions, sorted."""
        return sorted(self._infos)

    def info(self, name: str) -> InfoT:
        """What the extension's describe hook returned when it was registered."""
        return self._infos[self._check(name)]

    def source(self, name: str) -> str:
        """Where an extension came from: its distribution and version, or this session."""
        return self._sources[self._check(name)]

    def plugin(self, name: str) -> object:
        """The registered object or module of that name."""
        return self._pm.get_plugin(self._check(name))

    def resolve(self, names: Iterable[str]) -> list[str]:
        """Check names, raising the kind's unknown-name error for the first unknown one."""
        return [self._check(name) for name in names]

    def call(self, hook: str, name: str, **kwargs: Any) -> Any:
        """Call ``hook`` of one extension only; its return value, or None if it has none."""
        caller = self._callers.get((hook, name))
        if caller is None:
            others = [p for n, p in self._pm.list_name_plugin() if n != name]
            caller = self._pm.subset_hook_caller(hook, remove_plugins=others)
            self._callers[(hook, name)] = caller
        results = caller(**kwargs)
        return results[0] if results else None

    def _load(self, entry_point: EntryPoint) -> None:
        dist = entry_point.dist
        origin = f"{dist.name} {dist.version}" if dist else f"entry point {entry_point.value}"
        self._add(entry_point.load(), origin, entry_point=entry_point.name)

    def _add(self, plugin: object, source: str, entry_point: str | None = None) -> str:
        info = self._describe(plugin)
        noun = self.kind.noun
        if entry_point is not None and info.name != entry_point:
            raise pluggy.PluginValidationError(
                plugin,
                f"{noun} from entry point {entry_point!r} of {source} describes itself as "
                f"{info.name!r}; the two names must match",
            )
        if info.name in self._infos:
            raise ValueError(f"a {noun} named {info.name!r} is already registered")
        self._pm.register(plugin, name=info.name)
        try:
            self._pm.check_pending()
            self._check_marked(plugin, info.name)
        except pluggy.PluginValidationError:
            self._pm.unregister(plugin)
            raise
        self._infos[info.name] = info
        self._sources[info.name] = source
        self._callers.clear()
        return info.name

    def _describe(self, plugin: object) -> InfoT:
        hook = self.kind.describe
        describe = getattr(plugin, hook, None)
        if describe is None:
            raise pluggy.PluginValidationError(
                plugin, f"{plugin!r} does not implement the required hook {hook}"
            )
        info = describe()
        if not isinstance(info, self.kind.info):
            raise pluggy.PluginValidationError(
                plugin,
                f"{hook} of {plugin!r} returned {info!r}, not a {self.kind.info.__name__}",
            )
        return info

    def _check_marked(self, plugin: object, name: str) -> None:
        """Refuse hooks that pluggy would ignore: named like one, but without the kind's marker."""
        marked = {caller.name for caller in self._pm.get_hookcallers(plugin) or ()}
        unmarked = [
            h for h in self._hooks if h not in marked and callable(getattr(plugin, h, None))
        ]
        if unmarked:
            raise pluggy.PluginValidationError(
                plugin,
                f"{self.kind.noun} {name!r}: hooks not marked with {self.kind.marker} (pluggy "
                f"project {self.kind.project!r}), which pluggy would never call: "
                f"{', '.join(unmarked)}",
            )

    def _check(self, name: str) -> str:
        if name not in self._infos:
            raise self.kind.error(name, self._infos)
        return name
