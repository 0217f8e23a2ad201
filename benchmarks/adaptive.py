"""Adaptive against uniform scans on the simulated instruments: points used versus error.

(1) The cooling transition ``T_down`` of operando samples, over a 100 K window:
``adaptive_ramp`` (``transition_bracket`` reading ``transition_lstm`` live, through
a real RunEngine, SmartLab worker and Tiled server) against uniform cooling ramps
of the same resolution, analysed by the same ``transition_lstm`` model frame by
frame. Estimate: the middle of the last untransformed / first transformed pair.
(2) The four phase-class changes across the morphotropic phase boundary of the
MPB stage at 300 K, x in [0.3, 0.7]: ``adaptive_map`` (``phase_boundary`` reading
``phase_cnn`` live) against uniform grids, classified by the same ``phase_cnn``
model. Error: the largest distance of a true class change to the nearest found one.

Uniform scans are measured on the same simulated devices but analysed by calling
the models directly (no RunEngine), which only makes them faster to run.

    python benchmarks/adaptive.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import figure, machine, record, write_section

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
RAMP_RESOLUTIONS = (4.0, 2.0, 1.0, 0.5)  # K
RAMP_TOLERANCE = 0.5  # K
MAP_RESOLUTIONS = (0.02, 0.01, 0.005, 0.0025)  # Ti fraction
MAP_TOLERANCE = 0.005
MAP_RANGE = (0.3, 0.7)
#: points a uniform ramp would have used had it stopped at the first transformed frame, per step
UNTIL_TRANSITION: dict[float, list[int]] = {}


def ramp_window(detector) -> tuple[float, float]:
    """A 100 K cooling window from above T_up, placed at a seed-dependent offset."""
    t_up = detector.truth["t_up"]
    return float(round(t_up) + 20), float(round(t_up) - 80)


def uniform_ramp(seed: int, step: float) -> tuple[int, float]:
    """Points and error of a uniform cooling ramp analysed by transition_lstm frame by frame."""
    from smartlab_plugins.devices import operando
    from smartlab_plugins.models import transition
    from smartlab_plugins.models.store import shared_model

    model = shared_model("transition_lstm")
    devices = operando.make_devices(seed=seed)
    detector, controller = devices["operando"], devices["temperature"]
    start, stop = ramp_window(detector)
    temperatures = np.arange(start, stop - 1e-9, -step)
    state, previous = None, None
    estimate = np.nan
    for index, t in enumerate(temperatures):
        controller.move(float(t))
        detector.trigger()
        p, state = transition.step_frame(model, detector.pattern.get(), state)
        if p >= 0.5 and previous is not None:
            estimate = (previous + controller.position) / 2
            UNTIL_TRANSITION.setdefault(step, []).append(index + 1)
            break
        previous = controller.position
    # a uniform ramp measures its whole range: the points it uses do not depend on the answer
    return len(temperatures), abs(estimate - detector.truth["t_down"])


def uniform_map(seed: int, step: float) -> tuple[int, float]:
    """Points and error of a uniform grid classified by phase_cnn."""
    from smartlab_plugins.devices import mpb
    from smartlab_plugins.models import phase
    from smartlab_plugins.models.store import shared_model

    model, task = shared_model("phase_cnn"), phase.PhaseTask()
    xs = np.arange(MAP_RANGE[0], MAP_RANGE[1] + 1e-9, step)
    rng = np.random.default_rng(seed)
    frames, _ = mpb.generate_frames(xs, np.full(len(xs), 300.0), rng, mpb.MPBConfig())
    classes = task.probabilities(model.run(phase.preprocess(frames)), model.card.extras).argmax(1)
    pairs = zip(xs, xs[1:], classes, classes[1:], strict=False)
    found = [(a + b) / 2 for a, b, ca, cb in pairs if ca != cb]
    return len(xs), map_error(found)


def map_error(found: list[float]) -> float:
    truth = mpb_truth()
    if not found:
        return float("inf")
    return float(max(min(abs(f - t) for f in found) for t in truth))


def mpb_truth() -> np.ndarray:
    from smartlab_plugins.devices import mpb

    return mpb.label_boundaries(300.0)


def adaptive_runs(seeds: list[int]) -> tuple[list, list]:
    """(resolution, seed, points, error) of adaptive_ramp and adaptive_map runs."""
    from bluesky import RunEngine

    from smartlab_plugins import SmartLab
    from smartlab_plugins.adaptive.feed import ResultsFeed
    from smartlab_plugins.adaptive.plans import adaptive_map, adaptive_ramp
    from smartlab_plugins.devices import mpb, operando
    from smartlab_plugins.server import EmbeddedServer

    ramps, maps = [], []
    with tempfile.TemporaryDirectory() as folder, EmbeddedServer(folder) as server:
        RE = RunEngine()
        plugins = ["transition_lstm", "phase_cnn"]
        with SmartLab(server.uri, server.api_key, plugins=plugins, isolation="thread") as sl:
            RE.subscribe(sl)
            feed = ResultsFeed(sl)
            for seed in seeds:
                for resolution in RAMP_RESOLUTIONS:
                    devices = operando.make_devices(seed=seed)
                    detector, controller = devices["operando"], devices["temperature"]
                    start, stop = ramp_window(detector)
                    (uid,) = RE(
                        adaptive_ramp(
                            [detector], controller, start, stop, feed=feed, resolution=resolution
                        )
                    )
                    sl.flush()
                    summary = last_summary(server, uid)
                    estimate = summary["planners"]["transition_bracket"]["temperature"]
                    error = abs(estimate - detector.truth["t_down"])
                    ramps.append((resolution, seed, summary["points"], error))
                    print(f"ramp seed {seed} res {resolution}: {ramps[-1][2:]}", flush=True)
                for resolution in MAP_RESOLUTIONS:
                    devices = mpb.make_devices(seed=seed)
                    (uid,) = RE(
                        adaptive_map(
                            [devices["mpb"]],
                            devices["sample"].x,
                            *MAP_RANGE,
                            feed=feed,
                            resolution=resolution,
                            budget=60,
                        )
                    )
                    sl.flush()
                    summary = last_summary(server, uid)
                    found = [b["at"] for b in summary["planners"]["phase_boundary"]["boundaries"]]
                    maps.append((resolution, seed, summary["points"], map_error(found)))
                    print(f"map seed {seed} res {resolution}: {maps[-1][2:]}", flush=True)
            feed.close()
    return ramps, maps


def last_summary(server, uid: str) -> dict:
    """The plan's summary, read back from the decision stream in Tiled."""
    import json

    table = server.client()[uid]["smartlab_decisions"].read()
    return json.loads(table["decision_detail"].values[-1])["summary"]


