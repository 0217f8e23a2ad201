"""SmartLab's server analyses each endpoint's dependencies once, not on every request."""

from __future__ import annotations

import pyarrow as pa
from fastapi.dependencies import utils
from tiled.client import Context, from_context

from smartlab_plugins import dependants
from smartlab_plugins.server import build_app

KEY = "secretfortests"


def test_requests_after_the_first_analyse_no_dependency(tmp_path, monkeypatch):
    analysed: list[object] = []
    original = utils.get_typed_signature

    def counted(call):
        analysed.append(call)
        return original(call)

    monkeypatch.setattr(utils, "get_typed_signature", counted)
    app = build_app(tmp_path / "tiled", KEY)  # installs the memo, as `smartlab serve` does
    assert app.dependency_overrides  # tiled overrides get_settings: FastAPI's slow path
    with Context.from_app(app, api_key=KEY) as context:
        client = from_context(context)
        rows = pa.table({"seq_num": [1], "x": [0.5]})

        def one_round(i: int) -> None:
            node = client.create_container(f"analysis{i}").create_container("primary")
            events = node.create_appendable_table(rows.schema, key="events")
            events.append_partition(0, rows)
            assert events.read()["x"].tolist() == [0.5]  # the answers are tiled's own

        one_round(0)  # the first request of each endpoint analyses its dependencies
        analysed.clear()
        for i in range(1, 4):
            one_round(i)
    assert analysed == []  # without the memo: dozens per request


def test_installing_twice_keeps_one_memo():
    dependants.install()
    memo = utils.get_dependant
    dependants.install()
    assert utils.get_dependant is memo
    assert memo.smartlab_memoised
