"""The cases: one table of the simulated data sets, made reproducibly, on disk with
`smartlab simulate` (with their seed and config) or in memory."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

from smartlab_plugins.cases import CASES, configured, simulate_case
from smartlab_plugins.devices import ins, operando
from smartlab_plugins.devices.dataset import SimulatedSet


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_command_writes_a_labelled_set_with_its_seed_and_config(case, tmp_path):
    out = tmp_path / f"{case}.h5"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartlab_plugins.cli",
            "simulate",
            case,
            "--n",
            "3",
            "--seed",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    loaded = SimulatedSet.load(out)
    assert (loaded.case, loaded.seed, len(loaded)) == (case, 5, 3)
    assert loaded.config["seed"] == 5 and loaded.config["n"] == 3
    assert all(len(v) == 3 for v in loaded.labels.values())


def test_a_set_within_one_chunk_equals_the_generator_called_directly():
    made = simulate_case("ins", 4, seed=11, progress=False)
    direct = ins.simulate(4, seed=11)
    np.testing.assert_array_equal(made.inputs["sqw"], direct.inputs["sqw"])
    np.testing.assert_array_equal(made.labels["j1"], direct.labels["j1"])


def test_chunked_sets_are_deterministic_and_chunks_differ():
    first = simulate_case("operando", 6, seed=2, chunk=3, progress=False)
    again = simulate_case("operando", 6, seed=2, chunk=3, progress=False)
    np.testing.assert_array_equal(first.inputs["patterns"], again.inputs["patterns"])
    assert not np.array_equal(first.labels["tc"][:3], first.labels["tc"][3:])
    assert first.inputs["patterns"].shape[0] == 6
    assert set(operando.simulate(1).inputs) == set(first.inputs)


def test_unknown_case_and_bad_counts_are_refused():
    with pytest.raises(KeyError, match="choose one of ins, mpb, operando, microscopy"):
        simulate_case("xrd", 2)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartlab_plugins.cli",
            "simulate",
            "ins",
            "--n",
            "0",
            "--out",
            "x.h5",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "must be a positive integer" in result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_case_names_its_instruments_generator_and_the_model_trained_on_it(case):
    from smartlab_plugins.models.registry import task

    entry = CASES[case]
    device = importlib.import_module(entry.device)
    assert callable(device.simulate) and callable(device.make_devices)
    assert configured(case, {}) == getattr(device, entry.config)()
    assert task(entry.task).case == case  # the model's task reads the same case
