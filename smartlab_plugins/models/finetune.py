"""``smartlab finetune``: adapt a shipped model to a few labelled examples of a shifted instrument.

The convolutional feature extractor is frozen (its batch-norm statistics
still adapt to the new data, as in AdaBN); only the dense head is retrained,
so 10-100 examples are enough. The result is a new model folder with its own
card, which records the base model's hash and the data it was tuned on.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.models.cards import ModelCard, sha256_of
from smartlab_plugins.models.registry import task as task_named
from smartlab_plugins.models.store import load_model
from smartlab_plugins.models.training import Split, TrainingConfig, fit, predict, split_by_seed

FINETUNE_CONFIG = TrainingConfig(
    batch_size=16,
    learning_rate=1e-3,
    max_epochs=150,
    patience=30,
    max_minutes=2.0,
    fractions=(0.8, 0.2, 0.0),
)


def finetune(
    name: str,
    data: SimulatedSet,
    out: Path,
    seed: int = 0,
    base_dir: Path | None = None,
    data_label: str = "",
    progress: bool = True,
) -> ModelCard:
    """Fine-tune model ``name`` on ``data``; write ``out/<name>.pt`` and its card."""
    task = task_named(name)
    base = load_model(name, base_dir, device="cpu")
    train, val, _ = split_by_seed(task.from_set(data), FINETUNE_CONFIG.fractions, seed)
    net = base.net
    for parameter in net.features.parameters():
        parameter.requires_grad_(False)
    config = TrainingConfig(**{**asdict(FINETUNE_CONFIG), "seed": seed})
    history = fit(
        task,
        net,
        train,
        val,
        config,
        progress=progress,
        trainable=lambda n: list(n.head.parameters()),
    )
    extras = task.calibrate(net, val)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{name}.pt"
    torch.save(net.state_dict(), weights)
    card = ModelCard(
        **{
            **asdict(base.card),
            "version": f"{base.card.version}+finetuned",
            "training": {
                **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()},
                "finetuned_from": {"name": name, "sha256": base.card.sha256},
                "frozen": "features (convolutions); batch-norm statistics adapt",
                "epochs_run": len(history.val_loss),
                "best_epoch": history.best_epoch,
                "seconds": round(history.seconds, 1),
            },
            "data": {
                "source": data_label,
                "case": data.case,
                "seed": data.seed,
                "n": len(data),
                "sizes": {"train": len(train), "validation": len(val)},
                "generator_config": data.config,
            },
            "metrics": task.evaluate(predict(net, val.x), val, extras) if len(val) else {},
            "weights_file": weights.name,
            "sha256": sha256_of(weights),
            "extras": {**extras, "finetuned_at": time.time()},
        }
    )
    card.save(out / f"{name}.json")
    return card


def score(name: str, directory: Path | None, test: Split) -> dict[str, Any]:
    """Metrics of the model in ``directory`` (shipped if None) on ``test``."""
    model = load_model(name, directory, device="cpu")
    return task_named(name).evaluate(predict(model.net, test.x), test, model.card.extras)
