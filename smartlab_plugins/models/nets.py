"""The networks. Small on purpose: each trains from scratch in minutes on two CPU cores."""

from __future__ import annotations

import torch
from torch import nn


def conv_block(channels_in: int, channels_out: int, pool: tuple[int, int] | int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU, max pooling."""
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(pool),
    )


class SpinWaveNet(nn.Module):
    """S(|Q|, E) map to the Laplace location and log-scale of each exchange constant.

    Input: (batch, 1, 48, 80), the log-scaled map averaged over 2x2 bins.
    Output: (batch, 2 * n_outputs): locations, then log scales (normalised units).
    """

    def __init__(self, n_outputs: int = 3, width: int = 12) -> None:
        super().__init__()
        self.n_outputs = n_outputs
        self.features = nn.Sequential(
            conv_block(1, width, 2),
            conv_block(width, 2 * width, 2),
            conv_block(2 * width, 4 * width, 2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * width * 6 * 10, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 2 * n_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PhaseNet(nn.Module):
    """The talk's phase classifier: 3x3 convolutions with 32 then 64 feature maps, dense 16, 8.

    Input: (batch, 1, 12, 243), the diffraction frame averaged over 8-row
    azimuthal bands (the rings' 2θ resolution is kept; their curvature moves
    them by under a pixel within a band). Output: (batch, n_classes) logits.
    Pooling after the second convolution is 2x4 (not 2x2) so the dense layer
    stays small enough to ship and train in minutes.
    """

    def __init__(self, n_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_block(1, 32, 2), conv_block(32, 64, (2, 4)))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 3 * 30, 16),
            nn.ReLU(inplace=True),
            nn.Linear(16, 8),
            nn.ReLU(inplace=True),
            nn.Linear(8, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


ARCHITECTURES: dict[str, type[nn.Module]] = {"SpinWaveNet": SpinWaveNet, "PhaseNet": PhaseNet}


def build(architecture: dict) -> nn.Module:
    """The network a model card's ``architecture`` entry names, untrained."""
    return ARCHITECTURES[architecture["class"]](**architecture.get("params", {}))
