"""Shipped models load only when their weights match the card, and never as pickled code."""

from __future__ import annotations

import pickle
import shutil

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
    with pytest.raises(ModelIntegrityError, match="smartlab train nothing"):
        load_model("nothing", tmp_path)


class _Payload:
    ran = False

    def __reduce__(self):
        return (_Payload._run, ())

    @staticmethod
    def _run():
        _Payload.ran = True
        return torch.zeros(1)
