"""The queueserver half of ``smartlab demo adaptive``: an agent maps a phase boundary.

Starts (unless given) the embedded Tiled server, then redis-server and the
queueserver's RE Manager on free loopback ports, their files in a temporary
folder; opens the RE Worker environment (simulated diffraction across the
morphotropic phase boundary, a RunEngine with SmartLab subscribed) and runs a
:class:`~smartlab_plugins.adaptive.agent.QueueAgent` for a few rounds with
:class:`BoundaryBisection`, which narrows the composition interval where
``phase_cnn`` sees the phase change. Prints what was submitted and why, where
the decisions are in Tiled, and stops everything it started.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from smartlab_demos.target import tiled_server
from smartlab_plugins.adaptive.protocol import (
    PlanContext,
    PlannerInfo,
    StopRequest,
    Suggestion,
    hookimpl,
)

EXPERIMENT = "mpb-boundary"
AXIS = "sample_x"
LIMITS = (0.3, 0.7)
#: The default sequence when the planner has nothing to say: the ends, then the middle.
FALLBACK = [{AXIS: 0.3}, {AXIS: 0.7}, {AXIS: 0.5}, {AXIS: 0.4}, {AXIS: 0.6}]

QUERY_SNIPPET = """\
import os
from tiled.client import from_uri

client = from_uri("{uri}", api_key=os.environ["SMARTLAB_API_KEY"])
for uid in {run_uids!r}:
    decision = client[uid].metadata["start"]["smartlab_decision"]
    print(decision["round"], decision["points"], decision["why"])
    print("  from", [(r["run_uid"][:8], r["seq_nums"]) for r in decision["from_results"]])"""


class BoundaryBisection:
    """Narrows the interval of composition where ``phase_cnn``'s phase changes.

    Keeps the phase seen at each measured composition; suggests ``n`` points
    splitting the widest interval between neighbours of different phases; asks
    to stop once every such interval is narrower than ``tolerance``.
    """

    def __init__(self, tolerance: float = 0.01) -> None:
        self.tolerance = tolerance
        self.phases: dict[float, str] = {}

    @hookimpl
    def smartlab_planner_describe(self) -> PlannerInfo:
        return PlannerInfo(
            "boundary_bisection", "1.0", ("phase_cnn",), "bisects where the phase changes"
        )

    @hookimpl
    def smartlab_ingest(self, plan: PlanContext, observations: list) -> None:
        for obs in observations:
            self.phases[round(obs.position[AXIS], 6)] = str(obs.values["phase_name"])

    def changes(self) -> list[tuple[float, float]]:
        xs = sorted(self.phases)
        return [(a, b) for a, b in itertools.pairwise(xs) if self.phases[a] != self.phases[b]]

    @hookimpl
    def smartlab_suggest(self, plan: PlanContext, n: int) -> list[Suggestion]:
        changes = self.changes()
        if not changes:
            return []
        a, b = max(changes, key=lambda pair: pair[1] - pair[0])
        reason = (
            f"the phase changes between x = {a:.4f} ({self.phases[a]}) and "
            f"x = {b:.4f} ({self.phases[b]}): split that {b - a:.4f} interval"
        )
        step = (b - a) / (n + 1)
        return [Suggestion({AXIS: a + step * (i + 1)}, reason) for i in range(n)]

    @hookimpl
    def smartlab_should_stop(self, plan: PlanContext) -> StopRequest | None:
        changes = self.changes()
        if changes and all(b - a < self.tolerance for a, b in changes):
            where = ", ".join(f"[{a:.4f}, {b:.4f}]" for a, b in changes)
            return StopRequest(f"phase boundaries located within {self.tolerance}: {where}")
        return None


def run_queueserver_demo(
    tiled_uri: str | None = None,
    data_dir: Path | None = None,
    rounds: int = 4,
    points_per_round: int = 2,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Run the agent for ``rounds`` rounds through a real queueserver; print and return them."""
    from smartlab_plugins.adaptive.agent import QueueAgent, QueueTarget
    from smartlab_plugins.adaptive.qserver import RedisServer, REManager
    from smartlab_plugins.devices import mpb

    with (
        tiled_server(tiled_uri, data_dir, out) as target,
        tempfile.TemporaryDirectory(prefix="smartlab-qserver-") as run_dir,
    ):
        env = {
            "SMARTLAB_TILED_URI": target.uri,
            "SMARTLAB_API_KEY": target.api_key or "",
            "SMARTLAB_SPOOL_DIR": str(Path(run_dir) / "spool"),
        }
        print("Starting redis-server and the queueserver's RE Manager ...", file=out, flush=True)
        with (
            RedisServer(Path(run_dir)) as redis,
            REManager(Path(run_dir), redis.address, env) as manager,
        ):
            print(
                f"RE Manager at {manager.control_address} (Redis at {redis.address}); opening "
                "its worker environment, then the agent takes over ...",
                file=out,
                flush=True,
            )
            planner = BoundaryBisection()
            agent = QueueAgent(
                planner,
                QueueTarget("measure_compositions", {AXIS: LIMITS}, FALLBACK),
                experiment=EXPERIMENT,
                zmq_control_addr=manager.control_address,
                tiled_uri=target.uri,
                api_key=target.api_key,
                points_per_round=points_per_round,
            )
            report = agent.run(rounds=rounds)
        _report(out, report, planner, mpb.X_MPB_REF)
        print("\nEach decision is in its run's start document in Tiled.", file=out)
        if target.embedded_dir is not None:
            print(
                "The embedded server stopped with the demo; its data stays. To query it\n"
                f"again, run `smartlab serve --data-dir {target.embedded_dir}` and, in\n"
                "another shell with SMARTLAB_API_KEY set to its key, in Python:\n",
                file=out,
            )
        else:
            print("From any other process (with SMARTLAB_API_KEY set):\n", file=out)
        print(QUERY_SNIPPET.format(uri=target.uri, run_uids=report.run_uids), file=out)
        return {"uri": target.uri, "report": report, "phases": dict(planner.phases)}


def _report(out: TextIO, report: Any, planner: BoundaryBisection, truth: float) -> None:
    print(f"\nThe agent submitted {len(report.submitted)} plans to the queue:", file=out)
    for decision in report.submitted:
        xs = ", ".join(f"{p[AXIS]:.4f}" for p in decision.points)
        source = sum(len(s["seq_nums"]) for s in decision.sources)
        kind = "fallback" if decision.fallback else "planner"
        print(
            f"  round {decision.round}: measure_compositions([{xs}])  [{kind}, from {source} "
            f"results]\n    why: {decision.why}",
            file=out,
        )
        for correction in decision.corrections:
            print(f"    {correction['action']}: {correction['reason']}", file=out)
    measured = ", ".join(f"{x:.4f} {phase}" for x, phase in sorted(planner.phases.items()))
    changes = ", ".join(f"[{a:.4f}, {b:.4f}]" for a, b in planner.changes()) or "none seen"
    print(
        f"Ended: {report.ended}\nMeasured (phase_cnn): {measured}\n"
        f"Phase changes between: {changes}; hidden truth: x_MPB = {truth} at 300 K",
        file=out,
    )
