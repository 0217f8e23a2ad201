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
    name: str, n: int = 1000, seed: int | None = None, directory: Path | None = None
) -> dict[str, Any]:
    """Metrics of model ``name`` on ``n`` new samples from a seed its training never used."""
    model = load_model(name, directory, device="cpu")
    training_seed = model.card.data["generator_seed"]
    if seed is None:
        seed = training_seed + SEED_OFFSET
    if seed == training_seed:
        raise ConfigurationError(
            f"seed {seed} generated {name}'s training data; evaluate with another seed"
        )
    task = task_named(name)
    if hasattr(task, "evaluate_model"):  # scored on whole frames, as its card reports
        metrics = task.evaluate_model(model, n, seed)
    else:
        data = task.make_data(n, seed)
        metrics = task.evaluate(predict(model.net, data.x), data, model.card.extras)
    return {"model": name, "sha256": model.card.sha256, "seed": seed, "metrics": metrics}
