"""The Dask compute engine on a real cluster: the same results, stateful plugins kept at home,
GPU resources asked for only where declared, and no event lost to a killed worker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import bluesky.plans as bp
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from smartlab_plugins import compute
from smartlab_plugins.devices import ins, operando
from smartlab_plugins.hookspecs import EventBatch, RunContext
from smartlab_plugins.results import find_analyses, read_errors, read_events
from smartlab_plugins.runner import WorkerError
from smartlab_plugins.settings import ConfigurationError

SPINWAVE = "spinwave_cnn"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two worker processes of one thread each, as ``compute="local:2"`` would start."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def dask(cluster: LocalCluster) -> Iterator[Client]:
    """A client of the test's own, to look into the cluster."""
    with Client(cluster, set_as_default=False) as client:
        yield client


def started_on(dask: Client) -> dict[str, list[tuple[str, str]]]:
    """Per Dask worker, the (plugin, run uid) pairs its process has started."""
    return {
        worker: [tuple(p) for p in runs] for worker, runs in dask.run(compute.started_runs).items()
    }


def by_place(client, uid: str, plugin: str) -> dict[str | None, object]:
    """The run's analyses by ``plugin``, keyed by where they ran (None: in the worker)."""
    return {a.metadata["compute"]: a for a in find_analyses(client, run_uid=uid, plugin=plugin)}


def test_a_scan_publishes_the_same_results_through_the_engine_as_without_it(
    RE, make_smartlab, client, cluster, dask
):
    spectrometer = ins.make_devices(seed=3)["ins"]
    plugins = [SPINWAVE, "peak_stats"]
    here = make_smartlab(plugins=plugins)
    there = make_smartlab(plugins=plugins, compute=cluster.scheduler_address, raw=False)
    RE.subscribe(here)
    RE.subscribe(there)
    (uid,) = RE(bp.count([spectrometer], num=8))
    here.flush()
    there.flush()

    spinwave = by_place(client, uid, SPINWAVE)
    local, remote = read_events(spinwave[None]), read_events(spinwave[cluster.scheduler_address])
    assert list(remote["seq_num"]) == list(range(1, 9))
    assert {"j1", "j2", "d", "j1_std"} <= set(remote.columns)
    pd.testing.assert_frame_equal(local, remote, check_exact=False, rtol=1e-5)
    assert read_errors(spinwave[cluster.scheduler_address]).empty
    assert any((SPINWAVE, uid) in runs for runs in started_on(dask).values())
    # peak_stats builds its run summary from every batch: it is not stateless, so it stays here
    peaks = find_analyses(client, run_uid=uid, plugin="peak_stats")
    assert [a.metadata["compute"] for a in peaks] == [None, None]
    assert peaks[0].metadata["summary"] == peaks[1].metadata["summary"]
    pd.testing.assert_frame_equal(read_events(peaks[0]), read_events(peaks[1]))


def test_the_stateful_lstm_stays_in_the_worker(RE, make_smartlab, client, cluster, dask):
    devices = operando.make_devices(seed=11)
    detector, controller = devices["operando"], devices["temperature"]
    t_up = detector.truth["t_up"]
    smartlab = make_smartlab(plugins=["transition_lstm"], compute=cluster.scheduler_address)
    RE.subscribe(smartlab)
    (uid,) = RE(operando.ramp(detector, controller, t_up - 20, t_up + 20, 4.0, 20))
    smartlab.flush()

    (analysis,) = find_analyses(client, run_uid=uid, plugin="transition_lstm")
    assert analysis.metadata["compute"] is None
    assert list(read_events(analysis)["seq_num"]) == list(range(1, 21))
    assert analysis.metadata["summary"]["frames"] == 20  # one detector saw every frame, in order
    assert not any(
        plugin == "transition_lstm" for runs in started_on(dask).values() for plugin, _ in runs
    )


def test_an_unreachable_scheduler_stops_the_worker_with_an_error_naming_it(
    make_smartlab, monkeypatch
):
    monkeypatch.setattr(compute, "CONNECT_TIMEOUT_S", 1.0)  # the worker runs in this process
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(WorkerError, match=f"cannot reach the Dask scheduler at {address}"):
        make_smartlab(plugins=[SPINWAVE], compute=address)


