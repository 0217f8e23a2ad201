"""SmartLab's server finds a node in one catalog query, with tiled's own answers otherwise."""

from __future__ import annotations

import gc
import subprocess
import sys
import types

import pyarrow as pa
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from tiled.client import Context, from_context

from smartlab_plugins import gc_pauses
from smartlab_plugins.server import build_app

KEY = "secretfortests"


@pytest.fixture
def path_queries(tmp_path):
    """A client of SmartLab's app, and the catalog queries for nodes by path each request makes."""
    queries: list[str] = []

    def note(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().startswith("SELECT nodes.id"):  # a node by its path, not its parts
            queries.append(statement)

    app = build_app(tmp_path / "tiled", KEY)
    event.listen(Engine, "before_cursor_execute", note)
    try:
        with Context.from_app(app, api_key=KEY) as context:
            yield from_context(context), queries
    finally:
        event.remove(Engine, "before_cursor_execute", note)


def test_a_deep_node_is_found_in_one_query_with_what_it_holds(path_queries):
    client, queries = path_queries
    node = client
    for key in ("smartlab", "analysis", "primary"):
        node = node.create_container(key, metadata={"level": key})
    rows = pa.table({"seq_num": [1, 2], "x": [0.5, 1.5]})
    node.create_appendable_table(rows.schema, key="events").append_partition(0, rows)

    queries.clear()
    events = client["smartlab/analysis/primary/events"]
    assert len(queries) == 1  # not one per segment (tiled's walk: four)
    assert events.read()["x"].tolist() == [0.5, 1.5]
    assert client["smartlab/analysis"].metadata["level"] == "analysis"
    assert list(client["smartlab/analysis/primary"]) == ["events"]
    other = client["smartlab"].create_container("other").create_container("primary")
    other.create_appendable_table(rows.schema, key="events")  # same depth, other segments
    assert client["smartlab/other/primary/events"].read().empty
    assert client["smartlab/analysis/primary/events"].read()["seq_num"].tolist() == [1, 2]


def test_a_missing_node_gets_tiled_s_not_found(path_queries):
    client, _ = path_queries
    client.create_container("smartlab").create_container("analysis")
    assert "smartlab/analysis/nope" not in client
    with pytest.raises(KeyError):
        client["smartlab/nope/primary"]


def test_freezing_happens_once_per_batch_of_imports(monkeypatch):
    monkeypatch.setattr(gc_pauses, "_modules_when_frozen", 0)
    try:
        assert gc_pauses.freeze_if_more_imported()
        assert gc.get_freeze_count() > 0
        assert not gc_pauses.freeze_if_more_imported()  # nothing imported since
        monkeypatch.setitem(sys.modules, "smartlab_fresh_import", types.ModuleType("fresh"))
        assert gc_pauses.freeze_if_more_imported()
    finally:
        gc.unfreeze()


def test_importing_the_follower_loads_tiled_s_table_client():
    """Not inside the request that finds a follower's first table (dask: a second or two)."""
    code = "import sys, smartlab_plugins.results; print('tiled.client.dataframe' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
