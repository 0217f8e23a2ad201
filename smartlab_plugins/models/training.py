"""One training loop for every network: Adam, a learning-rate schedule, early stopping.

A :class:`Task` says what is learned (data, network, loss, metrics); this
module says how: split by seed, train with a progress bar within a time
budget, keep the weights of the best validation epoch, score the test split,
and write the weights, the model card and the validation curves.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.models import ood, runtime
from smartlab_plugins.models.cards import ModelCard, sha256_of


@dataclass
class TrainingConfig:
    """Hyper-parameters; every field is recorded in the model card."""

    n_samples: int = 8000
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    max_epochs: int = 30
    patience: int = 30
    max_minutes: float = 4.75  # simulating the data included
    threads: int | None = None


@dataclass
class Split:
    """Inputs, targets and extra labels (for metrics) of one split."""

    x: np.ndarray
    y: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def take(self, index: np.ndarray) -> Split:
        return Split(self.x[index], self.y[index], {k: v[index] for k, v in self.extra.items()})

    def __len__(self) -> int:
        return len(self.x)


class Task(Protocol):
    """What a model learns. Implemented once per shipped model (see ``spinwave``, ``phase``)."""

    name: str
    version: str
    kind: str  # "regression" or "classification"
    case: str
    outputs: list[str]
    input_field_shape: tuple[int, ...]

    def make_data(self, n: int, seed: int) -> Split: ...

    def from_set(self, made: SimulatedSet) -> Split: ...

    def architecture(self) -> dict[str, Any]: ...

    def preprocessing(self) -> dict[str, Any]: ...

    def generator_config(self) -> dict[str, Any]: ...

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def selection_score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Validation score (lower is better): picks the epoch kept, drives early stopping."""
        ...

    def evaluate(
        self, output: torch.Tensor, split: Split, calibration: dict[str, Any]
    ) -> dict[str, Any]: ...

    def calibrate(self, net: nn.Module, validation: Split) -> dict[str, Any]: ...


