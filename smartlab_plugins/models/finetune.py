"""``smartlab finetune``: adapt a shipped model to a few labelled examples of a shifted instrument.

Three ways of adapting are weighed (:data:`STRATEGIES`): keeping the shipped
weights (only the calibration is refitted), retraining the dense head only
(convolutions frozen, their batch-norm statistics adapting, as in AdaBN), and
retraining every layer at a smaller learning rate (3e-4, the head's 1e-3). Each is scored by
:data:`FOLDS`-fold cross-validation on the examples (a held-out fold picks
the epoch and scores it; these fits stop sooner, :data:`CV_LIMITS`), the best
mean score wins, and the winner is then
trained on four fifths of the examples and calibrated on the rest. The card
says which won and every mean score: none wins everywhere, and on a shift the
model already copes with, keeping it is best (docs/models/ood.md, "Transfer").
10-100 examples are enough. The result is a new model folder with its own
card, which records the base model's hash and the data it was tuned on, what
the tuning did to the original domain (both models scored on
:data:`ORIGINAL_DOMAIN_N` fresh samples of the base model's training generator,
``metrics["original_domain"]``), and an out-of-distribution calibration on the
examples themselves (:mod:`~smartlab_plugins.models.ood`; the new instrument is
now the model's domain), when there are at least ``ood.MIN_SAMPLES`` of them.

The data are checked before anything is trained, and a :class:`DataSetError`
says in the user's words what is wrong and how to make suitable data: a
file that is missing, is not HDF5 or is not a SmartLab data set
(:func:`load_examples`), a set of another instrument, one without a field the
model reads, or too few examples to validate on (:func:`finetune`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.models import ood
from smartlab_plugins.models.cards import ModelCard, sha256_of
from smartlab_plugins.models.registry import task as task_named
from smartlab_plugins.models.store import load_model
from smartlab_plugins.models.training import (
    History,
    Split,
    Task,
    TrainingConfig,
    fit,
    predict,
    split_by_seed,
)

FINETUNE_CONFIG = TrainingConfig(
    batch_size=16,
    learning_rate=1e-3,
    max_epochs=150,
    patience=30,
    max_minutes=2.0,
    fractions=(0.8, 0.2, 0.0),
)


ORIGINAL_DOMAIN_N = 300  # fresh samples of the base model's own domain, scored before and after
ORIGINAL_DOMAIN_SEED_OFFSET = 4000  # from the base training seed: no other stream uses it


#: The ways of adapting that :func:`finetune` weighs: what is retrained, and the learning rate.
STRATEGIES: dict[str, tuple[str, float]] = {
    "none": ("nothing: the shipped weights, calibration refitted", 0.0),
    "head": ("the dense head; convolutions frozen, batch-norm statistics adapt", 1e-3),
    "all": ("every layer, from the base weights", 3e-4),
}
FOLDS = 3  # cross-validation folds that choose among STRATEGIES
#: The cross-validation fits stop sooner than the final one: they only rank the ways.
CV_LIMITS = {"max_epochs": 80, "patience": 15}


class DataSetError(ValueError):
    """Examples that a model cannot be fine-tuned on: the message says why and what to do."""


#: What :meth:`SimulatedSet.save` writes: the groups and attributes a data set file must have.
SET_GROUPS = ("inputs", "labels", "coords")
SET_ATTRIBUTES = ("case", "seed", "config", "units")


def load_examples(path: Path, name: str) -> SimulatedSet:
    """The labelled examples in HDF5 file ``path``, to fine-tune ``name`` on.

    Raises :class:`DataSetError` for a missing file, or one that is not HDF5 or
    not a data set as ``smartlab simulate`` writes it (:func:`finetune` checks
    that the set is of the instrument ``name`` reads).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise DataSetError(f"{path}: no such file; {_make_one(name)}")
    if not path.is_file():
        raise DataSetError(f"{path} is a folder, not a data set file; {_make_one(name)}")
    if not h5py.is_hdf5(path):
        raise DataSetError(
            f"{path} is not an HDF5 file; {name} is fine-tuned on HDF5 data sets as "
            f"`smartlab simulate` writes them: {_make_one(name)}"
        )
    with h5py.File(path, "r") as f:
        missing = [f"group '{g}'" for g in SET_GROUPS if not isinstance(f.get(g), h5py.Group)]
        missing += [f"attribute '{a}'" for a in SET_ATTRIBUTES if a not in f.attrs]
    if missing:
        raise DataSetError(
            f"{path} is an HDF5 file but not a SmartLab data set (it has no "
            f"{', '.join(missing)}); {_make_one(name)}"
        )
    return SimulatedSet.load(path)


def _check_case(name: str, data: SimulatedSet, source: str) -> None:
    """Refuse ``data`` of another instrument than the one model ``name`` reads."""
    case = task_named(name).case
    if data.case != case:
        raise DataSetError(
            f"{source} holds {data.case!r} data (inputs: {', '.join(data.inputs) or 'none'}); "
            f"{name} is trained on {case!r} data: {_make_one(name)}"
        )


def _make_one(name: str) -> str:
    case = task_named(name).case
    return f"make one with `smartlab simulate {case} --n 50 --out {case}.h5`"


