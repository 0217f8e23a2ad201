"""`smartlab evaluate`'s tables: every metric a card reports, readable, none as a dict repr."""

from __future__ import annotations

import pytest

from smartlab_plugins.models.evaluate import metric_tables
from smartlab_plugins.models.registry import TASKS
from smartlab_plugins.models.store import card_of


def tables(metrics: dict) -> dict[str, list[list[str]]]:
    return dict(metric_tables(metrics))


def test_scalars_come_first_with_four_significant_digits():
    found = tables({"accuracy": 0.98765432, "n": 1000, "ece": 0.000312774, "perfect": 1.0})

    assert found[""] == [
        ["metric", "value"],
        ["accuracy", "0.9877"],
        ["n", "1000"],
        ["ece", "0.0003128"],
        ["perfect", "1.0"],
    ]


def test_results_sharing_their_keys_make_one_table_with_a_row_each():
    metrics = {
        "j1": {"relative_mae": 0.0083631, "coverage_68": 0.683},
        "j2": {"relative_mae": 0.0239308, "coverage_68": 0.681},
        "n": 10,
    }

    assert metric_tables(metrics)[1] == (
        "",
        [
            ["", "relative_mae", "coverage_68"],
            ["j1", "0.008363", "0.683"],
            ["j2", "0.02393", "0.681"],
        ],
    )


def test_a_wide_grid_is_transposed_and_histograms_are_left_to_json():
    subset = {"detection": 1.0, "false_alarm_rate": None, "n": 3, "counts": {"0": 2, "5": 1}}
    found = tables({"lstm": {"all": subset, "heating": subset}})

    assert found["lstm"] == [
        ["", "all", "heating"],
        ["detection", "1.0", "1.0"],
        ["false_alarm_rate", "-", "-"],
        ["n", "3", "3"],
    ]
    assert found["not shown here (see --json)"] == [["metric"], ["lstm.{all,heating}.counts"]]


def test_a_confusion_matrix_keeps_its_labels_and_records_get_a_column_per_field():
    metrics = {
        "confusion": {"classes": ["a", "b"], "rows_true_columns_predicted": [[5, 1], [0, 7]]},
        "by_distance": [{"distance": [0.0, 0.01], "n": 13, "accuracy": 0.8888888}],
    }
    found = tables(metrics)

    assert found["confusion (rows true columns predicted)"] == [
        ["", "a", "b"],
        ["a", "5", "1"],
        ["b", "0", "7"],
    ]
    assert found["by_distance"] == [["distance", "n", "accuracy"], ["[0.0, 0.01]", "13", "0.8889"]]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_shipped_cards_metrics_become_tables_without_reprs(name):
    metrics = card_of(name).metrics
    found = metric_tables(metrics)

    text = "\n".join(" ".join(cell for row in cells for cell in row) for _, cells in found)
    assert "{'" not in text and "': " not in text
    for title, cells in found:
        assert len({len(row) for row in cells}) == 1, (title, cells)
    named = {title.split(" (")[0].split(".")[0] for title, _ in found}
    named |= {row[0] for _, cells in found for row in cells}
    assert set(metrics) <= named  # every metric shown, or named as left to --json
