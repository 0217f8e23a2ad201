"""Figures for docs/devices/microscopy.md: specimen, a frame, its mask, grey levels per frame.

Run with the project's Python; writes ``docs/figures/microscopy_*.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Rectangle
from scipy import ndimage

from smartlab_plugins.devices.microscopy import (
    PHASES,
    MicroscopyConfig,
    acquire_frames,
    draw_imaging,
    simulate,
    specimen,
)

OUT = Path(__file__).resolve().parents[1] / "figures"
PHASE_CMAP = ListedColormap(["#3b4cc0", "#f2b134", "#d7301f", "#4daf4a"])


def varied_position(labels: np.ndarray, frame: int) -> tuple[int, int]:
    """Top-left pixel (on a 64 px grid) of the frame whose rarest phase is most abundant."""
    starts = np.arange(0, labels.shape[0] - frame + 1, 64)
    best = max(
        ((r, c) for r in starts for c in starts),
        key=lambda rc: np.bincount(
            labels[rc[0] : rc[0] + frame, rc[1] : rc[1] + frame].ravel(), minlength=4
        ).min(),
    )
    return int(best[0]), int(best[1])


def zoom_corner(mask: np.ndarray) -> tuple[int, int]:
    """Top-left pixel (on a 32 px grid) of the 64 px zoom holding the most phases, evenly."""
    starts = np.arange(0, mask.shape[0] - 63, 32)
    best = max(
        ((r, c) for r in starts for c in starts),
        key=lambda rc: np.bincount(
            mask[rc[0] : rc[0] + 64, rc[1] : rc[1] + 64].ravel(), minlength=4
        ).min(),
    )
    return int(best[0]), int(best[1])


def overview_and_frame(config: MicroscopyConfig, seed: int = 0) -> Path:
    """Specimen label map with a frame outline, the noisy frame, its mask and a zoom."""
    s = config.structure
    structure = specimen(s, seed, 0)
    frame = config.frame_size
    row, col = varied_position(structure.labels, frame)
    rng = np.random.default_rng(1)
    imaging = draw_imaging(config, 1, rng)
    images, masks = acquire_frames(
        structure,
        np.array([row]),
        np.array([col]),
        frame,
        imaging,
        config.dose,
        config.readout_noise,
        config.psf_sigma_px,
        rng,
    )
    low, high = np.quantile(images[0], [0.001, 0.999])
    px = s.pixel_size_um
    fig, axes = plt.subplots(2, 2, figsize=(9, 8.6))
    ax = axes[0, 0]
    ax.imshow(
        structure.labels[::2, ::2],
        cmap=PHASE_CMAP,
        vmin=-0.5,
        vmax=3.5,
        extent=(0, s.extent_um, s.extent_um, 0),
        interpolation="nearest",
    )
    ax.add_patch(Rectangle((col * px, row * px), frame * px, frame * px, fill=False, ec="k", lw=2))
    ax.set(
        title=f"specimen labels ({s.size_px} px, {s.extent_um:.1f} um)",
        xlabel="x (um)",
        ylabel="y (um)",
    )
    extent = (col * px, (col + frame) * px, (row + frame) * px, row * px)
    ax = axes[0, 1]
    im = ax.imshow(images[0], cmap="gray", extent=extent, vmin=low, vmax=high)
    fig.colorbar(im, ax=ax, fraction=0.046, label="detector output")
    ax.set(
        title=f"camera_image (gain {imaging.gain[0]:.2f}, gamma {imaging.gamma[0]:.2f})",
        xlabel="x (um)",
    )
    ax = axes[1, 0]
    im = ax.imshow(
        masks[0], cmap=PHASE_CMAP, vmin=-0.5, vmax=3.5, extent=extent, interpolation="nearest"
    )
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, ticks=range(4))
    cbar.ax.set_yticklabels(PHASES)
    ax.set(title="camera_mask (ground truth)", xlabel="x (um)", ylabel="y (um)")
    ax = axes[1, 1]
    r0, c0 = zoom_corner(masks[0])
    zoom = (slice(r0, r0 + 64), slice(c0, c0 + 64))
    ax.imshow(images[0][zoom], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    ax.contour(masks[0][zoom], levels=[0.5, 1.5, 2.5], colors="c", linewidths=0.7)
    ax.set(title="64 x 64 px zoom with phase outlines", xlabel="pixel", ylabel="pixel")
    fig.tight_layout()
    path = OUT / "microscopy_frame.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def grey_levels(config: MicroscopyConfig, seed: int = 0) -> Path:
    """Per-frame mean grey level of each phase over 400 frames: no level belongs to a phase."""
    data = simulate(400, seed=seed, config=MicroscopyConfig(frame_size=128, n_structures=1))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.linspace(0, 1.6, 81)
    for k, name in enumerate(PHASES):
        means = [
            image[inner].mean()
            for image, mask in zip(data.inputs["images"], data.labels["masks"], strict=True)
            if (inner := ndimage.binary_erosion(mask == k, iterations=1)).sum() >= 5
        ]
        for ax, values in ((left, data.labels["levels"][:, k]), (right, means)):
            ax.hist(
                values,
                bins=bins,
                density=True,
                histtype="step",
                lw=1.5,
                color=PHASE_CMAP(k),
                label=name if ax is right else ("ferrite", "particles", "films", "lamellae")[k],
            )
    left.set(xlabel="SE yield", ylabel="density", title="drawn level per frame (constituent)")
    right.set(xlabel="detector output", title="mean grey level of each phase, per frame")
    for ax in (left, right):
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = OUT / "microscopy_histogram.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main() -> None:
    """Write all figures."""
    OUT.mkdir(parents=True, exist_ok=True)
    config = MicroscopyConfig()
    for path in (overview_and_frame(config), grey_levels(config)):
        print(path, f"{path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
