"""Plugin discovery through the real entry points, registration, validation, selection."""

from __future__ import annotations

import pluggy
import pytest
from sample_plugins import RunCounter, TotalIntensity

from smartlab_plugins import PluginInfo, UnknownPluginError, hookimpl
from smartlab_plugins.hookspecs import DataSpec
from smartlab_plugins.manager import PluginManager


def test_builtin_plugins_come_from_the_installed_entry_points():
    manager = PluginManager()
    assert "peak_stats" in manager.names()
    assert manager.source("peak_stats").startswith("smartlab ")
    assert manager.info("peak_stats").accepts.ndims == (0, 1, 2)


def test_registered_plugin_is_called_alone():
    manager = PluginManager(load_entrypoints=False)
    name = manager.register(RunCounter())
    assert name == "run_counter"
    assert manager.source(name) == "registered in this session"
    assert manager.call("smartlab_finish_run", name, run=_Run(events=7), stop={}) == {"events": 7}
    manager.register(TotalIntensity())
    assert manager.call("smartlab_start_run", "total_intensity", run=_Run()) is None


def test_unknown_plugin_name_lists_the_available_ones():
    manager = PluginManager()
    with pytest.raises(UnknownPluginError) as error:
        manager.resolve(["peak_stat"])
    assert "unknown plugin 'peak_stat'" in str(error.value)
    assert "peak_stats" in str(error.value)


def test_misspelt_hook_is_refused():
    class Misspelt:
        @hookimpl
        def smartlab_describe(self):
            return PluginInfo("misspelt", "1", DataSpec())

        @hookimpl
        def smartlab_analyse(self, batch):  # British spelling: no such hook
            return None

    manager = PluginManager(load_entrypoints=False)
    with pytest.raises(pluggy.PluginValidationError, match="smartlab_analyse"):
        manager.register(Misspelt())
    assert manager.names() == []


def test_hook_with_an_unknown_argument_is_refused():
    class BadArgs:
        @hookimpl
        def smartlab_describe(self):
            return PluginInfo("bad_args", "1", DataSpec())

        @hookimpl
        def smartlab_analyze(self, batch, frames):
            return None

    with pytest.raises(pluggy.PluginValidationError, match="frames"):
        PluginManager(load_entrypoints=False).register(BadArgs())


def test_plugin_without_a_description_is_refused():
    class Anonymous:
        @hookimpl
        def smartlab_analyze(self, batch):
            return None

    with pytest.raises(pluggy.PluginValidationError, match="smartlab_describe"):
        PluginManager(load_entrypoints=False).register(Anonymous())


def test_two_plugins_with_one_name_are_refused():
    manager = PluginManager(load_entrypoints=False)
    manager.register(TotalIntensity())
    with pytest.raises(ValueError, match="already registered"):
        manager.register(TotalIntensity())


class _Run:
    def __init__(self, **state):
        self.state = state
