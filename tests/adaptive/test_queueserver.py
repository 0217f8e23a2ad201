"""The out-of-loop agent against real services: redis-server, the queueserver's RE Manager
(its RE Worker runs a real RunEngine with SmartLab subscribed), and a real Tiled server.

One Redis and one RE Manager serve the module (opening the worker environment takes
seconds); each test drives its own experiment, so their decisions never mix.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from smartlab_plugins.adaptive.agent import (
    DECISION_KEY,
    AgentError,
    QueueAgent,
    QueueTarget,
    decision_uid,
)
from smartlab_plugins.adaptive.protocol import PlannerInfo, Suggestion, hookimpl
from smartlab_plugins.adaptive.qserver import RedisServer, REManager
from smartlab_plugins.retry import Backoff
from smartlab_plugins.server import EmbeddedServer, free_port

TARGET = QueueTarget(
    plan="measure_compositions",
    axes={"sample_x": (0.3, 0.6)},
    fallback=[{"sample_x": 0.3}, {"sample_x": 0.6}, {"sample_x": 0.45}],
)
FAST = Backoff(initial=0.5, maximum=2.0, give_up_after=60.0)


class ScriptedPlanner:
    """Suggests the compositions of its script, one list per round; keeps what it ingested."""

    def __init__(self, *script: list[float]) -> None:
        self.script = list(script)
        self.ingested = []
        self.rounds = 0

    @hookimpl
    def smartlab_planner_describe(self) -> PlannerInfo:
        return PlannerInfo("scripted", "1.0", reads=("phase_cnn",))

    @hookimpl
    def smartlab_ingest(self, plan, observations) -> None:
        self.ingested.extend(observations)

    @hookimpl
    def smartlab_suggest(self, plan, n) -> list[Suggestion]:
        xs = self.script[self.rounds] if self.rounds < len(self.script) else []
        self.rounds += 1
        return [Suggestion({"sample_x": x}, reason=f"script, round {self.rounds}") for x in xs]


class Stack:
    def __init__(self, manager: REManager, tiled: EmbeddedServer) -> None:
        self.manager, self.tiled = manager, tiled
        self.api = manager.api(timeout=5.0)

    def agent(self, planner, experiment: str, **kwargs) -> QueueAgent:
        kwargs.setdefault("zmq_control_addr", self.manager.control_address)
        return QueueAgent(
            planner,
            TARGET,
            experiment=experiment,
            tiled_uri=self.tiled.uri,
            api_key=self.tiled.api_key,
            backoff=FAST,
            results_timeout=90.0,
            **kwargs,
        )

    def history_uids(self, experiment: str) -> Counter:
        """How often each decision of ``experiment`` is in the history and the queue."""
        items = [*self.api.history_get(reload=True)["items"]]
        items += self.api.queue_get(reload=True)["items"]
        records = [item.get("kwargs", {}).get("md", {}).get(DECISION_KEY, {}) for item in items]
        return Counter(r["uid"] for r in records if r.get("experiment") == experiment)


@pytest.fixture(scope="module")
def stack(
    tiled_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("qserver")
    env = {
        "SMARTLAB_TILED_URI": tiled_server.uri,
        "SMARTLAB_API_KEY": tiled_server.api_key,
        "SMARTLAB_SPOOL_DIR": str(run_dir / "spool"),
    }
    with RedisServer(run_dir) as redis, REManager(run_dir, redis.address, env) as manager:
        stack = Stack(manager, tiled_server)
        stack.api.environment_open()
        stack.api.wait_for_idle(timeout=120)
        assert stack.api.status()["worker_environment_exists"], run_dir / "re_manager.log"
        yield stack
        stack.api.close()


def test_rounds_run_and_each_decision_is_in_the_runs_start_document(stack: Stack, client) -> None:
    planner = ScriptedPlanner([], [0.47, 1.5], [math.nan])
    report = stack.agent(planner, "rounds").run(rounds=3)

    assert [d.round for d in report.submitted] == [0, 1, 2]
    assert len(report.run_uids) == 3
    assert stack.history_uids("rounds") == {decision_uid("rounds", r): 1 for r in range(3)}
    starts = [client[uid].metadata["start"] for uid in report.run_uids]
    decisions = [start[DECISION_KEY] for start in starts]
    # round 0: the planner had nothing yet -> the fallback's first two points
    assert decisions[0]["fallback"] and decisions[0]["points"] == [
        {"sample_x": 0.3},
        {"sample_x": 0.6},
    ]
    assert decisions[0]["from_results"] == []
    # round 1: from round 0's results; 1.5 clamped to the limit, the reason recorded
    assert decisions[1]["from_results"] == [
        {"run_uid": report.run_uids[0], "plugin": "phase_cnn", "seq_nums": [1, 2]}
    ]
    assert decisions[1]["points"] == [{"sample_x": 0.47}, {"sample_x": 0.6}]
    assert decisions[1]["corrections"][0]["action"] == "clamped"
    assert "outside [0.3, 0.6]" in decisions[1]["corrections"][0]["reason"]
    # round 2: NaN rejected -> the fallback's next point not measured yet
    assert decisions[2]["corrections"][0] == {
        "point": {"sample_x": "nan"},
        "action": "rejected",
        "reason": "sample_x = nan is not finite",
    }
    assert decisions[2]["fallback"] and decisions[2]["points"] == [{"sample_x": 0.45}]
    assert [len(d["from_results"]) for d in decisions] == [0, 1, 2]
    # the runs measured what was decided, SmartLab analysed them, the planner read the results
    xs = [list(client[uid]["primary"]["sample_x"].read()) for uid in report.run_uids]
    assert xs == [[0.3, 0.6], [0.47, 0.6], [0.45]]
    assert [start["smartlab"] for start in starts] == [{"plugins": ["phase_cnn"]}] * 3
    assert [(o.seq_num, o.position["sample_x"]) for o in planner.ingested[:2]] == [
        (1, 0.3),
        (2, 0.6),
    ]
    assert planner.ingested[0].values["phase_name"] == "rhombohedral"
    assert len(planner.ingested) == 5


def test_a_restarted_agent_waits_for_what_is_queued_and_never_submits_it_again(
    stack: Stack,
) -> None:
    first = stack.agent(ScriptedPlanner([0.4]), "restart")
    first._connect()
    first._submit(first.decide(0))  # ... and the agent dies before the queue is started

    planner = ScriptedPlanner([0.5])
    report = stack.agent(planner, "restart").run(rounds=2)

    assert report.found == [decision_uid("restart", 0)]
    assert [d.round for d in report.submitted] == [1]
    assert stack.history_uids("restart") == {
        decision_uid("restart", 0): 1,
        decision_uid("restart", 1): 1,
    }
    # the new agent rebuilt its planner's state from the earlier decision's results
    assert [o.position["sample_x"] for o in planner.ingested] == [0.4, 0.5]
    again = stack.agent(ScriptedPlanner(), "restart").run(rounds=2)
    assert again.submitted == [] and again.ended == "2 of 2 rounds done"


class LosesFirstReply:
    """A REManagerAPI whose first ``item_add`` reaches the server but whose reply is lost."""

    def __init__(self, api) -> None:
        self._api = api
        self.lost = 0

    def __getattr__(self, name: str):
        return getattr(self._api, name)

    def item_add(self, *args, **kwargs):
        response = self._api.item_add(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            raise self._api.RequestTimeoutError("reply lost (simulated)", {"method": "item_add"})
        return response


def test_a_lost_reply_is_retried_without_submitting_twice(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    api = LosesFirstReply(stack.manager.api())
    caplog.set_level(logging.INFO, logger="smartlab_plugins.adaptive.agent")
    report = stack.agent(ScriptedPlanner([0.42]), "lost-reply", api=api).run(rounds=1)

    assert api.lost == 1
    assert [d.points for d in report.submitted] == [[{"sample_x": 0.42}]]
    assert stack.history_uids("lost-reply") == {decision_uid("lost-reply", 0): 1}
    assert f"queueserver at {stack.manager.control_address} unreachable, retrying in" in caplog.text
    assert "is already on the queueserver: not submitted again" in caplog.text


def _proxy(front: str, back: str, control: str, ready: threading.Event) -> None:
    """A 0MQ proxy from ``front`` to the RE Manager at ``back``, until TERMINATE on ``control``."""
    context = zmq.Context.instance()  # the context of the inproc ``control`` socket
    frontend, backend = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    steer = context.socket(zmq.PAIR)
    frontend.bind(front)
    backend.connect(back)
    steer.connect(control)
    ready.set()
    try:
        zmq.proxy_steerable(frontend, backend, None, steer)
    finally:
        for socket in (frontend, backend, steer):
            socket.close(linger=0)


def test_a_queueserver_down_at_start_is_retried_then_used(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing answers at the agent's address until a proxy to the RE Manager comes up there."""
    address = f"tcp://127.0.0.1:{free_port()}"
    caplog.set_level(logging.INFO, logger="smartlab_plugins.adaptive.agent")
    agent = stack.agent(ScriptedPlanner([0.55]), "late-start", zmq_control_addr=address)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(report=agent.run(rounds=1)))
    thread.start()
    deadline = time.monotonic() + 20
    while "unreachable, retrying" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"queueserver at {address} unreachable, retrying in 0.5 s" in caplog.text

    context = zmq.Context.instance()
    control = context.socket(zmq.PAIR)
    control_address = f"inproc://steer-{free_port()}"
    control.bind(control_address)
    ready = threading.Event()
    args = (address, stack.manager.control_address, control_address, ready)
    proxy = threading.Thread(target=_proxy, args=args, daemon=True)
    proxy.start()
    assert ready.wait(timeout=10)
    try:
        thread.join(timeout=90)
        assert not thread.is_alive()
    finally:
        control.send(b"TERMINATE")
        proxy.join(timeout=10)
        control.close(linger=0)
    assert [d.points for d in outcome["report"].submitted] == [[{"sample_x": 0.55}]]
    assert stack.history_uids("late-start") == {decision_uid("late-start", 0): 1}