def split_by_seed(
    data: Split, fractions: tuple[float, float, float], seed: int
) -> tuple[Split, Split, Split]:
    """Shuffle with ``seed`` and cut into train, validation and test."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_train = round(fractions[0] * len(data))
    n_val = round(fractions[1] * len(data))
    return (
        data.take(order[:n_train]),
        data.take(order[n_train : n_train + n_val]),
        data.take(order[n_train + n_val :]),
    )


def cosine_rate(config: TrainingConfig, epoch: int, spent: float) -> float:
    """Learning rate for ``epoch``: cosine decay over the time budget (or the epochs, if sooner).

    ``spent`` is the fraction of the time budget used so far. Tying the decay
    to the budget means the last epochs always run at a small rate, whatever
    the machine's speed.
    """
    progress = max(epoch / config.max_epochs, spent)
    return config.learning_rate * 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))


def predict(
    net: nn.Module, x: np.ndarray, batch_size: int = 256, device: torch.device | None = None
) -> torch.Tensor:
    """The network's raw outputs for ``x``, in eval mode, as float32 on the CPU.

    Through the inference runtime (:func:`~smartlab_plugins.models.runtime.forward`),
    as the plugins run the network: the validation scores that pick the epoch,
    the calibration and the card's metrics describe the model as it is served
    (bfloat16 autocast on CUDA, the plain float32 forward pass on the CPU).
    """
    net.eval()
    outputs = [
        runtime.forward(net, x[start : start + batch_size], device)
        for start in range(0, len(x), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0)


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0
    stopped_because: str = ""


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on ``threads`` CPU threads (None: as it is), then restore the count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit(
    task: Task,
    net: nn.Module,
    train: Split,
    val: Split,
    config: TrainingConfig,
    progress: bool = True,
    trainable: Callable[[nn.Module], list[nn.Parameter]] | None = None,
    budget_seconds: float | None = None,
) -> History:
    """Train ``net`` in place; it ends with the weights of its best validation epoch.

    ``budget_seconds`` (default: ``config.max_minutes``) bounds the training time;
    ``config.threads`` (if set) the CPU threads, restored afterwards.
    """
    with torch_threads(config.threads):
        return _fit(task, net, train, val, config, progress, trainable, budget_seconds)


def _fit(
    task: Task,
    net: nn.Module,
    train: Split,
    val: Split,
    config: TrainingConfig,
    progress: bool,
    trainable: Callable[[nn.Module], list[nn.Parameter]] | None,
    budget_seconds: float | None,
) -> History:
    device = runtime.pick_device()
    net.to(device)
    parameters = trainable(net) if trainable else list(net.parameters())
    optimizer = torch.optim.Adam(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    x_train, y_train = torch.as_tensor(train.x), torch.as_tensor(train.y)
    history, best_state, best_score, waited = History(), None, float("inf"), 0
    started = time.monotonic()
    budget = budget_seconds if budget_seconds is not None else config.max_minutes * 60
    batches = (len(train) + config.batch_size - 1) // config.batch_size
    # The bar shows the share of the training done: of the time budget or of max_epochs,
    # whichever ends it first (as cosine_rate reckons), so that its ETA is when training stops.
    with tqdm(
        total=100,
        desc=f"train {task.name}",
        bar_format="{l_bar}{bar}| {elapsed}<{remaining}{postfix}",
        smoothing=0,
        disable=not progress,
    ) as bar:
        for epoch in range(config.max_epochs):
            for group in optimizer.param_groups:
                group["lr"] = cosine_rate(config, epoch, (time.monotonic() - started) / budget)
            net.train()
            order = torch.randperm(len(train), generator=generator)
            total = 0.0
            for start in range(0, len(train), config.batch_size):
                index = order[start : start + config.batch_size]
                optimizer.zero_grad()
                loss = task.loss(net(x_train[index].to(device)), y_train[index].to(device))
                loss.backward()
                nn.utils.clip_grad_norm_(parameters, config.grad_clip)
                optimizer.step()
                total += loss.item() * len(index)
                done = (epoch * batches + start // config.batch_size + 1) / (
                    config.max_epochs * batches
                )
                spent = (time.monotonic() - started) / budget
                bar.update(max(0.0, 100 * min(max(done, spent), 1.0) - bar.n))
            output = predict(net, val.x, device=device)
            target = torch.as_tensor(val.y)
            val_loss = float(task.loss(output, target))
            val_score = float(task.selection_score(output, target))
            history.train_loss.append(total / len(train))
            history.val_loss.append(val_loss)
            history.val_score.append(val_score)
            history.learning_rate.append(optimizer.param_groups[0]["lr"])
            bar.set_postfix(
                epoch=f"{epoch + 1}/{config.max_epochs}",
                train=f"{history.train_loss[-1]:.4f}",
                val=f"{val_score:.4f}",
            )
            if val_score < best_score:
                best_score, best_state, waited = val_score, copy.deepcopy(net.state_dict()), 0
                history.best_epoch = epoch
            else:
                waited += 1
            elapsed = time.monotonic() - started
            if waited >= config.patience:
                history.stopped_because = f"no validation improvement for {config.patience} epochs"
                break
            if elapsed * (epoch + 2) / (epoch + 1) > budget:
                history.stopped_because = f"time budget ({budget:.0f} s of training)"
                break
        else:
            history.stopped_because = f"{config.max_epochs} epochs"
        bar.update(100 - bar.n)  # stopped: by the budget's estimate, by early stopping, or done
    history.seconds = time.monotonic() - started
    if best_state is not None:
        net.load_state_dict(best_state)
    net.to("cpu")
    return history


def train_model(
    task: Task, config: TrainingConfig, out: Path, progress: bool = True, data: Split | None = None
) -> ModelCard:
    """Simulate, split, train, score and write ``out/<name>.pt``, ``.json`` and ``_curves.png``.

    All of it runs on ``config.threads`` CPU threads if set (restored afterwards).
    """
    with torch_threads(config.threads):
        return _train_model(task, config, out, progress, data)


def _train_model(
    task: Task, config: TrainingConfig, out: Path, progress: bool, data: Split | None
) -> ModelCard:
    from smartlab_plugins.models.nets import build

    torch.manual_seed(config.seed)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = data if data is not None else task.make_data(config.n_samples, config.seed)
    simulation_seconds = time.monotonic() - started
    train, val, test = split_by_seed(data, config.fractions, config.seed)
    net = build(task.architecture())
    budget = config.max_minutes * 60 - simulation_seconds
    history = fit(task, net, train, val, config, progress=progress, budget_seconds=budget)
    extras = task.calibrate(net, val)
    metrics = task.evaluate(predict(net, test.x), test, extras)
    weights = out / f"{task.name}.pt"
    torch.save(net.state_dict(), weights)
    card = ModelCard(
        name=task.name,
        version=task.version,
        task=task.kind,
        architecture=task.architecture(),
        input_field_shape=list(task.input_field_shape),
        outputs=list(task.outputs),
        preprocessing=task.preprocessing(),
        training={
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "optimizer": "Adam",
            "schedule": "cosine decay to 0 over the time budget or max_epochs, whichever is first",
            "early_stopping": f"patience {config.patience} epochs on the validation score; "
            "the best validation epoch is kept",
            "epochs_run": len(history.val_loss),
            "best_epoch": history.best_epoch,
            "stopped_because": history.stopped_because,
            "seconds": round(history.seconds, 1),
            "simulation_seconds": round(simulation_seconds, 1),
            "device": str(runtime.pick_device()),
            "parameters": sum(p.numel() for p in net.parameters()),
        },
        data={
            "case": task.case,
            "generator_seed": config.seed,
            "sizes": {"train": len(train), "validation": len(val), "test": len(test)},
            "generator_config": task.generator_config(),
        },
        metrics=metrics,
        torch_version=torch.__version__,
        weights_file=weights.name,
        sha256=sha256_of(weights),
        extras={**extras, "history": asdict(history)},
    )
    ood.attach(card, out, net, val.x, config.seed, f"the validation split ({len(val)})")
    card.save(out / f"{task.name}.json")
    plot_curves(history, out / f"{task.name}_curves.png", task.name)
    return card


def plot_curves(history: History, path: Path, title: str) -> Path:
    """Training and validation loss, and the validation score that chose the epoch kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    epochs = np.arange(1, len(history.val_loss) + 1)
    loss_ax.plot(epochs, history.train_loss, label="training")
    loss_ax.plot(epochs, history.val_loss, label="validation")
    loss_ax.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    score_ax.plot(epochs, history.val_score, color="C1")
    score_ax.set(
        xlabel="epoch", ylabel="validation score", title="selection score (lower is better)"
    )
    score_ax.set_yscale("log")
    for ax in (loss_ax, score_ax):
        if history.best_epoch >= 0:
            ax.axvline(history.best_epoch + 1, color="grey", linestyle=":", label="kept")
    loss_ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
