"""A model plugin's declaration: its field checked, preprocessed and through the runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smartlab_plugins.hookspecs import EventBatch, RunContext
from smartlab_plugins.models import runtime, spinwave
from smartlab_plugins.plugins import micrograph_unet, spinwave_cnn


def batch_of(field: str, values: np.ndarray) -> EventBatch:
    n = len(values)
    return EventBatch("primary", np.arange(1, n + 1), np.zeros(n), {field: values})


def test_infer_runs_the_preprocessed_field_through_the_runtime_and_skips_other_batches():
    run = RunContext(uid="infer", start={}, state={}, options={})
    spinwave_cnn.PLUGIN.start_run(run)
    maps = np.random.default_rng(0).poisson(5.0, (2, *spinwave.FIELD_SHAPE)).astype(np.float32)

    done = spinwave_cnn.PLUGIN.infer(run, batch_of(spinwave_cnn.FIELD, maps))

    assert isinstance(done.task, spinwave.SpinWaveTask)
    np.testing.assert_array_equal(done.x, spinwave.preprocess(maps))
    assert torch.equal(done.output, runtime.forward(done.model.net, done.x))
    assert spinwave_cnn.PLUGIN.infer(run, batch_of("other_field", maps)) is None


def test_a_plugin_that_feeds_its_network_itself_cannot_infer_by_mistake():
    run = RunContext(uid="infer", start={}, state={}, options={})
    micrograph_unet.PLUGIN.start_run(run)
    frames = np.zeros((1, 64, 64), dtype=np.float32)
    with pytest.raises(
        TypeError,
        match=r"micrograph_unet: infer\(\) needs the plugin to declare shape and preprocess",
    ):
        micrograph_unet.PLUGIN.infer(run, batch_of(micrograph_unet.FIELD, frames))


def test_the_description_names_the_runtimes_device_and_the_units():
    info = spinwave_cnn.smartlab_describe()
    assert info.device == runtime.pick_device().type
    assert info.gpu and info.stateless
    assert info.units["j1"] == "meV" and info.model.name == "spinwave_cnn"
