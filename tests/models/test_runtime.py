"""The inference runtime: one device choice, one forward path, the same answer on CPU and GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smartlab_plugins.models import phase, runtime, segmentation, spinwave, transition
from smartlab_plugins.models.registry import TASKS
from smartlab_plugins.models.store import load_model

SHIPPED = sorted(TASKS)
CUDA = torch.cuda.is_available()


def example_input(name: str, n: int = 3) -> np.ndarray:
    """Preprocessed network input for shipped model ``name``, from made-up detector values."""
    rng = np.random.default_rng(0)
    if name == "spinwave_cnn":
        return spinwave.preprocess(rng.poisson(5.0, (n, *spinwave.FIELD_SHAPE)))
    if name == "phase_cnn":
        return phase.preprocess(rng.poisson(5.0, (n, *phase.FIELD_SHAPE)))
    if name == "transition_lstm":
        return transition.preprocess(rng.poisson(20.0, (n, 12, *transition.FIELD_SHAPE)))
    if name == "micrograph_unet":
        return segmentation.preprocess(rng.uniform(0.0, 0.7, (n, 64, 96)))
    raise KeyError(f"no example input for {name}; add one for every shipped model")


def test_the_device_is_the_gpu_when_one_is_visible_unless_one_is_named(monkeypatch):
    assert runtime.pick_device() == torch.device("cuda" if CUDA else "cpu")
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.pick_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.pick_device() == torch.device("cuda")
    assert runtime.pick_device("cpu") == torch.device("cpu")  # the override wins


@pytest.mark.skipif(CUDA, reason="a GPU is visible here, so asking for CUDA is not refused")
def test_asking_for_cuda_without_a_gpu_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"'cuda' was asked for.*is_available\(\) is False"):
        runtime.pick_device("cuda")
    with pytest.raises(ValueError, match="'cuda:1' was asked for"):
        load_model("spinwave_cnn", device="cuda:1")


def test_loading_puts_the_network_where_the_runtime_says():
    assert load_model("phase_cnn").device == runtime.pick_device()
    assert load_model("phase_cnn", device="cpu").device == torch.device("cpu")


def test_on_the_cpu_a_batch_is_not_copied_and_nothing_is_autocast():
    x = np.ones((2, 3), dtype=np.float32)
    moved = runtime.to_device(x, torch.device("cpu"))
    assert moved.data_ptr() == x.ctypes.data
    with runtime.autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_full_precision_turns_autocast_off_inside_a_forward_pass():
    a = torch.ones(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with runtime.full_precision(torch.device("cpu")):
            assert (a @ a).dtype == torch.float32


@pytest.mark.parametrize("name", SHIPPED)
def test_the_runtime_forward_is_the_networks_own_forward_on_the_cpu(name):
    model = load_model(name, device="cpu")
    x = example_input(name)
    with torch.no_grad():
        plain = model.net(torch.as_tensor(x))

    for output in (runtime.forward(model.net, x), model.run(x)):
        assert output.dtype == torch.float32
        assert output.device == torch.device("cpu")
        assert torch.equal(output, plain)  # bit for bit, not approximately


def test_outputs_can_go_on_into_autograd():
    """A temperature is fitted to the logits after the forward pass (phase_cnn, the U-Net)."""
    model = load_model("phase_cnn", device="cpu")
    logits = runtime.forward(model.net, example_input("phase_cnn"))
    temperature = torch.ones(1, requires_grad=True)
    (logits / temperature).logsumexp(dim=1).sum().backward()
    assert temperature.grad is not None and not logits.requires_grad


@pytest.mark.skipif(not CUDA, reason="torch.cuda.is_available() is False: no GPU to compare with")
@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_gives_the_cpu_answer_on_cuda_within_bfloat16(name):
    cpu, gpu = load_model(name, device="cpu"), load_model(name, device="cuda")
    x = example_input(name, n=4)

    expected, got = cpu.run(x), gpu.run(x)

    assert got.dtype == torch.float32 and got.device == torch.device("cpu")
    # bfloat16 keeps 8 bits of mantissa: a few parts in a thousand per layer, summed over the net
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05 * scale)
    if name == "transition_lstm":  # the live path: one frame at a time, state kept on the GPU
        patterns = np.random.default_rng(1).poisson(20.0, (12, *transition.FIELD_SHAPE))
        on_cpu, on_gpu, p_cpu, p_gpu = None, None, [], []
        for pattern in patterns.astype(np.float32):
            p, on_cpu = transition.step_frame(cpu, pattern, on_cpu)
            p_cpu.append(p)
            p, on_gpu = transition.step_frame(gpu, pattern, on_gpu)
            p_gpu.append(p)
        assert on_gpu[0].device.type == "cuda" and on_gpu[0].dtype == torch.float32
        np.testing.assert_allclose(p_gpu, p_cpu, atol=0.02)
    if name == "micrograph_unet":  # the live path: phase maps reduced on the GPU
        frames = np.random.default_rng(1).uniform(0.0, 0.7, (2, 64, 96)).astype(np.float32)
        on_cpu = segmentation.segment(cpu.net, frames, uncertainty=True)
        on_gpu = segmentation.segment(gpu.net, frames, uncertainty=True)
        assert (on_gpu.mask == on_cpu.mask).mean() > 0.98
        np.testing.assert_allclose(on_gpu.fractions, on_cpu.fractions, atol=0.02)
