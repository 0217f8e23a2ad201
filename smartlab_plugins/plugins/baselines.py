"""``spinwave_baselines`` and ``phase_baselines``: the classical models beside each CNN, live.

Each runs a random forest (``rf``), gradient boosting (``gb``) and an RBF SVM
(``svm``) on the documented features of :mod:`smartlab_plugins.models.baselines`
and publishes their answers side by side: ``rf_j1``, ``gb_j1``, ``svm_j1``, ...
(meV) for spin waves, ``rf_phase_name``, ``gb_phase_name``, ``svm_phase_name``
(and class indices) for the phase. The comparison with the CNNs on a common
test split is in each card (``smartlab_plugins/models/weights/*_baselines.json``).

``ood_score`` and ``in_distribution`` are those of the CNN beside them for the
same input (:mod:`smartlab_plugins.models.ood`): the baselines were trained on
the same simulated instrument, so an input unlike the CNN's training data is
unlike theirs. ``spinwave_baselines`` reads a map by its declared axes as
``spinwave_cnn`` does (moved onto the training grid, refused when it does not
cover it) and publishes the same ``outside_training`` flag.
"""

from __future__ import annotations

import logging

import numpy as np

from smartlab_plugins.hookspecs import (
    DataSpec,
    EventBatch,
    ModelInfo,
    PluginInfo,
    Results,
    RunContext,
    hookimpl,
)
from smartlab_plugins.models import spinwave
from smartlab_plugins.models.baselines import (
    BASELINES,
    MODEL_KINDS,
    BaselineSet,
    load_baselines,
)
from smartlab_plugins.models.inference import OOD_UNITS, model_input, ood_flags
from smartlab_plugins.models.store import model_dir, shared_model

logger = logging.getLogger(__name__)


class BaselinesPlugin:
    """The three baselines of one case as one plugin."""

    def __init__(self, baselines: BaselineSet, field: str, shape: tuple[int, int]) -> None:
        self.baselines = baselines
        self.field = field
        self.shape = shape
        self._loaded: tuple[dict, dict] | None = None

    @hookimpl
    def smartlab_describe(self) -> PluginInfo:
        """Reads the same field as its CNN; the models are the shipped skops files."""
        card = model_dir(self.baselines.name) / f"{self.baselines.name}.json"
        model = None
        if card.is_file():
            import hashlib

            digest = hashlib.sha256(card.read_bytes()).hexdigest()
            model = ModelInfo(self.baselines.name, digest, self.baselines.version)
        return PluginInfo(
            name=self.baselines.name,
            version=self.baselines.version,
            accepts=DataSpec(ndims=(2,), fields=(self.field,)),
            summary=f"random forest, gradient boosting and SVM beside {self.baselines.cnn}",
            model=model,
            stateless=True,
            units=self.units(),
        )

    def units(self) -> dict[str, str]:
        """Every model's answers: the exchange constants in meV, class indices dimensionless."""
        if self.baselines.kind == "regression":
            names = self.baselines.task().outputs
            answers = {f"{kind}_{p}": "meV" for kind in MODEL_KINDS for p in names}
            return answers | {"outside_training": ""} | OOD_UNITS
        return {f"{kind}_phase": "" for kind in MODEL_KINDS} | OOD_UNITS

    @hookimpl
    def smartlab_start_run(self, run: RunContext) -> None:
        """Load and check the three models once per process."""
        if self._loaded is None:
            self._loaded = load_baselines(self.baselines.name)
        run.state["task"] = self.baselines.task()

    @hookimpl
    def smartlab_analyze(self, run: RunContext, batch: EventBatch) -> Results | None:
        """Every model's answer for every event of the batch."""
        if self._loaded is None:
            return None
        cnn = shared_model(self.baselines.cnn)
        outside = None
        if self.baselines.kind == "regression":  # the map on the training grid by its axes
            from smartlab_plugins.plugins.spinwave_cnn import on_training_grid

            config = cnn.card.data.get("generator_config", {})
            batch, partial = on_training_grid(run, batch, self.baselines.name, config)
            raw = model_input(run, batch, self.baselines.name, self.field, self.shape)
            conditions = spinwave.outside_training(dict(batch.context), config, len(batch))
            outside = (conditions | partial).astype(np.int8)
        else:  # phase_cnn's input: the frame integrated for its declared geometry
            from smartlab_plugins.plugins.phase_cnn import network_input

            config = self.baselines.task().generator_config()
            raw = network_input(run, batch, self.baselines.name, config)
        if raw is None:
            return None
        features = self.baselines.features(raw)
        task = run.state["task"]
        scalars: dict[str, np.ndarray] = {}
        for kind, model in self._loaded[1].items():
            predicted = model.predict(features)
            if self.baselines.kind == "regression":
                values = task.physical(predicted)
                scalars.update({f"{kind}_{p}": values[:, i] for i, p in enumerate(task.outputs)})
            else:
                scalars[f"{kind}_phase"] = predicted
                scalars[f"{kind}_phase_name"] = np.array(task.outputs, dtype=object)[predicted]
        if outside is not None:
            scalars["outside_training"] = outside
        cnn_input = spinwave.preprocess(raw) if self.baselines.kind == "regression" else raw
        scalars.update(ood_flags(run, self.baselines.name, cnn, cnn_input, logger, batch.seq_num))
        return Results(scalars=scalars)


spinwave_baselines = BaselinesPlugin(BASELINES["spinwave_baselines"], "ins_sqw", (96, 160))
phase_baselines = BaselinesPlugin(BASELINES["phase_baselines"], "mpb_image", (97, 243))
