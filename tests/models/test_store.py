"""Shipped models load only when their weights match the card, and never as pickled code."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from smartlab_plugins.models.cards import ModelIntegrityError, sha256_of
from smartlab_plugins.models.registry import TASKS
from smartlab_plugins.models.store import card_of, load_model, shipped_dir

SHIPPED = sorted(TASKS)  # every trainable model ships its weights


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_match_their_cards_and_load(name):
    card = card_of(name)
    assert card is not None, f"{name} has no model card in the package"
    assert sha256_of(shipped_dir() / card.weights_file) == card.sha256
    assert (shipped_dir() / card.weights_file).stat().st_size < 5_000_000
    model = load_model(name, device="cpu")
    assert not model.net.training
    assert card.torch_version.startswith("2.")
    assert card.data["sizes"]["test"] > 0 and card.metrics


@pytest.fixture
def model_copy(tmp_path):
    card = card_of("spinwave_cnn")
    for suffix in (".json", ".pt"):
        shutil.copy(shipped_dir() / f"spinwave_cnn{suffix}", tmp_path)
    return tmp_path, card


def test_a_tampered_weights_file_is_refused(model_copy):
    directory, card = model_copy
    path = directory / card.weights_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"refusing to load .* SHA-256"):
        load_model("spinwave_cnn", directory)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_a_pickled_object_is_refused_even_with_a_matching_hash(model_copy):
    directory, card = model_copy
    path = directory / card.weights_file
    path.write_bytes(pickle.dumps(_Payload()))
    card.sha256 = sha256_of(path)  # an attacker who can rewrite the card too
    card.save(directory / "spinwave_cnn.json")
    with pytest.raises(pickle.UnpicklingError):
        load_model("spinwave_cnn", directory)
    assert not _Payload.ran


def test_a_missing_model_says_how_to_train_one(tmp_path):
    with pytest.raises(ModelIntegrityError, match=f"smartlab train nothing --out {tmp_path}"):
        load_model("nothing", tmp_path)


def test_every_shipped_model_loads_in_a_fresh_process_with_no_task_module_imported():
    """A card's network is rebuilt from ``nets`` alone: loading must not depend on what else
    the process happened to import first (``smartlab evaluate micrograph_unet`` once failed
    with 'MicrographUNet' because only the task module registered that network)."""
    code = (
        "import sys\n"
        "from smartlab_plugins.models.store import load_model\n"
        f"for name in {SHIPPED!r}:\n"
        "    load_model(name, device='cpu')\n"
        "tasks = ('spinwave', 'phase', 'transition', 'segmentation')\n"
        "print([t for t in tasks if f'smartlab_plugins.models.{t}' in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_card_naming_an_unknown_network_is_refused_by_name(model_copy):
    directory, _ = model_copy
    path = directory / "spinwave_cnn.json"
    data = json.loads(path.read_text())
    data["architecture"]["class"] = "SpinWaveTransformer"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelIntegrityError, match="names the network 'SpinWaveTransformer'"):
        load_model("spinwave_cnn", directory)


class _Payload:
    ran = False

    def __reduce__(self):
        return (_Payload._run, ())

    @staticmethod
    def _run():
        _Payload.ran = True
        return torch.zeros(1)
