"""Model cards: what a shipped model is, how it was trained, how well it does, and its hash.

A card is a JSON file beside the weights. Loading checks the weights' SHA-256
against the card before ``torch.load(weights_only=True)`` ever sees the file,
so a tampered or substituted file is refused, not unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class ModelIntegrityError(RuntimeError):
    """A model that cannot be loaded as its card says.

    Its weights file is missing or its SHA-256 does not match the card, or the
    card names a network this version of SmartLab does not have.
    """


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelCard:
    """Everything needed to rebuild, check and trust a trained model.

    ``architecture`` names the network class and its constructor arguments;
    ``preprocessing`` the input normalisation the plugin must apply (the same
    function as in training); ``data`` the generator, its config and the seeds
    of the training split, so ``smartlab evaluate`` can pick a seed never used.
    """

    name: str
    version: str
    task: str
    architecture: dict[str, Any]
    input_field_shape: list[int]
    outputs: list[str]
    preprocessing: dict[str, Any]
    training: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    torch_version: str
    weights_file: str
    sha256: str
    extras: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        return cls(**json.loads(Path(path).read_text()))

    def weights_path(self, directory: Path) -> Path:
        return Path(directory) / self.weights_file

    def verify(self, directory: Path) -> Path:
        """The weights file, after checking it exists and matches the card's SHA-256."""
        path = self.weights_path(directory)
        if not path.is_file():
            raise ModelIntegrityError(f"{self.name}: weights file {path} is missing")
        actual = sha256_of(path)
        if actual != self.sha256:
            raise ModelIntegrityError(
                f"{self.name}: refusing to load {path}: its SHA-256 is {actual[:16]}..., "
                f"the model card says {self.sha256[:16]}... (file changed or replaced)"
            )
        return path
