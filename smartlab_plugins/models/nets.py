"""The networks. Small on purpose: each trains from scratch in minutes on two CPU cores.

Every network a model card can name lives here, so that loading a card needs
this module only: a card's ``architecture`` entry is rebuilt by :func:`build`
whether or not the task module that trains it (``spinwave``, ``transition``,
...) was ever imported in the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from smartlab_plugins.models import runtime
from smartlab_plugins.models.cards import ModelIntegrityError

#: What :meth:`TransitionNet.step` carries from frame to frame: the LSTM's hidden and cell
#: states and the run's first frame's features.
State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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

    Input: (batch, 1, 12, 336), the diffraction frame integrated by pyFAI into
    12 azimuth (chi) by 336 q bins for the detector's declared geometry
    (:mod:`smartlab_plugins.models.caking`). Output: (batch, n_classes) logits.
    Pooling after the second convolution is 2x4 (not 2x2) so the dense layer
    stays small enough to ship and train in minutes.
    """

    def __init__(self, n_classes: int = 5, input_shape: tuple[int, int] = (12, 336)) -> None:
        super().__init__()
        rows, cols = input_shape
        self.features = nn.Sequential(conv_block(1, 32, 2), conv_block(32, 64, (2, 4)))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * (rows // 2 // 2) * (cols // 2 // 4), 16),
            nn.ReLU(inplace=True),
            nn.Linear(16, 8),
            nn.ReLU(inplace=True),
            nn.Linear(8, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TransitionNet(nn.Module):
    """Per-frame 1-D conv encoder, then an LSTM over the frames: one logit per frame.

    Input: (batch, frames, points) preprocessed patterns. Output: (batch,
    frames) logits of ``p_transition``. Causal: the output at frame ``t``
    depends on frames ``0..t`` only. The recurrence always runs in float32
    (:func:`~smartlab_plugins.models.runtime.full_precision` around it), so
    under the runtime's CUDA bfloat16 autocast only the encoder runs in
    bfloat16 and the carried state keeps full precision.
    """

    def __init__(
        self, points: int = 256, channels: int = 8, features: int = 32, hidden: int = 32
    ) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv1d(1, channels, kernel_size=7, padding=3),
            nn.ReLU(),
            nn.MaxPool1d(4),
            nn.Conv1d(channels, 2 * channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(4),
            nn.Flatten(),
            nn.Linear(2 * channels * (points // 16), features),
            nn.ReLU(),
        )
        self.lstm = nn.LSTM(2 * features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Features (..., features) of preprocessed frames (..., points)."""
        flat = self.encoder(frames.reshape(-1, 1, frames.shape[-1]))
        return flat.reshape(*frames.shape[:-1], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (batch, frames) for whole ramps (batch, frames, points)."""
        features = self.encode(x).float()
        logits, _ = self._recur(features, features[:, :1], None)
        return logits

    def step(self, frame: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (batch,) of one frame (batch, points) and the state to carry to the next.

        ``state`` is None for a run's first frame, then what the previous call
        returned: the LSTM's hidden and cell states and the first frame's features.
        """
        features = self.encode(frame)[:, None].float()
        reference = features if state is None else state[2]
        hidden = None if state is None else (state[0], state[1])
        logits, (h, c) = self._recur(features, reference, hidden)
        return logits[:, 0], (h, c, reference)

    def _recur(
        self,
        features: torch.Tensor,
        reference: torch.Tensor,
        hidden: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        inputs = torch.cat([features, features - reference], dim=-1)
        with runtime.full_precision(inputs.device):
            out, hidden = self.lstm(inputs, hidden)
            return self.head(out).squeeze(-1), hidden


def double_conv(channels_in: int, channels_out: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by batch norm and ReLU; the size is kept."""
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


class UNetFeatures(nn.Module):
    """U-Net encoder and decoder: (n, 1, H, W) to ``width`` feature maps (n, width, H, W).

    ``levels`` resolutions with ``width * 2**level`` channels; max pooling down,
    2x2 transposed convolutions up, the encoder's maps concatenated at each
    level. H and W must be multiples of ``2 ** (levels - 1)``.
    """

    def __init__(self, width: int = 16, levels: int = 3) -> None:
        super().__init__()
        widths = [width * 2**level for level in range(levels)]
        self.encode = nn.ModuleList(
            double_conv(1 if level == 0 else widths[level - 1], widths[level])
            for level in range(levels)
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
            for level in reversed(range(levels - 1))
        )
        self.decode = nn.ModuleList(
            double_conv(2 * widths[level], widths[level]) for level in reversed(range(levels - 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.encode):
            x = block(self.pool(x) if level else x)
            skips.append(x)
        for up, block, skip in zip(self.up, self.decode, reversed(skips[:-1]), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


class MicrographUNet(nn.Module):
    """SEM frame (n, 1, H, W) to per-pixel phase logits (n, n_classes, H, W).

    ``features`` is the U-Net, ``head`` a 1x1 convolution to the classes.
    """

    def __init__(self, n_classes: int = 4, width: int = 16, levels: int = 3) -> None:
        super().__init__()
        self.factor = 2 ** (levels - 1)
        self.features = UNetFeatures(width, levels)
        self.head = nn.Conv2d(width, n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


#: Every network a model card may name, by class name. Read-only: a network is added by
#: defining it in this module, never by registering it from elsewhere at import time.
ARCHITECTURES: Mapping[str, type[nn.Module]] = MappingProxyType(
    {cls.__name__: cls for cls in (SpinWaveNet, PhaseNet, TransitionNet, MicrographUNet)}
)


def build(architecture: dict[str, Any]) -> nn.Module:
    """The network a model card's ``architecture`` entry names, untrained."""
    name = architecture.get("class")
    if name not in ARCHITECTURES:
        raise ModelIntegrityError(
            f"the model card names the network {name!r}, which this SmartLab does not have "
            f"(it has {', '.join(ARCHITECTURES)}); was the model made by another version?"
        )
    return ARCHITECTURES[name](**architecture.get("params", {}))
