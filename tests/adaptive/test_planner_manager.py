"""PlannerManager: entry points, explicit registration, validation, failures kept per planner."""

from __future__ import annotations

import pluggy
import pytest
from sample_planners import BadHook, Fixed, Raising

from smartlab_plugins import hookimpl as plugin_hookimpl
from smartlab_plugins.adaptive.manager import PlannerManager, UnknownPlannerError
from smartlab_plugins.adaptive.protocol import Observation, PlanContext, PlannerInfo


def contexts(*names):
    return {
        n: PlanContext(uid="run", axes={"temperature": (100.0, 800.0)}, budget=5) for n in names
    }


def test_built_in_planners_arrive_through_entry_points():
    manager = PlannerManager()
    assert {"transition_bracket", "phase_boundary", "precision_target"} <= set(manager.names())
    assert manager.info("phase_boundary").reads == ("phase_cnn",)
    assert manager.source("transition_bracket").startswith("smartlab ")


def test_a_misspelt_hook_argument_fails_registration_and_leaves_nothing_behind():
    manager = PlannerManager(load_entrypoints=False)
    with pytest.raises(pluggy.PluginValidationError):
        manager.register(BadHook())
    assert manager.names() == []
    with pytest.raises(pluggy.PluginValidationError, match="smartlab_planner_describe"):
        manager.register(object())
    with pytest.raises(UnknownPlannerError, match="available planners: none"):
        manager.resolve(["nowhere"])


def test_one_planners_exception_stays_its_own():
    manager = PlannerManager(load_entrypoints=False)
    manager.register(Raising("broken", {}))
    manager.register(Fixed("steady", {"temperature": 300.0}))
    suggestions, failures = manager.suggest(["broken", "steady"], contexts("broken", "steady"), 1)
    assert list(suggestions) == ["steady"] and suggestions["steady"][0].planner == "steady"
    (failure,) = failures
    assert failure.planner == "broken" and failure.error == "RuntimeError"
    assert "this planner is broken" in failure.describe()


def test_ingest_gives_each_planner_only_the_plugins_it_reads():
    manager = PlannerManager()
    ctx = {
        "transition_bracket": PlanContext("run", {"temperature": (400.0, 600.0)}, 10),
        "phase_boundary": PlanContext("run", {"temperature": (400.0, 600.0)}, 10),
    }
    lstm = Observation("run", 1, "transition_lstm", {"temperature": 450.0}, {"p_transition": 0.0})
    assert manager.ingest(list(ctx), ctx, [lstm]) == []
    assert ctx["transition_bracket"].state["seen"] == [(450.0, False, 1)]
    assert "seen" not in ctx["phase_boundary"].state


def test_a_planner_marked_with_the_analysis_plugins_hookimpl_is_refused():
    class Misfiled:
        @plugin_hookimpl
        def smartlab_planner_describe(self):
            return PlannerInfo("misfiled", "1", ())

        @plugin_hookimpl
        def smartlab_suggest(self, plan, n):
            return []

    manager = PlannerManager(load_entrypoints=False)
    with pytest.raises(pluggy.PluginValidationError) as error:
        manager.register(Misfiled())
    assert "smartlab_plugins.adaptive.protocol.hookimpl" in str(error.value)
    assert "smartlab_planner_describe, smartlab_suggest" in str(error.value)
    assert manager.names() == []
