"""Reading a run's decision stream back from Tiled, for the plan tests."""

from __future__ import annotations

import json


def decisions(client, uid):
    """The run's decision stream as a list of dicts, point and detail decoded."""
    table = client[uid]["smartlab_decisions"].read()
    rows = []
    for i in range(table.sizes["time"]):
        row = {k.removeprefix("decision_"): table[k].values[i].item() for k in table.data_vars}
        row["point"], row["detail"] = json.loads(row["point"]), json.loads(row["detail"])
        rows.append(row)
    return rows
