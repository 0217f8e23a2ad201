"""Figures for docs/devices/mpb.md: example frames, radial profiles and the phase diagram.

Run with ``python docs/scripts/figures_mpb.py``; writes ``docs/figures/mpb_*.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from smartlab_plugins.devices import mpb

OUT = Path(__file__).resolve().parents[1] / "figures"
CONFIG = mpb.MPBConfig()
COLOURS = {0: "tab:blue", 1: "tab:green", 2: "tab:red", 3: "tab:purple", 4: "tab:gray"}


def clean_image(x: float, temperature: float = 300.0) -> np.ndarray:
    """Noise-free frame without jitter, texture or background (sharp 200 nm crystallites)."""
    nuisance = {
        "beam_shift": np.zeros((1, 2)),
        "crystallite_size": np.full(1, 200.0),
        "texture_amplitude": np.zeros((1, 3)),
        "texture_phase": np.zeros((1, 3)),
        "scale": np.ones(1),
        "background": np.zeros(1),
        "distance": np.full(1, CONFIG.distance),
        "arm_two_theta": np.full(1, CONFIG.arm_two_theta),
    }
    return mpb.mean_counts(np.array([x]), np.array([temperature]), nuisance, CONFIG)[0]


def radial_profile(image: np.ndarray, step: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Mean counts in 2-theta bins of the nominal pixel map (empty bins dropped)."""
    two_theta = mpb.pixel_angles(np.zeros((1, 2)), CONFIG)[0][0].astype(float)
    edges = np.arange(two_theta.min(), two_theta.max() + step, step)
    index = np.digitize(two_theta.ravel(), edges)
    sums = np.bincount(index, weights=image.ravel().astype(float), minlength=edges.size + 1)
    counts = np.bincount(index, minlength=edges.size + 1)
    centres = np.concatenate([[edges[0] - step / 2], edges + step / 2])
    keep = counts > 0
    return centres[keep], sums[keep] / counts[keep]


def frames_figure() -> None:
    """Four noisy frames: rhombohedral, monoclinic, tetragonal and cubic."""
    points = ((0.30, 300.0), (0.49, 100.0), (0.70, 300.0), (0.50, 750.0))
    compositions = np.array([p[0] for p in points])
    temperatures = np.array([p[1] for p in points])
    frames, _ = mpb.generate_frames(compositions, temperatures, np.random.default_rng(2), CONFIG)
    fig, axes = plt.subplots(4, 1, figsize=(6.4, 7.2), sharex=True)
    for ax, frame, (x, temperature) in zip(axes, frames, points, strict=True):
        truth = mpb.truth_at(x, temperature)
        ax.imshow(frame, cmap="magma", vmax=np.percentile(frame, 99.9), aspect="equal")
        fractions = ", ".join(f"{f:.2f}" for f in truth.fractions)
        title = f"x = {x}, {temperature:.0f} K: {truth.phase_name} (R, M, T, C = {fractions})"
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("row")
    axes[-1].set_xlabel("column")
    fig.tight_layout()
    fig.savefig(OUT / "mpb_frames.png", dpi=90)
    plt.close(fig)


def profiles_figure() -> None:
    """Radial profiles around each family for compositions across the boundary."""
    compositions = (0.1, 0.3, 0.44, 0.458, 0.465, 0.472, 0.5, 0.7, 0.9)
    families = {"{111}": (37.0, 39.5), "{200}": (43.0, 46.8), "{220}": (63.5, 68.5)}
    fig, axes = plt.subplots(1, 3, figsize=(10, 5.2), sharey=True)
    for offset, x in enumerate(compositions):
        tth, profile = radial_profile(clean_image(x))
        label = mpb.truth_at(x, 300.0)
        for ax, (low, high) in zip(axes, families.values(), strict=True):
            window = (tth > low) & (tth < high)
            scaled = profile[window] / profile.max() + 1.1 * offset
            ax.plot(tth[window], scaled, color=COLOURS[label.phase], lw=1)
        axes[-1].text(68.6, 1.1 * offset, f"x={x}", fontsize=8, va="bottom")
    for ax, name in zip(axes, families, strict=True):
        ax.set_title(name)
        ax.set_xlabel("2θ (deg)")
    axes[0].set_ylabel("intensity (normalised, offset)")
    handles = [plt.Line2D([], [], color=c, label=mpb.PHASE_NAMES[k]) for k, c in COLOURS.items()]
    axes[0].legend(handles=handles, fontsize=8, loc="upper left")
    fig.suptitle("Radial profiles at 300 K (noise-free, no jitter or texture)", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "mpb_profiles.png", dpi=90)
    plt.close(fig)


def phase_diagram_figure() -> None:
    """Label map, fractions at 200 K and the lattice distortions vs x."""
    x = np.linspace(0.0, 1.0, 801)
    temperature = np.linspace(*mpb.TEMPERATURE_LIMITS, 351)
    grid_x, grid_t = np.meshgrid(x, temperature)
    labels = mpb.phase_label(mpb.phase_fractions(grid_x, grid_t))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    cmap = matplotlib.colors.ListedColormap([COLOURS[k] for k in range(5)])
    axes[0].pcolormesh(x, temperature, labels, cmap=cmap, vmin=-0.5, vmax=4.5, shading="auto")
    axes[0].plot(x, mpb.curie_temperature(x), "k:", lw=1, label="T_C(x)")
    axes[0].set(xlabel="x (Ti fraction)", ylabel="T (K)", title="label (R, M, T, C, mixture)")
    axes[0].legend(fontsize=8)
    x = np.linspace(0.40, 0.55, 601)
    fractions = mpb.phase_fractions(x, 200.0)
    for k in range(3):
        axes[1].plot(x, fractions[:, k], color=COLOURS[k], label=mpb.PHASE_NAMES[k])
    for boundary in mpb.label_boundaries(200.0):
        axes[1].axvline(boundary, color="k", lw=0.5, ls=":")
    axes[1].set(xlabel="x", ylabel="volume fraction", title="fractions at 200 K (: label edges)")
    axes[1].legend(fontsize=8, loc="center right")
    full = np.linspace(0, 1, 201)
    for temp, style in ((100.0, ":"), (300.0, "-"), (550.0, "--")):
        delta = mpb.boundary_offset(full, temp)
        eta = np.where(delta > 0, mpb.tetragonality(full, temp), np.nan)
        shear = np.where(delta < 0, mpb.rhombohedral_shear(full, temp), np.nan)
        axes[2].plot(full, 100 * eta, "tab:red", ls=style, label=f"100(c/a-1), {temp:.0f} K")
        axes[2].plot(full, 10 * shear, "tab:blue", ls=style, label=f"10(90-alpha), {temp:.0f} K")
    axes[2].set(xlabel="x", title="distortions of R and T")
    axes[2].legend(fontsize=6, ncol=2, loc="upper center")
    fig.tight_layout()
    fig.savefig(OUT / "mpb_phase_diagram.png", dpi=90)
    plt.close(fig)


def main() -> None:
    """Write all figures."""
    OUT.mkdir(parents=True, exist_ok=True)
    frames_figure()
    profiles_figure()
    phase_diagram_figure()


if __name__ == "__main__":
    main()