def plot(path: Path, title: str, unit: str, adaptive: list, uniform: list, tolerance: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for rows, label, marker in ((adaptive, "adaptive", "o"), (uniform, "uniform", "s")):
        by = {}
        for resolution, _, points, error in rows:
            by.setdefault(resolution, []).append((points, error))
        ax.scatter(
            [p for r in rows for p in [r[2]]], [r[3] for r in rows], marker=marker, alpha=0.3
        )
        means = sorted(
            (np.mean([p for p, _ in v]), np.mean([e for _, e in v])) for v in by.values()
        )
        ax.plot(*zip(*means, strict=True), marker=marker, label=f"{label} (mean of seeds)")
    ax.axhline(tolerance, color="grey", linestyle=":", label=f"tolerance {tolerance:g} {unit}")
    ax.set(xscale="log", xlabel="points measured", ylabel=f"error ({unit})", title=title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def headline(rows_a: list, rows_u: list, resolution: float, tolerance: float):
    a = [r for r in rows_a if r[0] == resolution]
    u = [r for r in rows_u if r[0] == resolution]
    points_a, points_u = np.mean([r[2] for r in a]), np.mean([r[2] for r in u])
    worst_a, worst_u = max(r[3] for r in a), max(r[3] for r in u)
    return points_a, points_u, worst_a, worst_u, points_u / points_a, worst_a <= tolerance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="samples per instrument")
    args = parser.parse_args()
    seeds = list(range(1, args.seeds + 1))
    started = time.perf_counter()
    ramps, maps = adaptive_runs(seeds)
    uniform_ramps = [(s, seed, *uniform_ramp(seed, s)) for seed in seeds for s in RAMP_RESOLUTIONS]
    uniform_maps = [(s, seed, *uniform_map(seed, s)) for seed in seeds for s in MAP_RESOLUTIONS]
    elapsed = time.perf_counter() - started
    plot(
        FIGURES / "adaptive_ramp.png",
        "T_down of a cooling ramp: adaptive_ramp vs uniform",
        "K",
        ramps,
        uniform_ramps,
        RAMP_TOLERANCE,
    )
    plot(
        FIGURES / "adaptive_map.png",
        "Phase-class changes across the MPB: adaptive_map vs uniform",
        "Ti fraction",
        maps,
        uniform_maps,
        MAP_TOLERANCE,
    )
    ramp = headline(ramps, uniform_ramps, RAMP_TOLERANCE, RAMP_TOLERANCE)
    mapped = headline(maps, uniform_maps, MAP_TOLERANCE, MAP_TOLERANCE)
    table = [
        "| experiment | resolution | adaptive points | uniform points | worst error adaptive "
        "| worst error uniform | fewer points |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, unit, rows_a, rows_u, resolutions in (
        ("ramp (T_down)", "K", ramps, uniform_ramps, RAMP_RESOLUTIONS),
        ("map (class changes)", "", maps, uniform_maps, MAP_RESOLUTIONS),
    ):
        for resolution in resolutions:
            pa, pu, ea, eu, ratio, _ = headline(rows_a, rows_u, resolution, resolution)
            table.append(
                f"| {name} | {resolution:g} {unit} | {pa:.1f} | {pu:.0f} | {ea:.4g} | {eu:.4g} "
                f"| {ratio:.1f}x |"
            )
    lines = [
        "## Adaptive plans (`benchmarks/adaptive.py`)",
        "",
        f"{len(seeds)} samples per instrument; real `transition_lstm` and `phase_cnn` "
        "as the analysis (adaptive: live through SmartLab and Tiled; uniform: the same "
        "models called directly). Plots: `docs/figures/adaptive_ramp.png`, "
        "`docs/figures/adaptive_map.png`.",
        "",
        *table,
        "",
        "Uniform points count the whole ramp or grid. A uniform ramp stopped at the first "
        "transformed frame would have used "
        + ", ".join(f"{np.mean(v):.0f} at {k:g} K" for k, v in sorted(UNTIL_TRANSITION.items()))
        + " on average.",
        "",
        f"Total {elapsed:.0f} s. Machine: {machine()}.",
    ]
    print("\n".join(lines))
    print(f"wrote {write_section('adaptive', lines)}")
    record(
        "adaptive",
        [
            figure(
                f"T_down located to {RAMP_TOLERANCE:g} K: points, adaptive vs uniform",
                f"{ramp[0]:.1f} vs {ramp[1]:.0f} ({ramp[4]:.1f}x fewer, worst error "
                f"{ramp[2]:.2f} K)",
                ">= 5x fewer, error <= tolerance",
                ramp[4] >= 5 and ramp[5],
            ),
            figure(
                f"MPB class changes located to {MAP_TOLERANCE:g}: points, adaptive vs uniform",
                f"{mapped[0]:.1f} vs {mapped[1]:.0f} ({mapped[4]:.1f}x fewer, worst error "
                f"{mapped[2]:.4f})",
                ">= 3x fewer, error <= tolerance",
                mapped[4] >= 3 and mapped[5],
            ),
        ],
    )


if __name__ == "__main__":
    main()