def test_tiled_unreachable_is_retried_then_a_clear_error(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    agent = QueueAgent(
        ScriptedPlanner(),
        TARGET,
        experiment="no-tiled",
        zmq_control_addr=stack.manager.control_address,
        tiled_uri=uri,
        api_key=stack.tiled.api_key,
        backoff=Backoff(initial=0.2, maximum=1.0, give_up_after=1.5),
    )
    # how long it waited depends on how long each refused connection takes on a busy machine
    with pytest.raises(AgentError, match=rf"Tiled at {uri} unreachable for \d+ s, giving up"):
        agent.run(rounds=1)
    assert f"Tiled at {uri} unreachable, retrying in 0.2 s" in caplog.text
    assert stack.history_uids("no-tiled") == {}


def test_without_redis_server_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from smartlab_plugins.adaptive.qserver import ProcessStartError

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProcessStartError, match=r"redis-server not found on PATH.*make redis"):
        RedisServer(tmp_path).start()


def test_the_cli_runs_either_half_of_the_adaptive_demo_and_leaves_the_plain_demo_alone() -> None:
    from smartlab_plugins.cli import build_parser, main

    parser = build_parser()
    plain = parser.parse_args(["demo"])
    assert plain.which is None and not plain.queueserver_only and not plain.in_loop_only
    adaptive = parser.parse_args(["demo", "adaptive", "--queueserver-only", "--rounds", "2"])
    assert adaptive.which == "adaptive" and adaptive.queueserver_only and adaptive.rounds == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "adaptive", "--queueserver-only", "--in-loop-only"])
    assert main(["demo", "--in-loop-only"]) == 2  # the flags belong to `demo adaptive`
