"""``smartlab evaluate``: check a shipped model's claims on a freshly simulated test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smartlab_plugins.models.registry import task as task_named
from smartlab_plugins.models.store import load_model
from smartlab_plugins.models.training import predict
from smartlab_plugins.settings import ConfigurationError

SEED_OFFSET = 1000


def evaluate(
    name: str,
    n: int = 1000,
    seed: int | None = None,
    directory: Path | None = None,
    shift: str | None = None,
) -> dict[str, Any]:
    """Metrics of model ``name`` on ``n`` new samples from a seed its training never used.

    With ``shift`` (a name from :data:`~smartlab_plugins.models.shifts.SHIFTS`),
    on a shifted instrument instead, beside an in-distribution set: the
    metrics, the OOD AUROC and the honesty of the uncertainties
    (:func:`~smartlab_plugins.models.shifts.evaluate_shift`).
    """
    model = load_model(name, directory, device="cpu")
    training_seed = model.card.data["generator_seed"]
    if seed is None:
        seed = training_seed + SEED_OFFSET
    if seed == training_seed:
        raise ConfigurationError(
            f"seed {seed} generated {name}'s training data; evaluate with another seed"
        )
    if shift is not None:
        from smartlab_plugins.models.shifts import evaluate_shift

        report = evaluate_shift(name, shift, n, seed, model)
        return {"model": name, "sha256": model.card.sha256, "seed": seed, **report}
    task = task_named(name)
    if hasattr(task, "evaluate_model"):  # scored on whole frames, as its card reports
        metrics = task.evaluate_model(model, n, seed)
    else:
        data = task.make_data(n, seed)
        metrics = task.evaluate(predict(model.net, data.x), data, model.card.extras)
    return {"model": name, "sha256": model.card.sha256, "seed": seed, "metrics": metrics}


Table = tuple[str, list[list[str]]]  # a title and rows of text cells, the first row a header

SIGNIFICANT_DIGITS = 4
MAX_LIST_CELL = 6  # a longer list is no cell: it is left to ``--json``
MAX_ROWS = 12  # a dict of more entries (a histogram) is left to ``--json``


def metric_tables(metrics: dict[str, Any]) -> list[Table]:
    """A model's metrics (as its card or :func:`evaluate` gives them) as titled tables of text.

    For ``smartlab evaluate`` and ``smartlab train`` to print what a reader can
    compare at a glance: scalars as ``metric | value`` rows; results that
    share their keys (per output, per phase, per subset) as one table, a row
    each; a confusion matrix with its labels; a list of records with a column
    per field. Numbers keep :data:`SIGNIFICANT_DIGITS` significant digits.
    What fits no table (e.g. histograms) is named in a last one, to be read
    with ``--json``.
    """
    tables: list[Table] = []
    left_out: list[str] = []
    _add_tables(tables, left_out, "", metrics)
    if left_out:
        tables.append(("not shown here (see --json)", [["metric"], *([k] for k in left_out)]))
    return tables


def _add_tables(tables: list[Table], left_out: list[str], title: str, metrics: dict) -> None:
    scalars = [[key, _cell(value)] for key, value in metrics.items() if _is_cell(value)]
    if scalars:
        tables.append((title, [["metric", "value"], *scalars]))
    rest = {key: value for key, value in metrics.items() if not _is_cell(value)}
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, value in rest.items():
        if _is_row(value):
            groups.setdefault(tuple(value), []).append(key)
    for key, value in rest.items():
        name = f"{title}.{key}" if title else key
        group = next((keys for keys in groups.values() if key in keys and len(keys) > 1), None)
        if group is not None:
            if key == group[0]:
                tables.append(_grid(title, {k: rest[k] for k in group}, left_out))
        elif _is_matrix(value):
            tables.append(_matrix(name, value))
        elif _is_records(value):
            columns = list(dict.fromkeys(field for record in value for field in record))
            rows = [[_cell(record.get(c)) for c in columns] for record in value]
            tables.append((name, [columns, *rows]))
        elif isinstance(value, dict) and len(value) <= MAX_ROWS:
            _add_tables(tables, left_out, name, value)
        else:
            left_out.append(name)


def _grid(title: str, rows: dict[str, dict], left_out: list[str]) -> Table:
    """One row per entry of ``rows``, a column per key; transposed if that makes fewer columns."""
    keys = list(next(iter(rows.values())))
    shown = [k for k in keys if all(_is_cell(inner[k]) for inner in rows.values())]
    every = "{" + ",".join(rows) + "}"  # shell-brace style: cusum.{all,heating}.counts
    left_out.extend(f"{title}.{every}.{k}".lstrip(".") for k in keys if k not in shown)
    if len(shown) > len(rows):
        body = [[k, *(_cell(inner[k]) for inner in rows.values())] for k in shown]
        return title, [["", *rows], *body]
    body = [[name, *(_cell(inner[k]) for k in shown)] for name, inner in rows.items()]
    return title, [["", *shown], *body]


def _matrix(name: str, value: dict) -> Table:
    """A confusion matrix: its labels down the side and across the top."""
    labels = next(v for v in value.values() if _is_labels(v))
    matrix_key, matrix = next((k, v) for k, v in value.items() if not _is_labels(v))
    rows = [[label, *(_cell(x) for x in row)] for label, row in zip(labels, matrix, strict=True)]
    return f"{name} ({matrix_key.replace('_', ' ')})", [["", *labels], *rows]


def _is_cell(value: Any) -> bool:
    """A number, a string, None, or a short list of those."""
    if isinstance(value, list):
        return len(value) <= MAX_LIST_CELL and all(
            _is_cell(v) and not isinstance(v, list) for v in value
        )
    return value is None or isinstance(value, (str, int, float))


def _is_row(value: Any) -> bool:
    """A dict of cells (entries that are dicts themselves are left out of its row)."""
    return (
        isinstance(value, dict)
        and any(_is_cell(v) for v in value.values())
        and not _is_matrix(value)
        and all(_is_cell(v) or isinstance(v, dict) for v in value.values())
    )


def _is_labels(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_matrix(value: Any) -> bool:
    """``{labels: [...], matrix: [[...], ...]}``, the matrix square and as long as the labels."""
    if not isinstance(value, dict) or len(value) != 2:
        return False
    labels = [v for v in value.values() if _is_labels(v)]
    matrices = [v for v in value.values() if not _is_labels(v)]
    return (
        len(labels) == 1
        and len(matrices) == 1
        and isinstance(matrices[0], list)
        and len(matrices[0]) == len(labels[0])
        and all(isinstance(row, list) and len(row) == len(labels[0]) for row in matrices[0])
    )


def _is_records(value: Any) -> bool:
    """A list of dicts of cells, e.g. accuracy per distance bin."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) and all(_is_cell(x) for x in v.values()) for v in value)
    )


def _cell(value: Any) -> str:
    """Text of one value: floats to :data:`SIGNIFICANT_DIGITS` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.{SIGNIFICANT_DIGITS}g}"
        return f"{text}.0" if text.lstrip("-").isdigit() else text  # 1.0, not 1: a float
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)