def _examples(task: Task, data: SimulatedSet, source: str) -> Split:
    """The task's inputs and targets from ``data``, naming a field the data lack."""
    try:
        return task.from_set(data)
    except KeyError as exc:
        field = exc.args[0] if exc.args else None
        if not isinstance(field, str) or field in {*data.inputs, *data.labels, *data.coords}:
            raise  # not a field missing from the data: a bug, with its traceback
        raise DataSetError(
            f"{source} has no field {field!r}, which {task.name} needs; "
            f"{_make_one(task.name)} (or lay out measured examples the same way)"
        ) from None


def finetune(
    name: str,
    data: SimulatedSet,
    out: Path,
    seed: int = 0,
    base_dir: Path | None = None,
    data_label: str = "",
    progress: bool = True,
) -> ModelCard:
    """Fine-tune model ``name`` on ``data``; write ``out/<name>.pt`` and its card.

    Raises :class:`DataSetError` if ``data`` are another instrument's, lack a
    field the model reads, or are too few to hold some out for validation.
    """
    source = data_label or "the data set"
    _check_case(name, data, source)
    task = task_named(name)
    base = load_model(name, base_dir, device="cpu")
    examples = _examples(task, data, source)
    train, val, _ = split_by_seed(examples, FINETUNE_CONFIG.fractions, seed)
    if not len(train) or not len(val):
        raise DataSetError(
            f"{source} holds {len(data)} example(s): too few to train on some and hold others "
            "out for validation; 10 to 100 are typical"
        )
    original = task.make_data(
        ORIGINAL_DOMAIN_N, base.card.data["generator_seed"] + ORIGINAL_DOMAIN_SEED_OFFSET
    )
    before = task.evaluate(predict(base.net, original.x), original, base.card.extras)
    scores = {
        strategy: _cross_validated(task, base.net, strategy, examples, seed)
        for strategy in STRATEGIES
    }
    kept = min(scores, key=scores.__getitem__)
    net, history, config = _adapt(task, base.net, kept, train, val, seed, progress)
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
                "adapted": f"{kept}: {STRATEGIES[kept][0]}",
                "strategies": {
                    strategy: {
                        "retrains": STRATEGIES[strategy][0],
                        "learning_rate": STRATEGIES[strategy][1],
                        f"mean_{FOLDS}_fold_validation_score": score,
                    }
                    for strategy, score in scores.items()
                },
                "epochs_run": len(history.val_loss),
                "best_epoch": history.best_epoch,
                "seconds": round(history.seconds, 1),
            },
            "data": {
                "source": data_label,
                "case": data.case,
                "generator_seed": data.seed,  # as in a trained card: `smartlab evaluate` avoids it
                "n": len(data),
                "sizes": {"train": len(train), "validation": len(val)},
                "generator_config": data.config,
            },
            "metrics": {
                **(task.evaluate(predict(net, val.x), val, extras) if len(val) else {}),
                "original_domain": {
                    "n": ORIGINAL_DOMAIN_N,
                    "before": before,
                    "after": task.evaluate(predict(net, original.x), original, extras),
                },
            },
            "weights_file": weights.name,
            "sha256": sha256_of(weights),
            "extras": {**extras, "finetuned_at": time.time()},
        }
    )
    ood.attach(card, out, net, examples.x, seed, f"the {len(examples)} fine-tuning examples")
    card.save(out / f"{name}.json")
    return card


def _adapt(
    task: Task,
    base_net: nn.Module,
    strategy: str,
    train: Split,
    val: Split,
    seed: int,
    progress: bool,
    limits: dict[str, int] | None = None,
) -> tuple[nn.Module, History, TrainingConfig]:
    """A copy of the base network adapted by ``strategy`` (:data:`STRATEGIES`).

    ``limits`` override :data:`FINETUNE_CONFIG`'s ``max_epochs`` and ``patience``.
    """
    net = copy.deepcopy(base_net)  # the base stays as loaded, for the next way
    config = TrainingConfig(
        **{
            **asdict(FINETUNE_CONFIG),
            "seed": seed,
            "learning_rate": STRATEGIES[strategy][1],
            **(limits or {}),
        }
    )
    if strategy == "none":
        output = predict(net, val.x)
        score = float(task.selection_score(output, torch.as_tensor(val.y)))
        return net, History(val_score=[score], val_loss=[score], best_epoch=0), config
    trainable = None
    if strategy == "head":
        for parameter in net.features.parameters():
            parameter.requires_grad_(False)
        trainable = lambda n: list(n.head.parameters())  # noqa: E731
    torch.manual_seed(seed)
    history = fit(task, net, train, val, config, progress=progress, trainable=trainable)
    return net, history, config


def _cross_validated(
    task: Task, base_net: nn.Module, strategy: str, examples: Split, seed: int
) -> float:
    """Mean over :data:`FOLDS` folds of the held-out fold's best validation score."""
    order = np.random.default_rng(seed).permutation(len(examples))
    folds = [fold for fold in np.array_split(order, min(FOLDS, len(examples))) if len(fold)]
    scores = []
    for fold in folds:
        rest = np.setdiff1d(order, fold)
        if not len(rest):
            continue
        train, held_out = examples.take(rest), examples.take(fold)
        _, history, _ = _adapt(task, base_net, strategy, train, held_out, seed, False, CV_LIMITS)
        scores.append(min(history.val_score))
    return float(np.mean(scores))


def score(name: str, directory: Path | None, test: Split) -> dict[str, Any]:
    """Metrics of the model in ``directory`` (shipped if None) on ``test``."""
    model = load_model(name, directory, device="cpu")
    return task_named(name).evaluate(predict(model.net, test.x), test, model.card.extras)
