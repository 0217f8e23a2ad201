"""Out-of-distribution scores: how unlike its training data an input looks to the network.

Method: the Mahalanobis distance in the network's own feature space (Lee,
Lee, Lee & Shin, "A simple unified framework for detecting out-of-distribution
samples and adversarial attacks", NeurIPS 2018), over features pooled from
several layers (their "feature ensemble"). For each input the activations of
the layers in :data:`TAPS` are taken during a forward pass; a convolutional
layer gives the mean and the standard deviation of each channel over its
positions, a dense layer its units. The features are standardised with the
calibration set's mean and spread, and their covariance is estimated with
Ledoit-Wolf shrinkage (``sklearn.covariance.LedoitWolf``), which keeps the
precision matrix well conditioned with a few thousand samples.

``ood_score`` is the mean over the feature groups of each group's squared
Mahalanobis distance divided by its number of features (and by its median on
held-out inputs): about 1 for an input like the training data, larger the
less alike (infinite for an input whose features are not finite, e.g. a NaN
frame).
``in_distribution`` is 1 when the score is at most the threshold: the
:data:`QUANTILE` quantile of the scores of held-out in-distribution inputs, so
about 1 - QUANTILE of valid inputs are flagged by design.

Calibration (:func:`calibrate`) uses a fresh simulated set from the model's
own training generator: :data:`FIT_SHARE` of it fits the mean and covariance,
the rest sets the threshold, so the threshold is not biased low by inputs the
covariance has seen. The statistics are saved as ``<name>.ood.npz`` (plain
arrays, read with ``allow_pickle=False``) beside the weights, its SHA-256 in
the model card's ``extras["ood"]``; a file that does not match is refused as
the weights are.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smartlab_plugins.models.cards import ModelIntegrityError, sha256_of

METHOD = "mean per-layer Mahalanobis distance of pooled features (Lee et al. 2018), Ledoit-Wolf"
#: How the groups' scores make ``ood_score``: their mean. Statistics saved before the rule
#: was stored were calibrated with the largest (``"max"``), and are read with it.
COMBINE = "mean"
COMBINERS = {"mean": np.mean, "max": np.max}
QUANTILE = 0.95  # the share of held-out in-distribution inputs called in distribution
FIT_SHARE = 0.7  # of the calibration set: fits mean and covariance; the rest sets the threshold
BATCH = 256
MIN_SAMPLES = 20  # fewer calibration inputs than this (e.g. a trial training) calibrate nothing

#: The layers whose activations make the features, by architecture (module names as
#: ``net.named_modules()`` gives them): each convolutional stage and the last hidden layer.
TAPS: dict[str, tuple[str, ...]] = {
    "SpinWaveNet": ("features.0", "features.1", "features.2", "head.2"),
    "PhaseNet": ("features.0", "features.1", "head.2", "head.4"),
    "TransitionNet": ("encoder.1", "encoder.4", "encoder.8"),
    "MicrographUNet": ("features.encode.0", "features.encode.1", "features.encode.2", "features"),
}


def _pooled(output: torch.Tensor) -> torch.Tensor:
    """Per-sample features of one layer's output: channel means and spreads, or dense units."""
    output = output.detach().float()
    if output.ndim <= 2:
        return output.reshape(len(output), -1)
    flat = output.reshape(*output.shape[:2], -1)
    return torch.cat([flat.mean(dim=-1), flat.std(dim=-1, unbiased=False)], dim=1)


