"""The one registry of plugins and planners: real entry points, names, layers and ``load``."""

from __future__ import annotations

import pickle
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pluggy
import pytest
from sample_plugins import RunCounter, TotalIntensity

from smartlab_plugins import hookspecs
from smartlab_plugins.adaptive.manager import PLANNERS, PlannerManager, UnknownPlannerError
from smartlab_plugins.adaptive.protocol import PlannerInfo
from smartlab_plugins.adaptive.protocol import hookimpl as planner_hookimpl
from smartlab_plugins.hookspecs import DataSpec, PluginInfo, hookimpl
from smartlab_plugins.manager import PLUGINS, PluginManager, UnknownPluginError
from smartlab_plugins.plugins import peak_stats
from smartlab_plugins.registry import Kind, Registry, UnknownNameError

#: A group no real package uses, so that a test's installed package meets no other.
GROUP = "smartlab_tests.plugins"
TEST_PLUGINS = Kind(hookspecs, GROUP, "smartlab_describe", PluginInfo, UnknownPluginError)


def install(root: Path, monkeypatch: pytest.MonkeyPatch, dist: str, **eps: str) -> None:
    """Install a distribution ``dist`` 1.0 declaring ``eps`` (name = "module:attr") in GROUP,
    with a module ``{dist}_plugins`` whose objects describe themselves by their attribute name."""
    module = f"{dist}_plugins"
    (root / f"{module}.py").write_text(
        textwrap.dedent(
            """
            from smartlab_plugins import DataSpec, PluginInfo, hookimpl

            class Named:
                def __init__(self, name):
                    self.name = name

                @hookimpl
                def smartlab_describe(self):
                    return PluginInfo(self.name, "1.0", DataSpec())

            right = Named("right")
            other = Named("other")
            """
        )
    )
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {module}:{attr}\n" for name, attr in eps.items())
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)


def test_plugins_and_planners_are_two_instances_of_one_registry():
    planners = Registry(PLANNERS)
    assert planners.names() == PlannerManager().names()
    assert set(PLANNERS.installed()) == set(entry_points(group="smartlab.planners").names)
    assert set(PLUGINS.installed()) == set(entry_points(group="smartlab.plugins").names)
    assert planners.source("phase_boundary").startswith("smartlab ")
    assert isinstance(planners.info("phase_boundary"), PlannerInfo)
    assert PLUGINS.project == "smartlab" and PLANNERS.project == "smartlab_planners"


def test_load_registers_one_installed_plugin_only_once():
    plugins = PluginManager(load_entrypoints=False)
    assert plugins.load("peak_stats") == "peak_stats"
    assert plugins.names() == ["peak_stats"]
    assert plugins.plugin("peak_stats") is peak_stats
    assert plugins.source("peak_stats").startswith("smartlab ")
    assert plugins.load("peak_stats") == "peak_stats"
    assert plugins.names() == ["peak_stats"]


def test_load_of_an_unknown_name_lists_what_is_installed():
    plugins = PluginManager(load_entrypoints=False)
    with pytest.raises(UnknownPluginError) as error:
        plugins.load("peak_stat")
    assert "unknown plugin 'peak_stat'; available plugins: " in str(error.value)
    assert "peak_stats" in error.value.available
    assert isinstance(error.value, UnknownNameError) and isinstance(error.value, KeyError)
    assert plugins.names() == []


def test_unknown_name_errors_keep_their_message_through_pickling():
    # a Dask task's exception travels pickled to the worker that submitted it
    for error in (UnknownPluginError("x", ["b", "a"]), UnknownPlannerError("y", [])):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    assert str(UnknownPlannerError("y", [])) == "unknown planner 'y'; available planners: none"
    assert str(UnknownPluginError("x", ["b", "a"])) == "unknown plugin 'x'; available plugins: a, b"


def test_register_and_unregister_in_the_second_layer():
    plugins = PluginManager(load_entrypoints=False)
    assert plugins.register(RunCounter()) == "run_counter"
    assert plugins.register(TotalIntensity(), source="a notebook") == "total_intensity"
    assert plugins.names() == ["run_counter", "total_intensity"]
    assert plugins.source("run_counter") == "registered in this session"
    assert plugins.source("total_intensity") == "a notebook"
    plugins.unregister("run_counter")
    assert plugins.names() == ["total_intensity"]
    assert plugins.call("smartlab_finish_run", "run_counter", run=None, stop={}) is None
    with pytest.raises(UnknownPluginError, match="available plugins: total_intensity"):
        plugins.unregister("run_counter")
    assert plugins.register(RunCounter()) == "run_counter"


def test_a_name_is_registered_once_and_a_loaded_one_is_kept():
    plugins = PluginManager(load_entrypoints=False)
    plugins.load("peak_stats")
    with pytest.raises(ValueError, match="a plugin named 'peak_stats' is already registered"):
        plugins.register(peak_stats)
    plugins.register(TotalIntensity())
    with pytest.raises(ValueError, match="a plugin named 'total_intensity' is already"):
        plugins.register(TotalIntensity())
    assert plugins.names() == ["peak_stats", "total_intensity"]


def test_an_entry_point_must_carry_the_name_its_plugin_describes(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "misnamed", wrong="right")
    with pytest.raises(pluggy.PluginValidationError) as error:
        Registry(TEST_PLUGINS)
    assert str(error.value) == (
        "plugin from entry point 'wrong' of misnamed 1.0 describes itself as 'right'; "
        "the two names must match"
    )
    empty = Registry(TEST_PLUGINS, load_entrypoints=False)
    with pytest.raises(pluggy.PluginValidationError, match="'wrong'"):
        empty.load("wrong")
    assert empty.names() == []


def test_installed_entry_points_load_with_their_distribution(tmp_path, monkeypatch):
    install(tmp_path, monkeypatch, "thirdparty", right="right", other="other")
    registry = Registry(TEST_PLUGINS)
    assert registry.names() == ["other", "right"]
    assert registry.source("right") == "thirdparty 1.0"
    assert registry.info("other") == PluginInfo("other", "1.0", DataSpec())
    with pytest.raises(UnknownPluginError, match="available plugins: other, right"):
        registry.resolve(["right", "third"])


def test_hooks_with_the_other_familys_marker_are_refused():
    class PlannerMarked:
        @planner_hookimpl
        def smartlab_describe(self):
            return PluginInfo("planner_marked", "1", DataSpec())

    class HalfMarked:
        @hookimpl
        def smartlab_describe(self):
            return PluginInfo("half_marked", "1", DataSpec())

        def smartlab_analyze(self, batch):  # forgot @hookimpl: pluggy would never call it
            return None

    plugins = PluginManager(load_entrypoints=False)
    with pytest.raises(pluggy.PluginValidationError) as error:
        plugins.register(PlannerMarked())
    assert "smartlab_plugins.hookspecs.hookimpl (pluggy project 'smartlab')" in str(error.value)
    assert "smartlab_describe" in str(error.value)
    with pytest.raises(pluggy.PluginValidationError, match=r"never call: smartlab_analyze$"):
        plugins.register(HalfMarked())
    assert plugins.names() == []
    plugins.register(TotalIntensity())
    assert plugins.names() == ["total_intensity"]
