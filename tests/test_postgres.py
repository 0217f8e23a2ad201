"""Tiled on PostgreSQL: a real PostgreSQL server, ``smartlab serve`` on it, a real scan.

The servers start from the project's own code (``PostgresServer``, ``EmbeddedServer``)
on loopback ports, once for the module, and are stopped at its end.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_postgresql.dbapi
import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from tiled_keys import API_KEY

from smartlab_plugins import SmartLab, cli, settings
from smartlab_plugins import postgres as postgres_module
from smartlab_plugins.devices.beam import make_devices
from smartlab_plugins.postgres import PostgresServer, blocking_folder
from smartlab_plugins.processes import ProcessStartError
from smartlab_plugins.results import find_analyses, read_events
from smartlab_plugins.server import (
    EmbeddedServer,
    _password_to_environment,
    free_port,
    storage_paths,
)

EVENTS = 8
STARTUP_S = 180  # a Tiled server's imports alone took 14 s on two busy cores


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster in a temporary folder (one the ``postgres`` user reaches as root)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def pg_tiled(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedServer]:
    """``smartlab serve`` with its catalog and tables in that PostgreSQL database."""
    data_dir = tmp_path_factory.mktemp("tiled_on_postgres")
    server = EmbeddedServer(data_dir, api_key=API_KEY, catalog_uri=postgres.uri)
    server.start(timeout=STARTUP_S)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scan_uid(pg_tiled: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A count of the beam monitor with ``peak_stats`` live, published to that server."""
    RE = RunEngine()
    beam = make_devices(seed=11)
    smartlab = SmartLab(
        pg_tiled.uri,
        API_KEY,
        isolation="thread",
        plugins=["peak_stats"],
        spool_dir=tmp_path_factory.mktemp("spool"),
    )
    RE.subscribe(smartlab)
    try:
        (uid,) = RE(bp.count([beam["beam"]], num=EVENTS))
        smartlab.flush()
    finally:
        smartlab.close()
    return uid


def _results(server: EmbeddedServer, uid: str) -> tuple[dict[str, list], int]:
    """The run's peak_stats rows, by column, and how many raw events Tiled holds of it."""
    client = server.client()
    (analysis,) = find_analyses(client, run_uid=uid, plugin="peak_stats")
    rows = read_events(analysis).to_dict("list")
    raw = client[uid]
    assert raw.metadata["stop"]["exit_status"] == "success"
    return rows, len(raw["primary"].read()["time"])


def _postgres_rows(postgres: PostgresServer, sql: str) -> list[tuple]:
    with (
        adbc_driver_postgresql.dbapi.connect(postgres.uri) as conn,
        conn.cursor() as cursor,
    ):
        cursor.execute(sql)
        return cursor.fetchall()


def test_a_scan_publishes_results_and_the_raw_run_into_postgresql(
    postgres: PostgresServer, pg_tiled: EmbeddedServer, scan_uid: str
) -> None:
    rows, raw_events = _results(pg_tiled, scan_uid)

    assert rows["seq_num"] == list(range(1, EVENTS + 1))
    assert len(rows) > 2  # statistics beside seq_num and time
    assert raw_events == EVENTS
    # the catalog and the event rows are in PostgreSQL, not in SQLite files beside the data
    assert _postgres_rows(postgres, f"SELECT count(*) FROM nodes WHERE key = '{scan_uid}'") == [
        (1,)
    ]
    tables = _postgres_rows(
        postgres, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'table_%'"
    )
    assert tables[0][0] >= 1
    paths = storage_paths(pg_tiled.data_dir)
    assert not paths["catalog"].exists() and not paths["tables"].exists()
    # the banner names the database with its password masked, and never the password
    log = pg_tiled.log_path.read_text()
    assert f"{postgres.display_uri} (PostgreSQL" in log
    assert postgres.password not in log


