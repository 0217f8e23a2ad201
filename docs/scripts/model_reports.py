"""Write docs/models/*.md from the shipped model cards, with the comparison and transfer tables.

    python docs/scripts/model_reports.py [--skip-transfer]

Reads the cards of spinwave_cnn, phase_cnn and their baselines (all trained on
the same simulated data, seed and split), and runs the transfer-learning
experiment: a shifted spectrometer (coarser resolution, five times the
background), 50 labelled maps to adapt with, 500 new maps to test on.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from smartlab_plugins.models.store import card_of, shipped_dir

DOCS = Path(__file__).resolve().parents[1]
MODELS = DOCS / "models"
FIGURES = DOCS / "figures"
SHIFT = {"resolution_fraction": 0.06, "background_rate": 0.1}


def baseline_card(name: str) -> dict | None:
    path = shipped_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def weights_lines(card) -> list[str]:
    return [
        f"- weights: `{card.weights_file}`, sha256 `{card.sha256}`",
        f"- size: {card.training['parameters']:,} parameters",
    ]


def training_line(card, loss: str) -> str:
    t = card.training
    return (
        f"- training: Adam, {loss}, lr {t['learning_rate']}, batch {t['batch_size']}, "
        f"{t['schedule']}; {t['epochs_run']} epochs in {t['seconds']} s "
        f"(+{t['simulation_seconds']} s simulating) on {t['device']}; "
        f"epoch {t['best_epoch'] + 1} kept"
    )


def spinwave_page(transfer_rows: list[tuple[str, dict]] | None) -> str:
    card = card_of("spinwave_cnn")
    baselines = baseline_card("spinwave_baselines")
    params = ("j1", "j2", "d")
    rows = [("CNN (spinwave_cnn)", card.metrics)]
    if baselines:
        names = {"rf": "random forest", "gb": "gradient boosting", "svm": "SVM (RBF)"}
        rows += [(names[k], m["metrics"]) for k, m in baselines["models"].items()]
    table = ["| model | J1 | J2 | D |", "|---|---|---|---|"]
    for label, metrics in rows:
        table.append(
            f"| {label} | "
            + " | ".join(f"{100 * metrics[p]['relative_mae']:.1f}%" for p in params)
            + " |"
        )
    coverage = " / ".join(f"{card.metrics[p]['coverage_68']:.2f}" for p in params)
    generator = card.data["generator_config"]
    lines = [
        "# spinwave_cnn: exchange constants from S(|Q|, E)",
        "",
        "Regression of the nearest- and next-nearest-neighbour exchange J1, J2 and the",
        "single-ion anisotropy D (meV) of a Rb2MnF4-like square-lattice antiferromagnet",
        "from one inelastic-neutron-scattering map of the simulated chopper spectrometer",
        "([its physics](../devices/ins.md)). Plugin `spinwave_cnn`: field `ins_sqw`,",
        "results `j1`, `j2`, `d` and `*_std` (meV) per event.",
        "",
        "## Model card",
        "",
        *weights_lines(card),
        f"- architecture: `{card.architecture['class']}` (3 convolution blocks 12/24/48, dense 64, "
        "Laplace head: a location and a scale per constant)",
        f"- input: {', '.join(card.preprocessing['steps'])}",
        f"- targets: {card.preprocessing['targets']}",
        f"- data: {card.data['sizes']} maps from seed {card.data['generator_seed']} "
        f"(Ei {generator['ei']} meV, T {generator['temperature']} K, "
        f"counting time {generator['counting_time']} s)",
        training_line(card, "MAE + Laplace NLL"),
        f"- torch {card.torch_version}",
        "",
        "Uncertainty: each constant's location is trained on the mean absolute error of the",
        "log constant; a second output learns the Laplace scale of that error (negative",
        "log-likelihood, residuals detached). One network instead of a deep ensemble keeps",
        "training within five minutes; the scales are calibrated on the validation split.",
        f"Coverage of the 68% interval on the test split (J1 / J2 / D): {coverage}.",
        "",
        "## Accuracy on the held-out test split",
        "",
        f"Relative mean absolute error, {card.metrics['n']} test maps (target: at most 5% each).",
        "The baselines are trained on the same training split and read the features",
        "described in `smartlab_plugins/models/baselines.py` (8x8-binned map).",
        "",
        *table,
        "",
        "![validation curves](../figures/spinwave_cnn_curves.png)",
        "",
    ]
    if transfer_rows:
        shift = ", ".join(f"{k}={v}" for k, v in SHIFT.items())
        lines += [
            "## Transfer learning: a shifted spectrometer",
            "",
            "The same sample on an instrument with twice the energy-resolution width and five",
            f"times the background ({shift}). 50 labelled",
            "maps to adapt with (`smartlab finetune spinwave_cnn DATA`), 500 new maps to test on.",
            "",
            "| model on the shifted instrument | J1 | J2 | D |",
            "|---|---|---|---|",
            *[
                f"| {label} | "
                + " | ".join(f"{100 * m[p]['relative_mae']:.1f}%" for p in params)
                + " |"
                for label, m in transfer_rows
            ],
            "",
        ]
    return "\n".join(lines)


def phase_page() -> str:
    card = card_of("phase_cnn")
    baselines = baseline_card("phase_baselines")
    m = card.metrics
    rows = [("CNN (phase_cnn)", m)]
    if baselines:
        names = {"rf": "random forest", "gb": "gradient boosting", "svm": "SVM (RBF)"}
        rows += [(names[k], b["metrics"]) for k, b in baselines["models"].items()]
    bins = [f"{b['distance'][0]}-{b['distance'][1]}" for b in m["accuracy_by_distance"]]
    table = [
        "| model | all | away from boundary | " + " | ".join(bins) + " |",
        "|---|---|---|" + "---|" * len(bins),
    ]
    for label, metrics in rows:
        curve = {tuple(b["distance"]): b["accuracy"] for b in metrics["accuracy_by_distance"]}
        cells = [
            f"{100 * curve.get(tuple(b['distance']), float('nan')):.1f}%"
            for b in m["accuracy_by_distance"]
        ]
        table.append(
            f"| {label} | {100 * metrics['accuracy']:.1f}% | "
            f"{100 * metrics['accuracy_away_from_boundary']:.1f}% | " + " | ".join(cells) + " |"
        )
    counts = " | ".join(str(b["n"]) for b in m["accuracy_by_distance"])
    confusion = m["confusion"]
    matrix = [
        "| true \\ predicted | " + " | ".join(confusion["classes"]) + " |",
        "|---|" + "---|" * len(confusion["classes"]),
    ]
    matrix += [
        f"| {c} | " + " | ".join(map(str, row)) + " |"
        for c, row in zip(
            confusion["classes"], confusion["rows_true_columns_predicted"], strict=True
        )
    ]
    return "\n".join(
        [
            "# phase_cnn: crystal phase across a morphotropic phase boundary",
            "",
            "Classification of each diffraction frame of the simulated area detector",
            "([its physics](../devices/mpb.md)) into rhombohedral, monoclinic, tetragonal or a",
            "mixture. Plugin `phase_cnn`: field `mpb_image`, results `phase`, `phase_name`,",
            "`confidence` and `p_<phase>` per event.",
            "",
            "## Model card",
            "",
            *weights_lines(card),
            "- architecture: the talk's reference: 3x3 convolutions with 32 then 64 feature",
            "  maps (each with batch norm, ReLU, max pooling), dense 16 then 8, softmax over the",
            "  4 phases; the second pooling is 2x4 so the dense layer stays small",
            f"- input: {', '.join(card.preprocessing['steps'])}",
            f"- data: {card.data['sizes']} frames from seed {card.data['generator_seed']}, "
            "half of them within 0.05 of the boundary",
            training_line(card, "cross-entropy"),
            "- calibration: temperature scaling on the validation split, "
            f"T = {card.extras['temperature']:.3f}; "
            f"expected calibration error on the test split: {m['expected_calibration_error']:.4f}",
            f"- torch {card.torch_version}",
            "",
            "## Accuracy on the held-out test split, by distance |x - x_MPB(T)| to the boundary",
            "",
            "Target: at least 99% away from the boundary (|x - x_MPB| >= 0.05). "
            f"Test frames per bin: {counts}.",
            "",
            *table,
            "",
            "Confusion matrix of the CNN on the test split:",
            "",
            *matrix,
            "",
            "![accuracy by distance](../figures/phase_cnn_accuracy.png)",
            "",
            "![validation curves](../figures/phase_cnn_curves.png)",
            "",
        ]
    )


def accuracy_figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card = card_of("phase_cnn")
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    curves = [("CNN", card.metrics)]
    baselines = baseline_card("phase_baselines")
    if baselines:
        curves += [(k.upper(), b["metrics"]) for k, b in baselines["models"].items()]
    for label, metrics in curves:
        centres = [
            np.mean(b["distance"]) if b["distance"][1] < 1 else 0.15
            for b in metrics["accuracy_by_distance"]
        ]
        ax.plot(
            centres,
            [b["accuracy"] for b in metrics["accuracy_by_distance"]],
            marker="o",
            label=label,
        )
    ax.axvline(0.05, color="grey", linestyle=":")
    ax.set(
        xlabel="distance to the boundary |x - x_MPB(T)| (bin centre; last bin >= 0.1)",
        ylabel="test accuracy",
        title="phase classification near the boundary",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(FIGURES / "phase_cnn_accuracy.png")
    plt.close(fig)


def transfer_experiment() -> list[tuple[str, dict]]:
    """On a shifted instrument: shipped, trained from scratch on 50 maps, fine-tuned on them."""
    import tempfile

    from smartlab_plugins.devices.ins import SpinWaveConfig
    from smartlab_plugins.models.finetune import FINETUNE_CONFIG, finetune, score
    from smartlab_plugins.models.nets import build
    from smartlab_plugins.models.spinwave import SpinWaveTask
    from smartlab_plugins.models.training import TrainingConfig, fit, predict, split_by_seed
    from smartlab_plugins.simulate import simulate_case

    shifted = replace(SpinWaveConfig(), **SHIFT)
    small = simulate_case("ins", 50, seed=501, config=shifted, progress=False)
    test = SpinWaveTask().from_set(
        simulate_case("ins", 500, seed=502, config=shifted, progress=False)
    )
    task = SpinWaveTask()
    unadapted = score("spinwave_cnn", None, test)
    net = build(task.architecture())
    train, val, _ = split_by_seed(task.from_set(small), FINETUNE_CONFIG.fractions, 0)
    fit(task, net, train, val, TrainingConfig(**{**asdict(FINETUNE_CONFIG)}), progress=False)
    scratch = task.evaluate(predict(net, test.x), test, task.calibrate(net, val))
    with tempfile.TemporaryDirectory() as out:
        finetune("spinwave_cnn", small, Path(out), progress=False, data_label="shifted, 50 maps")
        tuned = score("spinwave_cnn", Path(out), test)
    return [
        ("shipped model, not adapted", unadapted),
        ("trained from scratch on the 50 maps", scratch),
        ("shipped model fine-tuned on the 50 maps", tuned),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-transfer", action="store_true")
    args = parser.parse_args()
    MODELS.mkdir(parents=True, exist_ok=True)
    transfer = None if args.skip_transfer else transfer_experiment()
    (MODELS / "spinwave_cnn.md").write_text(spinwave_page(transfer))
    accuracy_figure()
    (MODELS / "phase_cnn.md").write_text(phase_page())
    print(f"wrote {MODELS / 'spinwave_cnn.md'} and {MODELS / 'phase_cnn.md'}")


if __name__ == "__main__":
    main()
