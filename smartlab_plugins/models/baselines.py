"""Classical baselines: a random forest, gradient boosting and an RBF SVM per science case.

They use the same simulated data, seed and train/validation/test split as the
CNN they are compared with, so the comparison in the docs is like for like.
Their inputs are documented, hand-made features:

* ``spinwave_baselines``: the S(|Q|, E) counts map, log1p, averaged over 8x8
  bins: 12 |Q| bands x 20 energy bins = 240 features (coarse constant-|Q| energy
  cuts). Targets: the CNN's log-scaled constants.
* ``phase_baselines``: the azimuthally integrated pattern: phase_cnn's input
  (the frame integrated by pyFAI for its geometry into 12 chi x 336 q bins,
  log1p, z-scored) averaged over chi, a 336-point profile in q.

Models: ``RandomForest*(n_estimators=60, max_depth=10, min_samples_leaf=4)``,
``HistGradientBoosting*(max_iter=150, max_leaf_nodes=15)`` and an RBF-kernel,
soft-margin SVM (``SVR(C=1, epsilon=0.01)`` / ``SVC(C=10)``) after standard
scaling, fitted on the first 2,000 training samples (its cost and size grow
with the set); regressors with one output per model are wrapped in
``MultiOutputRegressor``. Sizes are bounded so the files ship in the package. They are
saved with skops, whose loader only builds types on an explicit trusted list,
after the file's SHA-256 is checked against the card.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smartlab_plugins.models.cards import ModelIntegrityError, sha256_of
from smartlab_plugins.models.training import Split, split_by_seed

MODEL_KINDS = ("rf", "gb", "svm")
#: Types skops may build when loading a shipped baseline, beyond the scikit-learn
#: estimators it trusts already.
TRUSTED_TYPES = [
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.tree._tree.Tree",
]
SVM_SAMPLES = 2000  # an RBF SVM's cost and size grow with its training set


def spinwave_features(maps: np.ndarray) -> np.ndarray:
    """(n, 96, 160) counts maps to (n, 240): log1p means over 8x8 bins."""
    x = np.log1p(np.clip(np.asarray(maps, dtype=np.float32), 0.0, None))
    return x.reshape(len(x), 12, 8, 20, 8).mean(axis=(2, 4)).reshape(len(x), -1)


def phase_features(network_input: np.ndarray) -> np.ndarray:
    """phase_cnn inputs (n, 1, 12, 336) to (n, 336): the chi-averaged profile in q."""
    return np.asarray(network_input, dtype=np.float32)[:, 0].mean(axis=1)


@dataclass(frozen=True)
class BaselineSet:
    """The three baselines of one case, and how they read and score their data."""

    name: str
    cnn: str
    kind: str  # "regression" or "classification"
    version: str  # of the three models and their features, in the card and the plugin

    def task(self):
        from smartlab_plugins.models.registry import task

        return task(self.cnn)

    def features(self, raw: np.ndarray) -> np.ndarray:
        """Features from the field (spin waves) or from phase_cnn's network input (phases)."""
        return spinwave_features(raw) if self.kind == "regression" else phase_features(raw)

    def make_data(self, n: int, seed: int) -> Split:
        """Features and targets for the same samples and split as the CNN's."""
        from smartlab_plugins.cases import simulate_case

        task = self.task()
        if self.kind == "regression":
            made = simulate_case("ins", n, seed=seed)
            targets = task.from_set(made)
            return Split(self.features(made.inputs["sqw"]), targets.y, targets.extra)
        from smartlab_plugins.models.phase import training_config

        targets = task.from_set(simulate_case("mpb", n, seed=seed, config=training_config()))
        return Split(self.features(targets.x), targets.y, targets.extra)

    def models(self, seed: int) -> dict[str, Any]:
        from sklearn.ensemble import (
            HistGradientBoostingClassifier,
            HistGradientBoostingRegressor,
            RandomForestClassifier,
            RandomForestRegressor,
        )
        from sklearn.multioutput import MultiOutputRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC, SVR

        forest = {
            "n_estimators": 60,
            "max_depth": 10,
            "min_samples_leaf": 4,
            "n_jobs": 2,
            "random_state": seed,
        }
        boosting = {"max_iter": 150, "max_leaf_nodes": 15, "random_state": seed}
        if self.kind == "regression":
            return {
                "rf": RandomForestRegressor(**forest),
                "gb": MultiOutputRegressor(
                    HistGradientBoostingRegressor(max_iter=300, random_state=seed)
                ),
                "svm": make_pipeline(
                    StandardScaler(), MultiOutputRegressor(SVR(C=1.0, epsilon=0.01))
                ),
            }
        return {
            "rf": RandomForestClassifier(**forest),
            "gb": HistGradientBoostingClassifier(**boosting),
            "svm": make_pipeline(StandardScaler(), SVC(C=10.0)),
        }

    def predictions(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Raw predictions in the form the CNN task's metrics expect."""
        import torch

        predicted = model.predict(x)
        if self.kind == "regression":
            # as a network output: locations, then log scales (unused by the MAE metrics)
            return torch.as_tensor(np.concatenate([predicted, np.zeros_like(predicted)], axis=1))
        return (
            torch.nn.functional.one_hot(
                torch.as_tensor(predicted), len(self.task().outputs)
            ).float()
            * 50.0
        )

    def score(self, model: Any, test: Split) -> dict[str, Any]:
        metrics = self.task().evaluate(self.predictions(model, test.x), test, {})
        if self.kind == "regression":
            for name in self.task().outputs:
                metrics[name].pop("coverage_68", None)  # no uncertainty from these models
        else:
            metrics.pop("expected_calibration_error", None)
        return metrics


BASELINES = {
    "spinwave_baselines": BaselineSet(
        "spinwave_baselines", "spinwave_cnn", "regression", version="1.0.0"
    ),
    # 1.1.0: features from the pyFAI-integrated frame, the cubic class
    "phase_baselines": BaselineSet(
        "phase_baselines", "phase_cnn", "classification", version="1.1.0"
    ),
}


def train_baselines(
    name: str, n: int, seed: int, out: Path, progress: bool = True
) -> dict[str, Any]:
    """Fit the three models of ``name`` on the CNN's training split; write them and a card."""
    import skops.io as sio
    from tqdm.auto import tqdm

    baseline = BASELINES[name]
    out.mkdir(parents=True, exist_ok=True)
    train, _, test = split_by_seed(baseline.make_data(n, seed), (0.8, 0.1, 0.1), seed)
    card: dict[str, Any] = {
        "name": name,
        "version": baseline.version,
        "task": baseline.kind,
        "compared_with": baseline.cnn,
        "features": (
            spinwave_features if baseline.kind == "regression" else phase_features
        ).__doc__,
        "data": {
            "generator_seed": seed,
            "n_samples": n,
            "sizes": {"train": len(train), "test": len(test)},
        },
        "models": {},
    }
    for kind, model in tqdm(
        baseline.models(seed).items(), desc=f"train {name}", disable=not progress
    ):
        started = time.monotonic()
        rows = slice(0, SVM_SAMPLES) if kind == "svm" else slice(None)
        model.fit(train.x[rows], train.y[rows])
        seconds = time.monotonic() - started
        path = out / f"{name}_{kind}.skops"
        sio.dump(model, path, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
        card["models"][kind] = {
            "estimator": repr(model),
            "file": path.name,
            "sha256": sha256_of(path),
            "training_seconds": round(seconds, 1),
            "training_samples": len(train.x[rows]),
            "metrics": baseline.score(model, test),
        }
    (out / f"{name}.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def load_baselines(
    name: str, directory: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The card and the three fitted models of ``name``, each file checked against the card."""
    import skops.io as sio

    from smartlab_plugins.models.store import model_dir

    directory = Path(directory or model_dir(name))
    card_path = directory / f"{name}.json"
    if not card_path.is_file():
        raise ModelIntegrityError(
            f"{name}: no card {card_path}; train with `smartlab train {name}`"
        )
    card = json.loads(card_path.read_text())
    models = {}
    for kind, entry in card["models"].items():
        path = directory / entry["file"]
        if not path.is_file() or sha256_of(path) != entry["sha256"]:
            raise ModelIntegrityError(
                f"{name}: refusing to load {path}: missing, or its SHA-256 differs from the card"
            )
        models[kind] = sio.load(path, trusted=TRUSTED_TYPES)
    return card, models