def input_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per-sample statistics of the network's input (n, ...): level, spread, tails, roughness.

    The mean, standard deviation, 1 %, 50 % and 99 % quantiles of the values,
    and the mean absolute difference between neighbours along each of the
    last two axes (one for a 1-D input): what a counting time, a background,
    a detector's noise, a pixel size or a miscentred beam change first.
    """
    x = x.detach().float()
    flat = x.reshape(len(x), -1)
    parts = [
        flat.mean(dim=1, keepdim=True),
        flat.std(dim=1, unbiased=False, keepdim=True),
        torch.quantile(flat, torch.tensor([0.01, 0.5, 0.99]), dim=1).T,
        (x[..., 1:] - x[..., :-1]).abs().reshape(len(x), -1).mean(dim=1, keepdim=True),
    ]
    if x.ndim >= 3 and x.shape[-2] > 1:
        rows = (x[..., 1:, :] - x[..., :-1, :]).abs()
        parts.append(rows.reshape(len(x), -1).mean(dim=1, keepdim=True))
    return torch.cat(parts, dim=1)


@contextlib.contextmanager
def _tapped(net: nn.Module, names: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the pooled outputs of the named modules while the block runs, in this thread.

    A network is shared by the plugins of a worker (``spinwave_cnn`` and
    ``spinwave_baselines`` score inputs with the same one), each on its own
    thread: a forward pass on another thread while these hooks are on must not
    be recorded as this thread's (it was: scores of the wrong inputs, or groups
    of different lengths).
    """
    modules = dict(net.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise ModelIntegrityError(f"{type(net).__name__} has no layer {missing} to score inputs by")
    seen: dict[str, torch.Tensor] = {}
    caller = threading.get_ident()

    def keep(name: str, output: torch.Tensor) -> None:
        if threading.get_ident() == caller:
            seen[name] = _pooled(output)

    handles = [
        modules[name].register_forward_hook(
            lambda _module, _inputs, output, name=name: keep(name, output)
        )
        for name in names
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def features(net: nn.Module, x: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """Features of preprocessed inputs ``x`` by group: ``"input"`` and each layer of :data:`TAPS`.

    Each group is (n, d_group) float64 on the CPU. ``x`` is what the network
    takes; for :class:`~smartlab_plugins.models.nets.TransitionNet` one frame
    per row, ``(..., points)`` (the frame encoder's features: the score is per
    frame, as the plugin publishes it).
    """
    return _features(net, x, keep_outputs=False)[0]


def features_and_outputs(
    net: nn.Module, x: np.ndarray | torch.Tensor
) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """:func:`features` and ``net(x)`` (float32, on the CPU) from one forward pass.

    For the networks whose plugins publish ``net(x)`` itself (not the
    TransitionNet, whose features come from its frame encoder): a plugin then
    runs its network once per batch, not twice. On the CPU the outputs are
    those of :meth:`~smartlab_plugins.models.store.LoadedModel.run`.
    """
    if type(net).__name__ == "TransitionNet":
        raise ValueError("TransitionNet's features come from its encoder, not its outputs")
    feats, outputs = _features(net, x, keep_outputs=True)
    assert outputs is not None
    return feats, outputs


def _features(
    net: nn.Module, x: np.ndarray | torch.Tensor, keep_outputs: bool
) -> tuple[dict[str, np.ndarray], torch.Tensor | None]:
    name = type(net).__name__
    if name not in TAPS:
        raise ModelIntegrityError(f"no out-of-distribution features are defined for {name}")
    device = next(net.parameters()).device
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if name == "TransitionNet":
        x = x.reshape(-1, x.shape[-1])
    groups = ("input", *TAPS[name])
    parts: dict[str, list[torch.Tensor]] = {group: [] for group in groups}
    outputs: list[torch.Tensor] = []
    net.eval()
    with torch.inference_mode(), _tapped(net, TAPS[name]) as seen:
        for start in range(0, len(x), BATCH):
            chunk = x[start : start + BATCH].to(device)
            if name == "TransitionNet":
                net.encode(chunk)
            else:
                output = net(chunk)
                if keep_outputs:
                    outputs.append(output.float().cpu())
            seen["input"] = input_statistics(chunk)
            for group in groups:
                parts[group].append(seen[group].cpu())
    feats = {
        group: torch.cat(chunks).double().numpy() if chunks else np.empty((0, 0))
        for group, chunks in parts.items()
    }
    if not keep_outputs:
        return feats, None
    # concatenated outside inference mode: an ordinary tensor the caller may change in place
    return feats, torch.cat(outputs) if outputs else torch.empty(0)


@dataclass
class GroupStats:
    """One feature group's calibration: standardisation, precision and typical score."""

    center: np.ndarray  # (d,) feature means of the fit set
    scale: np.ndarray  # (d,) their spreads (floored), to standardise
    precision: np.ndarray  # (d, d) Ledoit-Wolf precision of the standardised features
    median: float = 1.0  # the median held-out score, which scales this group's scores to 1

    def score(self, feats: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance / d per row, over :attr:`median` (inf if not finite)."""
        z = (np.asarray(feats, dtype=np.float64) - self.center) / self.scale
        finite = np.isfinite(z).all(axis=1)
        z = np.where(finite[:, None], z, 0.0)
        scores = np.einsum("ij,jk,ik->i", z, self.precision, z) / z.shape[1] / self.median
        return np.where(finite, scores, np.inf)

    @classmethod
    def fit(cls, feats: np.ndarray) -> GroupStats:
        from sklearn.covariance import LedoitWolf

        feats = np.asarray(feats, dtype=np.float64)
        center = feats.mean(axis=0)
        spread = feats.std(axis=0)
        scale = np.maximum(spread, 1e-6 * max(float(spread.max()), 1e-12))
        return cls(center, scale, LedoitWolf().fit((feats - center) / scale).precision_)


@dataclass
class OODModel:
    """The calibrated statistics of one model's feature groups and the flag threshold.

    ``ood_score`` is the mean of the groups' scores, each the squared
    Mahalanobis distance per feature over its median on held-out
    in-distribution inputs (``combine``). The mean, not the largest: a shift
    that several layers see a little is told apart better, and one that a
    single layer sees a lot still stands out (a micrograph at twice the pixel
    size: AUROC 0.94 with the largest, 0.98 with the mean; a fifth of the
    counts on an operando frame 0.89 -> 0.91; the other shifts within 0.03).
    """

    groups: dict[str, GroupStats]
    threshold: float  # scores above it are flagged
    quantile: float  # the held-out quantile the threshold is
    combine: str = COMBINE  # how the groups' scores combine: "mean" or "max"

    def score(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """``ood_score`` per input (inf if any feature is not finite)."""
        scores = [stats.score(feats[name]) for name, stats in self.groups.items()]
        return COMBINERS[self.combine](scores, axis=0)

    def flags(self, feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``ood_score`` (float64) and ``in_distribution`` (int8, 1 = like the training data)."""
        scores = self.score(feats)
        return {"ood_score": scores, "in_distribution": (scores <= self.threshold).astype(np.int8)}

    def save(self, path: Path) -> str:
        """Write the statistics as plain arrays; their SHA-256."""
        arrays: dict[str, np.ndarray] = {
            "groups": np.array(list(self.groups), dtype=str),
            "threshold": np.float64(self.threshold),
            "quantile": np.float64(self.quantile),
            "combine": np.array(self.combine, dtype=str),
        }
        for i, stats in enumerate(self.groups.values()):
            arrays.update(
                {
                    f"center_{i}": stats.center,
                    f"scale_{i}": stats.scale,
                    f"precision_{i}": stats.precision,
                    f"median_{i}": np.float64(stats.median),
                }
            )
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return sha256_of(path)

    @classmethod
    def load(cls, path: Path, sha256: str) -> OODModel:
        """Read statistics saved by :meth:`save`; refuse a file whose SHA-256 is not ``sha256``."""
        if not path.is_file():
            raise ModelIntegrityError(f"out-of-distribution statistics {path} are missing")
        actual = sha256_of(path)
        if actual != sha256:
            raise ModelIntegrityError(
                f"refusing {path}: its SHA-256 is {actual[:16]}..., the model card says "
                f"{sha256[:16]}... (file changed or replaced)"
            )
        try:
            return cls._read(path)
        except (KeyError, ValueError) as error:
            raise ModelIntegrityError(
                f"{path} is not out-of-distribution statistics this SmartLab reads ({error}); "
                "make them anew with `smartlab calibrate-ood`"
            ) from error

    @classmethod
    def _read(cls, path: Path) -> OODModel:
        with np.load(path, allow_pickle=False) as stored:
            groups = {
                str(name): GroupStats(
                    stored[f"center_{i}"],
                    stored[f"scale_{i}"],
                    stored[f"precision_{i}"],
                    float(stored[f"median_{i}"]),
                )
                for i, name in enumerate(stored["groups"])
            }
            combine = str(stored["combine"]) if "combine" in stored.files else "max"
            if combine not in COMBINERS:
                raise ValueError(f"unknown combination {combine!r} of the groups' scores")
            return cls(groups, float(stored["threshold"]), float(stored["quantile"]), combine)


def fit(
    fit_features: dict[str, np.ndarray], held_out: dict[str, np.ndarray], quantile: float
) -> OODModel:
    """Fit each group on ``fit_features``; medians and the threshold on ``held_out``."""
    groups = {name: GroupStats.fit(feats) for name, feats in fit_features.items()}
    for name, stats in groups.items():
        stats.median = float(np.median(stats.score(held_out[name])))
    model = OODModel(groups, float("inf"), quantile)
    model.threshold = float(np.quantile(model.score(held_out), quantile))
    return model


def calibrate(
    net: nn.Module, x: np.ndarray, seed: int, quantile: float = QUANTILE
) -> tuple[OODModel, dict[str, Any]]:
    """Fit the statistics on in-distribution inputs ``x``; the model and what the card records.

    ``x`` is split at random (``seed``) into :data:`FIT_SHARE` to fit and the
    rest to set the threshold (for a TransitionNet, by whole ramps).
    """
    order = np.random.default_rng(seed).permutation(len(x))
    cut = round(FIT_SHARE * len(x))
    fit_part, held_out = features(net, x[order[:cut]]), features(net, x[order[cut:]])
    model = fit(fit_part, held_out, quantile)
    return model, {
        "method": METHOD,
        "groups": {name: int(feats.shape[1]) for name, feats in fit_part.items()},
        "n_features": sum(int(feats.shape[1]) for feats in fit_part.values()),
        "n_fit": len(fit_part["input"]),
        "n_threshold": len(held_out["input"]),
        "quantile": quantile,
        "threshold": model.threshold,
    }


def stats_file(name: str) -> str:
    """The file name of model ``name``'s statistics, beside its weights."""
    return f"{name}.ood.npz"


def load_for(card_extras: dict[str, Any], directory: Path) -> OODModel | None:
    """The statistics a card names (``extras["ood"]``), checked; None if the card has none."""
    entry = card_extras.get("ood")
    if not entry or "file" not in entry:
        return None
    return OODModel.load(Path(directory) / entry["file"], entry["sha256"])


def auroc(in_distribution: np.ndarray, shifted: np.ndarray) -> float:
    """Area under the ROC curve of ``ood_score`` telling ``shifted`` from ``in_distribution``.

    0.5 is chance, 1 a perfect separation; infinite scores count as the highest.
    """
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(in_distribution, float), np.asarray(shifted, float)
    scores = np.concatenate([a, b])
    finite_max = np.nanmax(np.where(np.isfinite(scores), scores, np.nan)) if scores.size else 0.0
    scores = np.nan_to_num(scores, nan=np.inf, posinf=np.nan_to_num(finite_max) * 10 + 1)
    labels = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    return float(roc_auc_score(labels, scores))


#: ``smartlab calibrate-ood`` simulates from the training seed plus this: a stream that neither
#: training (the seed itself) nor ``smartlab evaluate`` (seed + 1000) uses.
CALIBRATION_SEED_OFFSET = 3000


def attach(
    card: Any, directory: Path, net: nn.Module, x: np.ndarray, seed: int, source: str
) -> dict:
    """Calibrate on in-distribution inputs ``x``, write the statistics beside the weights, and
    record them in ``card.extras["ood"]`` (the caller saves the card). What was recorded.

    With fewer than :data:`MIN_SAMPLES` inputs (a quick trial training) nothing
    is calibrated; the card says so and how to calibrate later.
    """
    if len(x) < MIN_SAMPLES:
        card.extras["ood"] = {
            "skipped": f"{len(x)} inputs are too few to calibrate on (at least {MIN_SAMPLES}); "
            f"run `smartlab calibrate-ood {card.name} --model-dir {directory}`"
        }
        return card.extras["ood"]
    model, info = calibrate(net, x, seed)
    path = Path(directory) / stats_file(card.name)
    info.update(file=path.name, sha256=model.save(path), data=source)
    card.extras["ood"] = info
    return info


def calibrate_model(
    name: str, directory: Path | None = None, n: int | None = None, seed: int | None = None
) -> dict:
    """Add (or renew) the out-of-distribution calibration of model ``name`` in ``directory``.

    Simulates ``n`` inputs (default: the size of its validation split) from its
    training generator at ``seed`` (default: the training seed plus
    :data:`CALIBRATION_SEED_OFFSET`), calibrates on them and rewrites the card.
    """
    from smartlab_plugins.models.registry import task as task_named
    from smartlab_plugins.models.store import load_model, model_dir

    directory = Path(directory or model_dir(name))
    loaded = load_model(name, directory, device="cpu", with_ood=False)
    card = loaded.card
    n = n or int(card.data.get("sizes", {}).get("validation", 1000))
    seed = card.data["generator_seed"] + CALIBRATION_SEED_OFFSET if seed is None else seed
    if seed == card.data["generator_seed"]:
        raise ValueError(f"seed {seed} generated {name}'s training data; calibrate with another")
    x = task_named(name).make_data(n, seed).x
    info = attach(card, directory, loaded.net, x, seed, f"{n} fresh samples, generator seed {seed}")
    card.save(directory / f"{name}.json")
    return info
