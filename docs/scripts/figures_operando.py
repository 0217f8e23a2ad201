"""Write the figures of docs/devices/operando.md to docs/figures/operando_*.png.

Run: ``python docs/scripts/figures_operando.py`` (a few seconds, CPU only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import matplotlib
import numpy as np
from bluesky import RunEngine

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from smartlab_plugins.devices import operando as op

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def run_events(plan: Any) -> list[dict[str, Any]]:
    """Run ``plan`` in a fresh RunEngine and return the event data."""
    events: list[dict[str, Any]] = []
    engine = RunEngine({})
    engine.subscribe(lambda name, doc: events.append(doc["data"]) if name == "event" else None)
    engine(plan)
    return events


def superlattice_excess(patterns: np.ndarray, two_theta: np.ndarray) -> np.ndarray:
    """Background-subtracted counts in the (1/2 1/2 1/2) window of each pattern."""
    window = (two_theta > 18.7) & (two_theta < 19.7)
    sides = ((two_theta > 17.6) & (two_theta < 18.4)) | ((two_theta > 20.0) & (two_theta < 20.8))
    patterns = np.asarray(patterns, dtype=float)
    return patterns[..., window].sum(-1) - patterns[..., sides].mean(-1) * window.sum()


def ramps_figure(path: Path) -> None:
    """Waterfalls of a cooling and a heating ramp from simulate(), onset marked."""
    data = op.simulate(40, seed=2)
    labels, grid = data.labels, data.coords["two_theta"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6), constrained_layout=True)
    picks = {
        "cooling, transition": np.flatnonzero((labels["direction"] < 0) & (labels["onset"] >= 0))[
            0
        ],
        "heating, transition": np.flatnonzero((labels["direction"] > 0) & (labels["onset"] >= 0))[
            0
        ],
        "no transition": np.flatnonzero(labels["onset"] < 0)[0],
    }
    for ax, (title, i) in zip(axes, picks.items(), strict=True):
        temps = data.inputs["temperatures"][i]
        image = ax.imshow(
            np.log10(data.inputs["patterns"][i]),
            aspect="auto",
            origin="lower",
            extent=(grid[0], grid[-1], -0.5, len(temps) - 0.5),
            cmap="viridis",
        )
        if labels["onset"][i] >= 0:
            ax.axhline(labels["onset"][i], color="w", ls="--", lw=1)
            ax.text(grid[0] + 0.5, labels["onset"][i] + 1, "onset", color="w")
        ax.set_title(
            f"{title}\nT {temps[0]:.0f} -> {temps[-1]:.0f} K, T_c = {labels['tc'][i]:.0f} K, "
            f"beta = {labels['beta'][i]:.2f}",
            fontsize=9,
        )
        ax.set_xlabel("2theta (deg)")
        ax.set_ylabel("frame")
    fig.colorbar(image, ax=axes, label="log10 counts")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def physics_figure(path: Path) -> None:
    """Hysteresis loop, superlattice and (200) splitting, and the readback lag."""
    controller = op.TemperatureController()
    detector = op.OperandoDetector(
        controller=controller, seed=5, t_c=450.0, beta=0.3, hysteresis=12
    )
    heat = run_events(bp.scan([detector], controller, 300, 500, 101))
    cool = run_events(bp.scan([detector], controller, 500, 300, 101))
    truth, grid = detector.truth, detector.two_theta

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    ax = axes[0, 0]
    for events, label, marker in ((heat, "heating", "o"), (cool, "cooling", "s")):
        temps = np.array([e["operando_temperature"] for e in events])
        excess = superlattice_excess([e["operando_pattern"] for e in events], grid)
        ax.plot(temps, excess, marker, ms=3, label=label, mfc="none")
    t = np.linspace(300, truth["t_up"], 400)
    amplitude = superlattice_excess([heat[0]["operando_pattern"]], grid)[0] / (
        op.order_parameter(300.0, truth["t_up"], truth["beta"]) ** 2
    )
    ax.plot(t, amplitude * op.order_parameter(t, truth["t_up"], truth["beta"]) ** 2, "k-", lw=0.8,
            label="A (1 - T/T_up)^(2 beta)")  # fmt: skip
    top = 1.2 * amplitude * op.order_parameter(400.0, truth["t_up"], truth["beta"]) ** 2
    ax.set_ylim(-0.05 * top, top)
    for value, name in (
        (truth["t_down"], "T_down"),
        (truth["t_c"], "T_c"),
        (truth["t_up"], "T_up"),
    ):
        ax.axvline(value, color="grey", ls=":", lw=1)
        ax.text(value, 0.97 * top, name, rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlim(400, 480)
    ax.set_xlabel("temperature (K)")
    ax.set_ylabel("(1/2 1/2 1/2) counts")
    ax.set_title("superlattice intensity (eta^2): hysteresis loop")
    ax.legend(fontsize=8, loc="lower left")

    shown = [(heat, 300.0), (cool, 420.0), (heat, 446.0), (cool, 446.0), (cool, 470.0)]
    lattice = detector.sample.lattice[0]
    centre = 2 * np.degrees(np.arcsin(detector.config.wavelength / lattice))
    for ax, (low, high, title) in zip(
        (axes[0, 1], axes[1, 0]),
        (
            (17.8, 20.6, "(1/2 1/2 1/2) superlattice"),
            (centre - 1.0, centre + 1.0, "cubic (200) -> tetragonal (002) + (200)"),
        ),
        strict=True,
    ):
        window = (grid > low) & (grid < high)
        for events, target in shown:
            event = min(
                events, key=lambda e, target=target: abs(e["operando_temperature"] - target)
            )
            branch = "heating" if events is heat else "cooling"
            ax.plot(
                grid[window],
                event["operando_pattern"][window],
                label=f"{event['operando_temperature']:.0f} K ({branch})",
            )
        ax.set_xlabel("2theta (deg)")
        ax.set_ylabel("counts")
        ax.set_title(title)
        ax.legend(fontsize=8)

    controller = op.TemperatureController()
    detector = op.OperandoDetector(controller=controller, seed=1)
    run_events(bps.mv(controller.ramp_rate, 6.0, controller.time_constant, 60.0))
    run_events(bps.mv(controller.target, 500.0))
    detector.frame_time.put(5.0)
    controller_events = run_events(bp.count([detector, controller], 80))
    ax = axes[1, 1]
    clock = np.array([e["temperature_clock"] for e in controller_events])
    ax.plot(clock, [e["temperature_setpoint"] for e in controller_events], label="setpoint")
    ax.plot(clock, [e["temperature"] for e in controller_events], label="readback")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("temperature (K)")
    ax.set_title("6 K/min ramp, tau = 60 s: readback lags by r tau = 6 K")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    """Write both figures."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    ramps_figure(FIGURES / "operando_ramps.png")
    physics_figure(FIGURES / "operando_physics.png")


if __name__ == "__main__":
    main()
