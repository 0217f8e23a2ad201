"""Shared fixtures: a real Tiled server over HTTP, real RunEngines, real SmartLab callbacks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bluesky import RunEngine
from tiled_keys import API_KEY

from smartlab_plugins.server import EmbeddedServer

os.environ.setdefault("MPLBACKEND", "Agg")  # live views draw off screen in tests


@pytest.hookimpl(tryfirst=True)
@pytest.fixture(autouse=True)
def _bluesky_run_clients_restored() -> Iterator[None]:
    """Undo what ``BlueskyRunV3.v2`` (bluesky-tiled-plugins 2.0.12) does to the process.

    It copies tiled's default structure-client registry shallowly and sets ``BlueskyRun``
    in the copy, which changes the shared one: every run read later in the process is a
    v2 run (whose streams have no ``steer`` field, no ``.base``). databroker's ``Broker``
    goes through it; this keeps one test's use from changing the next test's reads.
    """
    from tiled.client.container import DEFAULT_STRUCTURE_CLIENT_DISPATCH

    yield
    from bluesky_tiled_plugins.clients.bluesky_run import BlueskyRun

    for registry in DEFAULT_STRUCTURE_CLIENT_DISPATCH.values():
        if "BlueskyRun" in registry:
            registry.set("BlueskyRun", lambda: BlueskyRun)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Escape lone surrogates in a report's captured output before xdist sends it.

    The fuzz tests feed documents strings such as ``"\\udcff"``; a message quoting one
    cannot be encoded as UTF-8, and a report that holds it makes pytest-xdist's worker
    fail to send it and abort the whole run (INTERNALERROR), losing every later result.
    """
    report.sections = [
        (title, text.encode("utf-8", "backslashreplace").decode("utf-8"))
        for title, text in report.sections
    ]


@pytest.fixture(autouse=True)
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local results journal per test, so no test adopts what another left behind."""
    folder = tmp_path / "spool"
    monkeypatch.setenv("SMARTLAB_SPOOL_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One writable Tiled server for the whole session, on a free port, key required."""
    data_dir = tmp_path_factory.mktemp("tiled")
    with EmbeddedServer(data_dir, api_key=API_KEY) as server:
        yield server


@pytest.fixture
def client(tiled_server: EmbeddedServer):
    return tiled_server.client()


@pytest.fixture
def tiled_env(tiled_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment a user sets to point SmartLab at the server."""
    monkeypatch.setenv("SMARTLAB_TILED_URI", tiled_server.uri)
    monkeypatch.setenv("SMARTLAB_API_KEY", API_KEY)
    return {**os.environ}


@pytest.fixture
def RE() -> RunEngine:
    return RunEngine()


@pytest.fixture
def make_smartlab(tiled_server: EmbeddedServer) -> Iterator[Callable]:
    """Build SmartLab callbacks bound to the test server; all are closed at teardown."""
    from smartlab_plugins import SmartLab

    made = []

    def make(**kwargs) -> SmartLab:
        kwargs.setdefault("isolation", "thread")
        smartlab = SmartLab(tiled_server.uri, API_KEY, **kwargs)
        made.append(smartlab)
        return smartlab

    yield make
    for smartlab in made:
        smartlab.close()


@pytest.fixture
def external_dir(tiled_server: EmbeddedServer) -> Path:
    """A folder the server may read detector files from."""
    return tiled_server.external_dir
