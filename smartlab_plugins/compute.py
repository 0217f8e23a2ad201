"""The compute engine: stateless plugins' batches analysed on Dask workers, GPU-aware.

A plugin whose work is heavy (a network on large frames) can outgrow the
worker's process. With a compute engine set (``SmartLab(compute=...)``,
``smartlab worker --compute``, ``SMARTLAB_COMPUTE``), the worker sends each
batch of a plugin that declares itself ``stateless`` (:class:`PluginInfo`) to
a Dask cluster as a task and its lane waits for the result, so the watchdog,
failure recording and the order of results stay the worker's. Plugins that
carry state from batch to batch (``transition_lstm``'s hidden state,
``peak_stats``' run summary) stay in the worker: their batches must meet one
``run.state`` in order.

The task carries the plugin's *name*, the run (without its ``state``) and the
batch, never the plugin or its weights: each Dask worker process loads the
plugin from its installed entry point, once, and calls ``smartlab_start_run``
once per run it sees (:func:`analyze_remote`).

A plugin that declares ``gpu`` asks for one ``GPU`` resource per task, but only
while some worker of the cluster declares that resource
(``dask worker ADDRESS --resources GPU=1``); otherwise its tasks run on any
worker, on the CPU, rather than wait for a GPU that no worker has.

A task's exception is not retried (``retries=0``): a plugin that refuses a
batch refuses it again, and the worker already retries a failed batch event
by event. A Dask worker that dies is another matter: the scheduler reruns
the tasks it held on another worker (up to ``distributed.scheduler.allowed-failures``
times, then ``KilledWorker``), and the future resolves once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING

from smartlab_plugins.hookspecs import EventBatch, PluginInfo, Results, RunContext
from smartlab_plugins.manager import PLUGINS, PluginManager
from smartlab_plugins.settings import ConfigurationError

if TYPE_CHECKING:
    from distributed import Future

logger = logging.getLogger(__name__)

#: The address that starts a ``distributed.LocalCluster`` here (``local:N`` for N workers).
LOCAL = "local"
#: The resource a GPU worker declares (``dask worker --resources GPU=1``).
GPU = "GPU"
#: Seconds to reach the scheduler before giving up with :class:`ComputeUnreachable`.
CONNECT_TIMEOUT_S = 5.0
#: Seconds between looks at which resources the cluster's workers declare.
RESOURCES_CHECK_S = 5.0
#: (plugin, run) pairs one Dask worker process keeps started; beyond, the oldest is dropped
#: (a stateless plugin loses nothing: a later batch of that run only starts it again).
RUNS_KEPT = 16


class ComputeUnreachable(ConnectionError):
    """The Dask scheduler did not answer; the message names the address tried."""


class DaskEngine:
    """A Dask cluster that analyses stateless plugins' batches.

    ``address`` is a scheduler's (``tcp://host:8786``), or ``"local"`` /
    ``"local:N"`` for a ``LocalCluster`` started here with N worker processes
    (default: one per core) of one thread each: processes, because plugins
    hold the GIL between their numpy and torch calls.
    """

    def __init__(self, address: str, connect_timeout: float | None = None) -> None:
        from distributed import Client, LocalCluster

        connect_timeout = CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout
        self._cluster = None
        if address == LOCAL or address.startswith(f"{LOCAL}:"):
            count = address.partition(":")[2]
            if count and not (count.isdigit() and int(count) >= 1):
                raise ConfigurationError(
                    f"compute {address!r}: expected local, local:N (N >= 1 workers) or the "
                    "address of a Dask scheduler, tcp://HOST:PORT"
                )
            workers = int(count or os.cpu_count() or 1)
            self._cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            address = self._cluster.scheduler_address
        self.address = address
        try:
            self.client = Client(address, timeout=connect_timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ComputeUnreachable(
                f"cannot reach the Dask scheduler at {address} within {connect_timeout:g} s "
                f"({type(exc).__name__}: {exc}); start one there (dask scheduler), name a "
                "running one (compute=, --compute, SMARTLAB_COMPUTE), or none to analyse in "
                "the worker"
            ) from None
        self._checked = -float("inf")
        self._gpus: bool | None = None
        self._installed = frozenset(PLUGINS.installed())
        logger.info("compute engine: Dask scheduler at %s", address)

    def runs(self, info: PluginInfo) -> bool:
        """Whether the engine analyses this plugin's batches: it must be stateless, and
        installed (a Dask worker loads it by its entry point; one registered in this
        session exists only here)."""
        return info.stateless and info.name in self._installed

    def submit(self, plugin: str, run: RunContext, batch: EventBatch, gpu: bool = False) -> Future:
        """Start ``plugin``'s analysis of ``batch`` on the cluster; its future ``Results``."""
        resources = {GPU: 1} if gpu and self.gpus() else None
        portable = RunContext(run.uid, run.start, dict(run.descriptors), options=run.options)
        return self.client.submit(
            analyze_remote,
            plugin,
            portable,
            batch.stream,
            batch,
            key=f"{plugin}-{uuid.uuid4().hex}",
            resources=resources,
            retries=0,
        )

    def gpus(self) -> bool:
        """Whether some worker of the cluster declares a ``GPU`` resource (looked up at
        most every ``RESOURCES_CHECK_S``, so GPU workers that join are used)."""
        if time.monotonic() - self._checked > RESOURCES_CHECK_S:
            workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
            gpus = any(w.get("resources", {}).get(GPU, 0) >= 1 for w in workers)
            self._checked = time.monotonic()
            if gpus != self._gpus:
                logger.info(
                    "compute engine %s: %s",
                    self.address,
                    "workers declare a GPU resource; plugins that want a GPU ask for one"
                    if gpus
                    else "no worker declares a GPU resource; every plugin runs on the CPU",
                )
            self._gpus = gpus
        return bool(self._gpus)

    def close(self) -> None:
        """Disconnect (pending tasks are cancelled), and stop the local cluster if we started it."""
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


_lock = threading.Lock()
_plugins = PluginManager(load_entrypoints=False)
_runs: OrderedDict[tuple[str, str], RunContext] = OrderedDict()


def analyze_remote(plugin: str, run: RunContext, stream: str, batch: EventBatch) -> Results | None:
    """``plugin``'s ``smartlab_analyze`` of ``batch``, in a Dask worker process.

    The plugin is loaded from its installed entry point on its first task in
    the process (only the plugins asked for: a GPU worker need not import the
    others), and ``smartlab_start_run`` is called on the first task of each
    run: later tasks reuse the loaded model. ``run`` arrives without a
    ``state``; the process keeps its own, per plugin and run.
    """
    with _lock:
        _plugins.load(plugin)
        context = _runs.get((plugin, run.uid))
        if context is None:
            context = RunContext(run.uid, run.start, dict(run.descriptors), options=run.options)
            _plugins.call("smartlab_start_run", plugin, run=context)
            _runs[(plugin, run.uid)] = context
            while len(_runs) > RUNS_KEPT:
                _runs.popitem(last=False)
        else:
            context.descriptors.update(run.descriptors)
            _runs.move_to_end((plugin, run.uid))
    return _plugins.call("smartlab_analyze", plugin, run=context, stream=stream, batch=batch)


def started_runs() -> list[tuple[str, str]]:
    """The (plugin, run uid) pairs this process has started, oldest first: what a Dask
    worker holds, for monitoring (``client.run(started_runs)``) and tests."""
    with _lock:
        return list(_runs)
