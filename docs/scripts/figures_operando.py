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


def superlattice_excess(patterns: np.ndarray, two_theta: np.ndarray, a: float) -> np.ndarray:
    """Background-subtracted counts in the (3/2 1/2 1/2) window of lattice ``a`` (angstrom)."""
    centre = 2 * np.degrees(np.arcsin(1.54056 * np.sqrt(11) / (4 * a)))
    offset = two_theta - centre
    window = (offset > -0.35) & (offset < 0.45)
    sides = ((offset > -1.3) & (offset < -0.7)) | ((offset > 0.65) & (offset < 0.95))
    patterns = np.asarray(patterns, dtype=float)
    return patterns[..., window].sum(-1) - patterns[..., sides].mean(-1) * window.sum()


def ramps_figure(path: Path) -> None:
    """Change since the first frame along ramps of each transition type, onset marked."""
    data = op.simulate(80, seed=2)
    labels, grid = data.labels, data.coords["two_theta"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6), constrained_layout=True)
    crossing = labels["onset"] >= 0
    picks = {
        "first order, cooling": np.flatnonzero(
            crossing & (labels["kind"] == 0) & (labels["direction"] < 0)
        )[0],
        "tricritical, heating": np.flatnonzero(
            crossing & (labels["kind"] == 1) & (labels["direction"] > 0)
        )[0],
        "second order, cooling": np.flatnonzero(
            crossing & (labels["kind"] == 2) & (labels["direction"] < 0)
        )[0],
        "no transition": np.flatnonzero(~crossing)[0],
    }
    for ax, (title, i) in zip(axes, picks.items(), strict=True):
        temps = data.inputs["temperatures"][i]
        patterns = data.inputs["patterns"][i].astype(float)
        change = (patterns - patterns[0]) / np.sqrt(patterns[0] + 1.0)
        image = ax.imshow(
            np.clip(change, -10, 10),
            aspect="auto",
            origin="lower",
            extent=(grid[0], grid[-1], -0.5, len(temps) - 0.5),
            cmap="RdBu_r",
            vmin=-10,
            vmax=10,
        )
        if labels["onset"][i] >= 0:
            ax.axhline(labels["onset"][i], color="k", ls="--", lw=1)
            ax.text(grid[0] + 0.5, labels["onset"][i] + 1, "onset", color="k")
        material = op.MATERIALS[labels["material"][i]].name
        system = list(op.TILT_SYSTEMS)[labels["tilt_system"][i]]
        ax.set_title(
            f"{title}: {material} {system}\nT {temps[0]:.0f} -> {temps[-1]:.0f} K, "
            f"T_c = {labels['tc'][i]:.0f} K, tilt0 = {labels['tilt0'][i]:.1f} deg",
            fontsize=9,
        )
        ax.set_xlabel("2theta (deg)")
        ax.set_ylabel("frame")
    fig.colorbar(image, ax=axes, label="change since frame 0 (Poisson sigmas)")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def physics_figure(path: Path) -> None:
    """Order parameters, the hysteresis loop, the superlattice line, splitting and K-alpha2, lag."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    ax = axes[0, 0]
    t = np.linspace(300, 520, 1000)
    for code, name in enumerate(op.KINDS):
        sample = op.SampleParameters(
            **{
                k: np.array([v])
                for k, v in dict(
                    kind=code, t_c=450.0, hysteresis=12.0 if code == 0 else 0.0,
                    supercooling=40.0 if code == 0 else np.nan, coexistence=1.0,
                    material=0, tilt_system=0, tilt0=6.0, strain_coupling=0.4,
                    lattice=3.905, expansion=1.2e-5, scale=1.0,
                ).items()
            }
        )  # fmt: skip
        tilt = op.tilt_angle(t, sample)
        if code == 0:  # the tilted branch exists up to T_up on heating
            tilt = np.where(t <= sample.t_up[0], tilt, 0.0)
        ax.plot(t, tilt, label=name)
    ax.set_xlabel("temperature (K)")
    ax.set_ylabel("tilt (deg)")
    ax.set_title("order parameter, T_c = 450 K, tilt0 = 6 deg (first order: heating branch)")
    ax.legend(fontsize=8)

    controller = op.TemperatureController()
    detector = op.OperandoDetector(
        controller=controller, seed=5, t_c=450.0, kind="first_order", hysteresis=12,
        material="SrTiO3",
    )  # fmt: skip
    heat = run_events(bp.scan([detector], controller, 400, 480, 81))
    cool = run_events(bp.scan([detector], controller, 480, 400, 81))
    truth, grid = detector.truth, detector.two_theta
    a = float(detector.sample.lattice[0] * (1 + detector.sample.expansion[0] * 140.0))
    ax = axes[0, 1]
    for events, label, marker in ((heat, "heating", "o"), (cool, "cooling", "s")):
        temps = np.array([e["operando_temperature"] for e in events])
        excess = superlattice_excess([e["operando_pattern"] for e in events], grid, a)
        ax.plot(temps, excess, marker, ms=3, label=label, mfc="none")
    for value, name in (
        (truth["t_down"], "T_down"),
        (truth["t_c"], "T_c"),
        (truth["t_up"], "T_up"),
    ):
        ax.axvline(value, color="grey", ls=":", lw=1)
        ax.text(value, ax.get_ylim()[1], name, rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlabel("temperature (K)")
    ax.set_ylabel("(3/2 1/2 1/2) counts")
    ax.set_title(
        f"first-order SrTiO3-like sample: hysteresis, coexistence {truth['coexistence']:.1f} K"
    )
    ax.legend(fontsize=8, loc="lower left")

    ax = axes[1, 0]
    centre_sl = 2 * np.degrees(np.arcsin(1.54056 * np.sqrt(11) / (4 * a)))
    centre_200 = 2 * np.degrees(np.arcsin(1.54056 / a))
    inset = ax.inset_axes((0.58, 0.45, 0.4, 0.5))
    for target in (470.0, 430.0, 400.0):
        event = min(cool, key=lambda e, target=target: abs(e["operando_temperature"] - target))
        label = f"{event['operando_temperature']:.0f} K"
        window = np.abs(grid - centre_sl) < 1.5
        ax.plot(grid[window], event["operando_pattern"][window], label=label)
        window = np.abs(grid - centre_200) < 0.6
        inset.plot(grid[window], event["operando_pattern"][window], ".-", ms=3)
    ax.set_xlabel("2theta (deg)")
    ax.set_ylabel("counts")
    ax.set_title("(3/2 1/2 1/2) line beside (111); inset: (200) split, K-alpha1 + K-alpha2")
    ax.legend(fontsize=8, loc="upper left")
    inset.tick_params(labelsize=7)

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
