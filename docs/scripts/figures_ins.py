"""Figures for docs/devices/ins.md: typical S(|Q|, E) maps and what each parameter does.

Run with ``.venv/bin/python docs/scripts/figures_ins.py``; writes
``docs/figures/ins_*.png``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from smartlab_plugins.devices import ins

FIGURES = Path(__file__).resolve().parents[1] / "figures"
TRUTH = (0.8, 0.12, 0.08)  # J1, J2, D in meV


def _expected(j1: float, j2: float, d: float, config: ins.SpinWaveConfig, **settings: float):
    """Noise-free mean counts map for one truth at the config's (or given) settings."""
    merged = {
        "ei": config.ei,
        "temperature": config.temperature,
        "counting_time": config.counting_time,
    } | settings
    return ins.expected_counts(
        np.array([j1]), np.array([j2]), np.array([d]), config=config, **merged
    )[0]


def _path(config: ins.SpinWaveConfig) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """In-plane wavevectors along Γ-X-M-Γ of the chemical cell (M = AF point), Å^-1."""
    g = np.pi / config.lattice_a
    corners = np.array([[0.0, 0.0], [g, 0.0], [g, g], [0.0, 0.0]])
    points = [np.linspace(corners[i], corners[i + 1], 100, endpoint=False) for i in range(3)]
    path = np.concatenate([*points, corners[-1:]])
    return path[:, 0], path[:, 1], [0, 100, 200, 300], ["Γ", "(π,0)", "M=(π,π)", "Γ"]


def maps_figure(config: ins.SpinWaveConfig) -> Path:
    """Dispersion, noise-free map and one noisy map for the example truth."""
    j1, j2, d = TRUTH
    qx, qy, ticks, labels = _path(config)
    lam = _expected(j1, j2, d, config)
    noisy = ins.measure(j1, j2, d, np.random.default_rng(1), config)[0]
    extent = [config.q_min, config.q_max, config.e_min, config.e_max]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(ins.dispersion(qx, qy, j1, j2, d, config.spin, config.lattice_a))
    axes[0].axhline(float(ins.anisotropy_gap(j1, d, config.spin)), ls="--", c="k", lw=0.8)
    axes[0].axhline(float(ins.band_top(j1, j2, d, config.spin)), ls=":", c="k", lw=0.8)
    axes[0].set_xticks(ticks, labels)
    axes[0].set_ylabel("ħω (meV)")
    axes[0].set_title(f"LSWT dispersion, J1={j1}, J2={j2}, D={d} meV")
    for ax, data, title in ((axes[1], lam, "mean counts"), (axes[2], noisy, "one measurement")):
        image = ax.imshow(
            np.log10(1.0 + data.T), origin="lower", aspect="auto", extent=extent, cmap="viridis"
        )
        fig.colorbar(image, ax=ax, label="log10(1 + counts)")
        ax.set_xlabel("|Q| (Å⁻¹)")
        ax.set_ylabel("E (meV)")
        ax.set_title(f"{title}: Ei={config.ei} meV, T={config.temperature} K")
    fig.tight_layout()
    out = FIGURES / "ins_maps.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def parameters_figure(config: ins.SpinWaveConfig) -> Path:
    """Q-integrated spectra when J1, J2, D or T change, and the gap cut at the AF point."""
    j1, j2, d = TRUTH
    e = ins.energy_axis(config)
    q = ins.q_axis(config)
    q_af = np.sqrt(2.0) * np.pi / config.lattice_a
    af_bins = np.abs(q - q_af) < 0.05
    cases = {
        "J1": [(x, j2, d) for x in (0.6, 0.8, 1.0)],
        "J2": [(j1, x, d) for x in (0.06, 0.12, 0.2)],
        "D": [(j1, j2, x) for x in (0.03, 0.08, 0.15)],
    }
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    for ax, (name, truths) in zip(axes[:3], cases.items(), strict=True):
        for truth in truths:
            lam = _expected(*truth, config)
            if name == "D":
                ax.plot(e, lam[af_bins].sum(axis=0), label=f"{name}={truth[2]}")
            else:
                ax.plot(e, lam.sum(axis=0), label=f"{name}={truth[('J1', 'J2').index(name)]}")
        ax.set_yscale("log")
        ax.set_xlabel("E (meV)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("counts summed over |Q|")
    axes[2].set_ylabel(f"counts, |Q| within 0.05 Å⁻¹ of {q_af:.2f}")
    axes[2].set_xlim(0, 6)
    for temperature in (5.0, 50.0, 150.0):
        lam = _expected(j1, j2, d, config, temperature=temperature)
        axes[3].plot(e, lam.sum(axis=0), label=f"T={temperature:g} K")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("E (meV)")
    axes[3].legend(fontsize=8)
    axes[0].set_title("J1 sets the bandwidth")
    axes[1].set_title("J2 lowers and splits the zone boundary")
    axes[2].set_title("D opens the gap")
    axes[3].set_title("Bose factor")
    fig.tight_layout()
    out = FIGURES / "ins_parameters.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main() -> None:
    """Write all figures."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    config = ins.SpinWaveConfig()
    for path in (maps_figure(config), parameters_figure(config)):
        print(path, path.stat().st_size // 1024, "KB")


if __name__ == "__main__":
    main()