def spinwave_task(seed: int = 1, events: int = 2) -> tuple[RunContext, EventBatch]:
    """A run and a batch of real maps, as the worker would send them."""
    spectrometer = ins.make_devices(seed=seed)["ins"]
    maps = []
    for _ in range(events):
        spectrometer.trigger()
        maps.append(spectrometer.sqw.get())
    run = RunContext(f"gpu-test-{seed}", {"uid": f"gpu-test-{seed}", "scan_id": 1})
    seq_num = np.arange(1, events + 1)
    return run, EventBatch("primary", seq_num, seq_num.astype(float), {"ins_sqw": np.stack(maps)})


def test_gpu_plugins_ask_for_a_gpu_only_where_a_worker_declares_one(cluster, dask, monkeypatch):
    monkeypatch.setattr(compute, "RESOURCES_CHECK_S", 0.0)
    engine = compute.DaskEngine(cluster.scheduler_address)
    gpu_worker = None
    try:
        assert not engine.gpus()  # this machine has none: the task runs on a CPU worker
        run, batch = spinwave_task()
        assert (
            len(engine.submit(SPINWAVE, run, batch, gpu=True).result(timeout=120).scalars["j1"])
            == 2
        )

        gpu_worker = subprocess.Popen(  # the documented command, with a GPU only declared
            [
                *(sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address),
                *("--nthreads", "1", "--resources", "GPU=1", "--no-dashboard", "--name", "gpu0"),
            ]
        )
        dask.wait_for_workers(3, timeout=60)
        (gpu_address,) = [
            address
            for address, worker in dask.scheduler_info(n_workers=-1)["workers"].items()
            if worker.get("resources", {}).get("GPU")
        ]
        assert engine.gpus()
        futures = [engine.submit(SPINWAVE, run, batch, gpu=True) for _ in range(4)]
        for future in futures:
            assert len(future.result(timeout=120).scalars["j1"]) == 2
        holders = dask.who_has(futures)
        assert {worker for f in futures for worker in holders[f.key]} == {gpu_address}
    finally:
        engine.close()
        if gpu_worker is not None:
            gpu_worker.terminate()
            gpu_worker.wait(timeout=60)
    deadline = time.monotonic() + 30
    while len(dask.scheduler_info(n_workers=-1)["workers"]) > 2 and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_dask_worker_killed_mid_run_loses_no_event(RE, make_smartlab, client, cluster, dask):
    spectrometer = ins.make_devices(seed=7)["ins"]
    smartlab = make_smartlab(plugins=[SPINWAVE], compute=cluster.scheduler_address)
    pids = dask.run(os.getpid)
    killed: dict[str, object] = {}

    def kill_a_busy_worker(name, doc):  # on the RunEngine thread, while the scan goes on
        if name != "event" or killed:
            return
        busy = [worker for worker, tasks in dask.processing().items() if tasks]
        if busy:
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.update(worker=busy[0], seq_num=doc["seq_num"])

    RE.subscribe(smartlab)
    RE.subscribe(kill_a_busy_worker)
    (uid,) = RE(bp.count([spectrometer], num=24, delay=0.02))
    smartlab.flush()

    assert killed, "no Dask worker had a task to kill during the scan"
    assert killed["seq_num"] < 24
    (analysis,) = find_analyses(client, run_uid=uid, plugin=SPINWAVE)
    table = read_events(analysis)
    assert list(table["seq_num"]) == list(range(1, 25))  # each event once: none lost, none twice
    assert read_errors(analysis).empty
    assert analysis.metadata["status"] == "complete"
    dask.wait_for_workers(2, timeout=60)  # the nanny restarts the killed one
    assert pids[killed["worker"]] not in dask.run(os.getpid).values()


def test_local_starts_a_cluster_of_single_threaded_processes_and_stops_it():
    with pytest.raises(ConfigurationError, match="expected local, local:N"):
        compute.DaskEngine("local:0")
    engine = compute.DaskEngine("local:1")
    try:
        engine.client.wait_for_workers(1, timeout=60)
        (worker,) = engine.client.scheduler_info(n_workers=-1)["workers"].values()
        assert worker["nthreads"] == 1
        (pid,) = engine.client.run(os.getpid).values()
        assert pid != os.getpid()  # a process of its own: plugins hold the GIL
        assert not engine.gpus()
    finally:
        engine.close()
    deadline = time.monotonic() + 30
    while process_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_exists(pid), "closing the engine left its worker process running"


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
