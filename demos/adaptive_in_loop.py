"""The in-loop half of ``smartlab demo adaptive``: three adaptive plans on small budgets.

Starts the embedded Tiled server (unless one is given, as :mod:`smartlab_demos.live`
does), subscribes SmartLab with ``transition_lstm``, ``phase_cnn`` and
``spinwave_cnn``, and runs :func:`~smartlab_plugins.adaptive.plans.adaptive_ramp`,
:func:`~smartlab_plugins.adaptive.plans.adaptive_map` and
:func:`~smartlab_plugins.adaptive.plans.count_until_precise` on the simulated
instruments. For each it prints what was decided and why, read back from the run's
``smartlab_decisions`` stream in Tiled, beside the simulator's hidden truth, and the
snippet that reads the decisions from any other process.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from smartlab_demos.target import tiled_server

QUERY_SNIPPET = """\
import json, os
from tiled.client import from_uri

client = from_uri("{uri}", api_key=os.environ["SMARTLAB_API_KEY"])
decisions = client["{uid}"]["smartlab_decisions"].read()  # one row per decision
for action, planner, reason in zip(
    decisions["decision_action"].values,
    decisions["decision_planner"].values,
    decisions["decision_reason"].values,
):
    print(action, planner, reason)
summary = json.loads(decisions["decision_detail"].values[-1])["summary"]
print(client["{uid}"].metadata["stop"]["reason"])"""


def run_in_loop_demo(
    tiled_uri: str | None = None,
    data_dir: Path | None = None,
    out: TextIO = sys.stdout,
    seed: int = 11,
) -> dict[str, Any]:
    """Run the three adaptive plans, print their decisions; return uids and summaries."""
    from bluesky import RunEngine

    from smartlab_plugins import SmartLab
    from smartlab_plugins.adaptive.feed import ResultsFeed
    from smartlab_plugins.adaptive.plans import adaptive_map, adaptive_ramp, count_until_precise
    from smartlab_plugins.devices import ins, mpb, operando

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    plugins = ["transition_lstm", "phase_cnn", "spinwave_cnn"]
    results: dict[str, Any] = {}
    with tiled_server(tiled_uri, data_dir, out) as target:
        RE = RunEngine()
        with SmartLab(target.uri, target.api_key, plugins=plugins) as smartlab:
            RE.subscribe(smartlab)
            feed = ResultsFeed(smartlab)
            ramp = operando.make_devices(seed=seed)
            detector, controller = ramp["operando"], ramp["temperature"]
            truth = detector.truth
            start = float(round(truth["t_up"]) + 20)
            print(
                f"adaptive_ramp: cooling from {start:.0f} K to {start - 100:.0f} K, "
                "transition_bracket reading transition_lstm live ...",
                file=out,
                flush=True,
            )
            (uid,) = RE(
                adaptive_ramp([detector], controller, start, start - 100, feed=feed, resolution=0.5)
            )
            results["ramp"] = (uid, f"hidden truth: T_down = {truth['t_down']:.2f} K")
            stage = mpb.make_devices(seed=seed)
            print("adaptive_map: Ti fraction 0.3 to 0.7 at 300 K, phase_boundary ...", file=out)
            (uid,) = RE(
                adaptive_map([stage["mpb"]], stage["sample"].x, 0.3, 0.7, feed=feed, budget=30)
            )
            edges = ", ".join(f"{x:.4f}" for x in mpb.label_boundaries(300.0))
            results["map"] = (uid, f"hidden truth: class changes at x = {edges}")
            spectrometer = ins.make_devices(seed=seed)["ins"]
            print("count_until_precise: J1 to ± 0.005 meV, precision_target ...", file=out)
            (uid,) = RE(
                count_until_precise([spectrometer], feed=feed, target={"j1": 0.005}, budget=15)
            )
            results["count"] = (uid, f"hidden truth: J1 = {spectrometer.sample.truth['j1']:.4f}")
            feed.close()
            smartlab.flush()
        client = _client(target)
        summaries = {}
        for name, (uid, truth_line) in results.items():
            summaries[name] = _report(out, client, name, uid, truth_line)
        again = (
            f" (the embedded server stops with the demo: `smartlab serve --data-dir "
            f"{target.embedded_dir}` serves it again)"
            if target.embedded_dir is not None
            else ""
        )
        print(f"\nTiled server: {target.uri}{again}\nRead a run's decisions in Python:\n", file=out)
        print(QUERY_SNIPPET.format(uri=target.uri, uid=results["ramp"][0]), file=out)
    return {"uri": target.uri, "uids": {k: v[0] for k, v in results.items()}, **summaries}


def _client(target: Any) -> Any:
    from tiled.client import from_uri

    return from_uri(target.uri, api_key=target.api_key)


def _report(out: TextIO, client: Any, name: str, uid: str, truth_line: str) -> dict[str, Any]:
    run = client[uid]
    table = run["smartlab_decisions"].read()
    print(f"\n{name}: run {uid}\n  {'step':>4} {'action':<15} {'planner':<19} reason", file=out)
    for step, action, planner, reason in zip(
        table["decision_step"].values,
        table["decision_action"].values,
        table["decision_planner"].values,
        table["decision_reason"].values,
        strict=True,
    ):
        print(f"  {int(step):>4} {action:<15} {planner or '-':<19} {reason[:90]}", file=out)
    stop = run.metadata["stop"]
    print(f"  stop: {stop['exit_status']}: {stop['reason']}", file=out)
    print(f"  {truth_line}", file=out)
    return json.loads(table["decision_detail"].values[-1])["summary"]