def test_results_outlive_a_restart_of_tiled_and_of_postgresql(
    postgres: PostgresServer, pg_tiled: EmbeddedServer, scan_uid: str
) -> None:
    before = _results(pg_tiled, scan_uid)
    pg_tiled.stop()
    postgres.stop()
    assert postgres.process.returncode == 0  # a clean (fast) shutdown, not a kill

    postgres.start()
    pg_tiled.start(timeout=STARTUP_S)

    assert _results(pg_tiled, scan_uid) == before


def test_an_unreachable_postgresql_stops_serve_with_one_line_naming_the_masked_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    uri = f"postgresql://smartlab:hunter2secret@127.0.0.1:{port}/smartlab"
    monkeypatch.setenv("SMARTLAB_API_KEY", API_KEY)
    monkeypatch.setenv("SMARTLAB_CATALOG_URI", uri)
    monkeypatch.setenv("PGPASSWORD", "")  # serve moves the URI's password there: undone after

    status = cli.main(["serve", "--data-dir", str(tmp_path), "--port", str(free_port())])

    out, err = capsys.readouterr()
    assert status == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("smartlab: error: cannot use the PostgreSQL catalog ")
    assert f"postgresql://smartlab:***@127.0.0.1:{port}/smartlab" in line
    assert "(from SMARTLAB_CATALOG_URI)" in line and "Connection refused" in line
    assert "hunter2secret" not in out + err


def test_serve_moves_the_password_out_of_the_uri_tiled_passes_to_its_init_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGPASSWORD", "")
    uri = "postgresql://lab:p%40ss@db.example:5433/results?sslmode=require"

    assert (
        _password_to_environment(uri) == "postgresql://lab@db.example:5433/results?sslmode=require"
    )
    assert os.environ["PGPASSWORD"] == "p@ss"  # where libpq and asyncpg look for it
    assert _password_to_environment("postgresql://lab@db.example/results").endswith("/results")


def test_the_catalog_setting_is_the_option_then_the_environment_then_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "smartlab.toml"
    config.write_text('[server]\ncatalog = "postgresql://lab@db.example/from_file"\n')
    monkeypatch.setenv("SMARTLAB_CONFIG", str(config))
    monkeypatch.delenv("SMARTLAB_CATALOG_URI", raising=False)
    in_file = f"[server] catalog in {config}"

    assert settings.catalog_uri() == ("postgresql://lab@db.example/from_file", in_file)
    monkeypatch.setenv("SMARTLAB_CATALOG_URI", "postgresql://lab@db.example/from_env")
    assert settings.catalog_uri() == (
        "postgresql://lab@db.example/from_env",
        "SMARTLAB_CATALOG_URI",
    )
    assert settings.catalog_uri("postgresql://lab@db.example/opt") == (
        "postgresql://lab@db.example/opt",
        "--catalog",
    )
    assert settings.catalog_uri("sqlite") == (None, "--catalog")  # the default, explicitly
    monkeypatch.delenv("SMARTLAB_CATALOG_URI")
    config.write_text("[server]\n")
    assert settings.catalog_uri() == (None, "default")
    config.write_text("[server]\ncatalog = 5\n")
    with pytest.raises(settings.ConfigurationError, match=r"\[server\] catalog in .*: expected"):
        settings.catalog_uri()


def test_without_postgresql_binaries_the_error_says_how_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres_module, "DEBIAN_ROOT", tmp_path)
    with pytest.raises(
        ProcessStartError, match=r"initdb and postgres were found neither.*make postgres"
    ):
        PostgresServer(tmp_path / "run").start()


def test_a_run_folder_the_postgres_user_cannot_reach_is_named() -> None:
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o711)  # searchable by all; pytest's own tmp_path is not, as root
        if blocking_folder(Path(folder) / "x", "postgres") is not None:
            pytest.skip("the system temporary folder is out of the postgres user's reach")
        closed = Path(folder) / "closed"
        closed.mkdir(mode=0o700)
        run_dir = closed / "run"

        assert blocking_folder(run_dir, "postgres") == closed
        if os.geteuid() == 0:  # PostgreSQL would run as that user: refused before initdb, with why
            why = re.escape(f"cannot reach {run_dir}: {closed} is mode 700")
            with pytest.raises(ProcessStartError, match=why):
                PostgresServer(run_dir).start()
