"""The embedded Tiled server: writable, and closed to anyone without the key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import httpx
import pytest
from tiled.client import from_uri
from tiled_keys import API_KEY

from smartlab_plugins.server import free_port, wait_until_up


def test_requests_without_the_key_are_refused(tiled_server):
    assert httpx.get(f"{tiled_server.uri}/api/v1/metadata/").status_code == 401
    create = httpx.post(
        f"{tiled_server.uri}/api/v1/metadata/", json={"structure_family": "container"}
    )
    assert create.status_code == 401
    with pytest.raises(RuntimeError, match="requires API key"):
        from_uri(tiled_server.uri)
    assert (
        httpx.get(
            f"{tiled_server.uri}/api/v1/metadata/", headers={"Authorization": "Apikey wrong"}
        ).status_code
        == 401
    )


def test_the_key_lets_a_client_write(tiled_server):
    client = from_uri(tiled_server.uri, api_key=API_KEY)
    node = client.create_container(metadata={"written_by": "test"})
    assert client[node.item["id"]].metadata["written_by"] == "test"


def test_first_start_generates_a_private_key_and_later_starts_reuse_it(tmp_path):
    """The key, the catalog and the tables are the user's alone, and the key is never
    printed in full (the banner names the file it is in)."""
    tmp_path = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "SMARTLAB_API_KEY"}
    keys, outputs = [], []
    for _ in range(2):
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smartlab_plugins.cli",
                "serve",
                "--data-dir",
                str(tmp_path),
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_until_up(f"http://127.0.0.1:{port}", timeout=120, process=server)
        finally:
            server.terminate()
            output = server.communicate(timeout=30)[0]
        outputs.append(output)
        key_file = tmp_path / "api_key"
        keys.append(key_file.read_text().strip())
        assert str(key_file) in output and keys[-1] not in output
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
        for name in ("api_key", "catalog.db", "tables.db"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name
    assert keys[0] == keys[1] and keys[0].isalnum() and len(keys[0]) >= 32
    assert f"generated: {keys[0][:4]}..." in outputs[0]


@pytest.mark.parametrize("key", ["has-dashes-and-is-long-enough", "short1"])
def test_a_key_tiled_would_refuse_or_anyone_could_guess_is_refused_at_once(tmp_path, key):
    env = {**os.environ, "SMARTLAB_API_KEY": key}
    result = subprocess.run(
        [sys.executable, "-m", "smartlab_plugins.cli", "serve", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "SMARTLAB_API_KEY must be at least 16 letters and digits" in result.stderr


def _pushed_child(server) -> dict:
    """Subscribe to a new container, make a child in it, return the metadata Tiled pushed."""
    import threading

    client = server.client()
    parent = client.create_container(metadata={"streaming": "test"})
    pushed: dict = {}
    arrived = threading.Event()

    def on_created(update) -> None:  # held weakly by Tiled: this frame keeps it
        pushed.setdefault(update.key, dict(update.metadata))
        arrived.set()

    subscription = parent.subscribe()
    subscription.child_created.add_callback(on_created)
    subscription.start_in_thread()
    try:
        # tiled 0.2.20's server starts listening a moment after the client is told it is
        # connected: make throw-away children until one is pushed, so it listens
        for probe in range(100):
            parent.create_container(f"probe-{probe}")
            if arrived.wait(0.2):
                break
        parent.create_container("child", metadata={"answer": 42})
        deadline = time.monotonic() + 10
        while "child" not in pushed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "child" in pushed, "no update pushed"
    finally:
        subscription.disconnect()
    return pushed["child"]


def test_the_server_streams_and_keeps_its_tables_in_wal_mode(tiled_server):
    import sqlite3

    assert _pushed_child(tiled_server) == {"answer": 42}
    with sqlite3.connect(tiled_server.data_dir / "tables.db") as tables:
        assert tables.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_streaming_cache_may_live_in_redis(tmp_path):
    """What several server processes of one catalog need; ``smartlab serve --streaming-cache``."""
    import redis

    from smartlab_plugins.adaptive.qserver import RedisServer
    from smartlab_plugins.server import EmbeddedServer

    with RedisServer(tmp_path / "redis") as broker:
        uri = f"redis://{broker.address}/1"
        with EmbeddedServer(tmp_path / "tiled", streaming_cache=uri) as server:
            assert _pushed_child(server) == {"answer": 42}
            assert redis.Redis.from_url(uri).dbsize() > 0  # the update went through Redis
