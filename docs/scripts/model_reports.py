"""Write docs/models/*.md from the shipped model cards, with the comparison and transfer tables.

    python docs/scripts/model_reports.py [--skip-transfer] [--pages NAME ...]

Reads the cards of spinwave_cnn, phase_cnn and their baselines (all trained on
the same simulated data, seed and split), of transition_lstm (with its two
non-learning detectors) and of micrograph_unet, and runs the transfer-learning
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


def _margin_bins(curve: list[dict], unit: str) -> list[str]:
    """Column labels of a margin curve: "low-high unit" (the last bin open)."""
    suffix = f" {unit}" if unit else ""
    return [
        f"{b['margin'][0]:g}-{b['margin'][1]:g}{suffix}"
        if b["margin"][1] is not None
        else f">= {b['margin'][0]:g}{suffix}"
        for b in curve
    ]


def _margin_table(rows: list[tuple[str, dict]], key: str, unit: str) -> list[str]:
    """One row per model: accuracy in each bin of the margin ``key`` (the CNN's bins)."""
    reference = rows[0][1][key]
    table = [
        "| model | " + " | ".join(_margin_bins(reference, unit)) + " |",
        "|---|" + "---|" * len(reference),
    ]
    for label, metrics in rows:
        curve = {tuple(b["margin"]): b["accuracy"] for b in metrics.get(key, [])}
        cells = [f"{100 * curve.get(tuple(b['margin']), float('nan')):.1f}%" for b in reference]
        table.append(f"| {label} | " + " | ".join(cells) + " |")
    table.append("| test frames | " + " | ".join(str(b["n"]) for b in reference) + " |")
    return table


def _ece(metrics: dict) -> str:
    """The expected calibration error, or n/a for a model without probabilities."""
    ece = metrics.get("expected_calibration_error")
    return "n/a" if ece is None else f"{ece:.3f}"


def phase_page() -> str:
    card = card_of("phase_cnn")
    baselines = baseline_card("phase_baselines")
    m = card.metrics
    rows = [("CNN (phase_cnn)", m)]
    if baselines:
        names = {"rf": "random forest", "gb": "gradient boosting", "svm": "SVM (RBF)"}
        rows += [(names[k], b["metrics"]) for k, b in baselines["models"].items()]
    classes = card.preprocessing["classes"]
    summary = [
        "| model | all | away from the boundaries | "
        + " | ".join(f"{c} (away)" for c in classes if c in m["accuracy_away_by_class"])
        + " | ECE |",
        "|---|---|---|" + "---|" * (len(m["accuracy_away_by_class"]) + 1),
    ]
    for label, metrics in rows:
        per_class = metrics.get("accuracy_away_by_class", {})
        cells = [
            f"{100 * per_class[c]:.1f}%" if c in per_class else "n/a"
            for c in classes
            if c in m["accuracy_away_by_class"]
        ]
        summary.append(
            f"| {label} | {100 * metrics['accuracy']:.1f}% | "
            f"{100 * metrics['accuracy_away_from_boundary']:.1f}% | "
            + " | ".join(cells)
            + f" | {_ece(metrics)} |"
        )
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
    scope = card.preprocessing["scope"]
    config = card.data["generator_config"]
    return "\n".join(
        [
            "# phase_cnn: crystal phase across a morphotropic phase boundary",
            "",
            "Classification of each diffraction frame of a PZT-like perovskite",
            "([its physics](../devices/mpb.md)) into rhombohedral, monoclinic, tetragonal,",
            "cubic or a mixture. Plugin `phase_cnn`: field `mpb_image`, results `phase`,",
            "`phase_name`, `confidence` and `p_<phase>` per event. The frame is integrated by",
            "pyFAI for the geometry its data key declares (PONI parameters), so the detector",
            "distance, beam centre, pixel size and wavelength drop out.",
            "",
            "## Model card",
            "",
            *weights_lines(card),
            "- architecture: the talk's reference: 3x3 convolutions with 32 then 64 feature",
            "  maps (each with batch norm, ReLU, max pooling), dense 16 then 8, softmax over the",
            f"  {len(classes)} classes; the second pooling is 2x4 so the dense layer stays small",
            f"- input: {'; '.join(card.preprocessing['steps'])}",
            f"- data: {card.data['sizes']} frames from seed {card.data['generator_seed']}; "
            f"{100 * config['near_boundary_fraction']:.0f}% within "
            f"{config['near_boundary_halfwidth']} of the MPB (below 400 K), "
            f"{100 * config['near_curie_fraction']:.0f}% within "
            f"{config['near_curie_halfwidth']:g} K of the Curie line",
            f"- scope: x {config['x_range']}, T {config['temperature_range']} K, "
            f"Cu K-alpha1 ({config['wavelength']} angstrom), detector distance "
            f"{scope['distance_mm']} mm, arm {scope['arm_two_theta_deg']} deg, "
            f"q {scope['q_range_inverse_angstrom']} 1/angstrom",
            training_line(card, "cross-entropy"),
            "- calibration: temperature scaling on the validation split, "
            f"T = {card.extras['temperature']:.3f}; "
            f"expected calibration error (ECE) on the test split: "
            f"{m['expected_calibration_error']:.4f}",
            f"- torch {card.torch_version}",
            "",
            "## Accuracy on the held-out test split",
            "",
            "Target: at least 99% away from the boundaries "
            f"({card.preprocessing['away_from_boundary']}),",
            "cubic included. The CNN beside the classical baselines, on the same split",
            f"({m['n_away_from_boundary']} of {m['n']} test frames are away from the boundaries):",
            "",
            *summary,
            "",
            "By composition margin (Ti fraction to the nearest label change; frames at least",
            "50 K from the Curie line; cubic frames, of infinite margin, are in the next table):",
            "",
            *_margin_table(rows, "accuracy_by_composition_margin", ""),
            "",
            "By Curie margin |T - T_C(x)| (all frames):",
            "",
            *_margin_table(rows, "accuracy_by_curie_margin", "K"),
            "",
            "Confusion matrix of the CNN on the test split:",
            "",
            *matrix,
            "",
            "![accuracy by margin](../figures/phase_cnn_accuracy.png)",
            "",
            "![validation curves](../figures/phase_cnn_curves.png)",
            "",
        ]
    )


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def transition_page() -> str:
    card = card_of("transition_lstm")
    m, extras = card.metrics, card.extras
    detectors = (
        ("LSTM (transition_lstm)", m["lstm"]),
        ("CUSUM on the superlattice line", m["cusum"]),
        ("presence rule (the instrument's hand rule)", m["presence_rule"]),
    )
    kinds = ("first_order", "tricritical", "second_order")
    table = [
        "| detector | within 2 frames: all | heating | cooling | first order | tricritical "
        "| second order | false alarms | missed | flagged early | mean frame error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, metrics in detectors:
        a = metrics["all"]
        error = a["mean_abs_frame_error"]
        table.append(
            f"| {label} | {percent(a['detection_within_2'])} | "
            f"{percent(metrics['heating']['detection_within_2'])} | "
            f"{percent(metrics['cooling']['detection_within_2'])} | "
            + " | ".join(percent(metrics[k]["detection_within_2"]) for k in kinds)
            + f" | {percent(a['false_alarm_rate'])} | {percent(a['missed_rate'])} | "
            f"{percent(a['early_flag_rate'])} | "
            + ("n/a" if error is None else f"{error:.2f}")
            + " |"
        )
    counts = " / ".join(
        f"{m['lstm'][k]['n_transition']} {k.replace('_', ' ')}" for k in kinds if k in m["lstm"]
    )
    everything = m["lstm"]["all"]
    onset = m["onset_temperature"]
    cusum = extras["cusum"]
    generator = card.data["generator_config"]
    return "\n".join(
        [
            "# transition_lstm: a structural transition flagged live on a temperature ramp",
            "",
            "Online detection, one frame at a time, of the moment the perovskite sample of the",
            "simulated operando diffractometer ([its physics](../devices/operando.md)) leaves the",
            "phase it started the run in: on heating the octahedral tilt vanishes (at T_up, or",
            "T_c for a continuous transition), on cooling it appears (at T_down, or T_c). Plugin",
            "`transition_lstm`: field `operando_pattern` (the frame's temperature from",
            "`operando_temperature`); results per event `p_transition`, `flag` (1 at the one",
            "flagged event), `onset_temperature` and `onset_temperature_std` (K, at the flag) and",
            "`note`; the run's summary says where the flag was raised, or `no transition seen`.",
            "",
            "![a heating ramp, live](../figures/live_transition.png)",
            "",
            "*The live view (`LiveTransition`) after a heating ramp through T_up of a sample",
            "the model never saw: p_transition per frame and the flag with its onset.*",
            "",
            "## Scope",
            "",
            "Trained and tested on the operando instrument's whole family: the perovskites "
            f"{', '.join(generator['materials'])} (their lattices and atomic scattering factors),",
            f"the tilt systems {' and '.join(generator['tilt_systems'])}, transitions that are "
            "first order (Landau 2-4-6: a jump in the",
            "tilt, thermal hysteresis of "
            f"{generator['hysteresis_range'][0]:g}-{generator['hysteresis_range'][1]:g} K, "
            "two-phase coexistence over a few K), tricritical (beta = 1/4) or second order",
            f"(beta = 1/2), in the proportions {generator['kind_fractions']}; T_c "
            f"{generator['tc_range'][0]:g}-{generator['tc_range'][1]:g} K, tilts of "
            f"{generator['tilt_range'][0]:g}-{generator['tilt_range'][1]:g} deg at 0 K "
            "(superlattice lines 0.1-1 % of the",
            "strongest line near the transition), Cu K-alpha1 + K-alpha2, 30 s exposures "
            f"averaged over the ramp, {generator['ramp_rate_range'][0]:g}-"
            f"{generator['ramp_rate_range'][1]:g} K/min,",
            "heating and cooling, and ramps that never reach their transition. Outside this",
            "(other structures, other wavelengths, far weaker lines, much slower or faster",
            "ramps) the card's numbers are not a promise.",
            "",
            "## How it works",
            "",
            "- **Input.** Each frame's peaks above a smooth background, in Poisson standard",
            "  deviations, asinh-compressed (so a superlattice line at 0.1 % of the strongest",
            "  line is a few units, as plain as to a person looking for it, and the strongest",
            "  lines stay within a few units), averaged over 4-channel bins.",
            "- **Causal.** A small 1-D convolutional encoder turns each preprocessed frame",
            "  into 32 features f_t; an LSTM reads `[f_t, f_t - f_0]` (the frame and its change",
            "  since the run's first frame) and a linear head gives the logit of",
            "  `p_transition`. The plugin steps the LSTM once per event, carrying its hidden",
            "  state per run, so no frame is ever looked ahead at; a test checks that stepping",
            "  frame by frame gives the whole-ramp answer and that later frames change nothing",
            "  earlier.",
            f"- **The flag** is raised once, at the first frame with p_transition >= "
            f"{extras['threshold']} for {extras['consecutive']} consecutive frame(s) (tuned on the",
            "  validation split: most onsets within 2 frames with at most "
            f"{percent(extras['max_false_alarm'])} false alarms).",
            "- **The onset temperature** is interpolated where p_transition crossed 0.5 between",
            "  the last frame below the threshold and the first above it; its standard deviation",
            f"  is {extras['onset_std_steps']:.2f} temperature steps (the validation RMS error,",
            "  in steps between those frames).",
            "- **Bad input**: out-of-order or repeated events are refused (an error naming both",
            "  seq_nums, the detector's state unchanged); a gap (events missing or refused) is",
            "  stepped over and noted in `note` and the summary's `missing_events`; a pattern of",
            "  another length is refused unless the run sets `resample: True`; a blank pattern",
            "  (every channel the same count, e.g. all zero) is not fed to the LSTM: its row",
            "  has p_transition NaN and says so in `note`, and the summary counts it in",
            "  `blank_frames`; a run that stops before the transition ends with",
            "  `no transition seen` and its last temperature.",
            "",
            "## Model card",
            "",
            *weights_lines(card),
            "- architecture: `TransitionNet` (conv 8 and 16 channels with pooling, dense 32",
            "  features per frame, LSTM with 32 hidden units, linear head)",
            f"- input: {', '.join(card.preprocessing['steps'])}",
            f"- data: {card.data['sizes']} ramps of 64 frames from seed "
            f"{card.data['generator_seed']}: half heating, half cooling; a quarter never reach",
            "  their transition",
            training_line(card, "per-frame binary cross-entropy"),
            f"- torch {card.torch_version}",
            "",
            "## Detection on the held-out test split",
            "",
            f"{everything['n_transition']} ramps with a transition ({counts}), "
            f"{everything['n_no_transition']} without. Targets: the onset flagged within 2 "
            "frames on at least 95% of ramps; false alarms on under 1% of the ramps with no "
            "transition.",
            "",
            *table,
            "",
            f"Onset temperature of the {onset['n']} ramps flagged within 2 frames: mean absolute "
            + (
                f"error {onset['mean_abs_error_K']:.2f} K, mean stated standard deviation "
                f"{onset['mean_std_K']:.2f} K ({percent(onset['coverage_1std'])} of the errors "
                "within one standard deviation). "
                if onset["n"]
                else "n/a. "
            )
            + f"Frames classified correctly as transformed or not: {percent(m['frame_accuracy'])}.",
            "",
            "**Second-order transitions** grow their superlattice lines as 1 - T/T_c: two",
            "frames past T_c the line has 0.5-3 % of its 0 K intensity, at or below the noise",
            "for most samples, and the strain is as small (the instrument page works this",
            "out). The LSTM flags "
            f"{percent(m['lstm']['second_order']['detection_within_2'])} of them within 2 frames "
            "(the large tilts, light A cations and fast ramps), misses "
            f"{percent(m['lstm']['second_order']['missed_rate'])} and flags the rest later, when",
            "the line rises out of the noise: the 95 % target is physically out of reach",
            "for them at these count rates; it holds for first-order and tricritical ones.",
            "",
            "**The baselines.** The generic change-point test, a two-sided CUSUM on the",
            "background-subtracted counts of the (3/2 1/2 1/2) superlattice line (its",
            "position read off the first frame's (110); drift "
            f"{cusum['drift']:g}, threshold {cusum['threshold']:g}, in",
            "Poisson standard deviations, tuned on the same validation split for the same",
            "false-alarm limit), flags late or never: every line weakens with temperature",
            "(Debye-Waller) and thermal expansion moves the line against its window, so the",
            "drift and threshold that keep it quiet on ramps without a transition make it",
            "slow. The instrument documentation's hand rule, which knows which line to watch",
            "and that it is present exactly in the tilted phase, does well on first-order",
            "transitions, where the line jumps; it encodes physics the LSTM had to learn from",
            "labelled ramps alone, with no line position or threshold chosen by hand.",
            "",
            "![validation curves](../figures/transition_lstm_curves.png)",
            "",
            "Check the card's claims on new ramps: `smartlab evaluate transition_lstm --n 1000`.",
            "",
        ]
    )


def micrograph_page() -> str:
    card = card_of("micrograph_unet")
    m = card.metrics
    names = card.outputs
    iou = ["| phase | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1)]
    iou.append(
        "| IoU, whole held-out frames | "
        + " | ".join(f"{m['iou'][n]:.4f}" for n in names)
        + f" | **{m['mean_iou']:.4f}** |"
    )
    crops = m["test_split"]
    iou.append(
        "| IoU, test-split crops | "
        + " | ".join(f"{crops['iou'][n]:.4f}" for n in names)
        + f" | {crops['mean_iou']:.4f} |"
    )
    iou.append(
        "| area-fraction error, mean / max (pp) | "
        + " | ".join(
            f"{m['fraction_error_pp'][n]['mean']:.2f} / {m['fraction_error_pp'][n]['max']:.2f}"
            for n in names
        )
        + f" | {m['fraction_error_pp_mean']:.2f} / {m['fraction_error_pp_max']:.2f} |"
    )
    confusion = m["confusion"]
    matrix = ["| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    matrix += [
        f"| {n} | " + " | ".join(f"{v:,}" for v in row) + " |"
        for n, row in zip(names, confusion["rows_true_columns_predicted"], strict=True)
    ]
    return "\n".join(
        [
            "# micrograph_unet: phase maps of SEM micrographs",
            "",
            "Per-pixel segmentation of each frame of the simulated SEM camera",
            "([its physics](../devices/microscopy.md)) into ferrite, spheroidite particles,",
            "grain-boundary carbide and pearlite, and the area fraction of each phase. Plugin",
            "`micrograph_unet`: field `camera_image`; results per event the array `mask` (uint8",
            "phase ids, dims `row`, `column`, published beside the frame) and the scalars",
            "`fraction_<phase>`; with the run option `uncertainty: True` also the array",
            "`uncertainty` (1 - the largest calibrated phase probability per pixel) and its",
            "per-frame mean `uncertainty_mean`.",
            "",
            "![a frame, its true and predicted phase maps, the uncertainty](../figures/"
            "micrograph_unet_example.png)",
            "",
            "*A held-out frame, the simulator's true mask, the published phase map, the pixels",
            "where they differ, and the per-pixel uncertainty.*",
            "",
            "![the live view](../figures/live_mask.png)",
            "",
            "*The live view (`LiveMask`) during a raster: the latest frame under its phase map.*",
            "",
            "## Model card",
            "",
            *weights_lines(card),
            "- architecture: `MicrographUNet`, a U-Net with three levels of 16/32/64 feature",
            "  maps (two 3x3 convolutions with batch norm and ReLU per level, max pooling down,",
            "  transposed convolutions up, skip connections) and a 1x1 head",
            f"- input: {'; '.join(card.preprocessing['steps'])}",
            f"- data: {card.data['sizes']} crops of {card.preprocessing['training_crop']} x "
            f"{card.preprocessing['training_crop']} pixels from "
            f"{card.data['generator_config']['n_structures']} simulated specimens"
            f"{resampled_specimens(card)} (generator seed "
            f"{card.data['generator_config']['specimen_seed']}, with generator_seed "
            f"{card.data['generator_seed']}); scored on {m['n']} whole {m['frame_shape'][0]} x "
            f"{m['frame_shape'][1]} frames of specimens never trained on",
            training_line(card, "per-pixel cross-entropy"),
            f"- uncertainty: temperature scaling fitted on validation pixels, T = "
            f"{card.extras['temperature']:.3f}; per-pixel expected calibration error "
            f"{m['pixel_ece']:.4f}",
            f"- torch {card.torch_version}",
            "",
            "## Accuracy on held-out frames",
            "",
            "Targets: mean IoU at least 0.90 over the phases; area fractions within 2",
            f"percentage points of the truth. Pixel accuracy {percent(m['pixel_accuracy'])}.",
            "",
            *iou,
            "",
            "Confusion matrix (pixels) on the held-out frames:",
            "",
            *matrix,
            "",
            "**Frames of any size.** The network is fully convolutional: a frame is",
            "reflect-padded to a multiple of 4; one larger than 512 pixels on a side is cut",
            "into 512-pixel tiles, each run with 32 pixels of context (more than the",
            "network's receptive radius), so the memory a pass needs is bounded whatever the",
            "frame size and the tiled answer equals the whole-frame one (a test checks a",
            "1024 x 1024 frame: 4 passes, masks equal on more than 99.99% of pixels).",
            "",
            *micrograph_scope(card),
            "",
            "![validation curves](../figures/micrograph_unet_curves.png)",
            "",
            "Check the card's claims on new frames: `smartlab evaluate micrograph_unet --n 32`.",
            "",
        ]
    )


def resampled_specimens(card) -> str:
    """The specimens imaged at other pixel sizes for the training crops, if any."""
    sizes = card.data["generator_config"].get("resampled_pixel_sizes_um")
    return (
        f" at 0.05 µm and {len(sizes)} more at other pixel sizes (see the scope)" if sizes else ""
    )


def resampled_share(card) -> str:
    """Which share of the training crops was imaged at other pixel sizes and resampled."""
    generator = card.data["generator_config"]
    sizes = generator.get("resampled_pixel_sizes_um")
    if not sizes:
        return ""
    return (
        f" ({100 * generator['resampled_share']:.0f}% of the crops from specimens imaged at "
        f"{', '.join(f'{v:g}' for v in sizes)} µm and resampled to it, as the plugin resamples)"
    )


def micrograph_scope(card) -> list[str]:
    """The scope the card states and the robustness scores its training measured."""
    scope = card.preprocessing["scope"]
    names = card.outputs
    lines = [
        "## Scope: what the training covered",
        "",
        "Phases by morphology: "
        + "; ".join(f"`{name}` {text}" for name, text in scope["phases"].items())
        + f". Lamella spacing {scope['lamella_spacing_um']} µm, film thickness "
        f"{scope['gb_thickness_um']} µm. Brightness is no cue: per frame, ferrite SE yield in "
        f"{scope['ferrite_level']}, cementite {scope['cementite_contrast']} times brighter, "
        f"particles, films and lamellae each that times 1 ± {scope['carbide_spread']}; "
        f"detector gain {scope['detector_gain']}, offset {scope['detector_offset']}, gamma "
        f"{scope['detector_gamma']}; dose {scope['dose_electrons_per_pixel']:g} electrons per "
        f"pixel. Pixel size: trained at {scope['pixel_size_um']['trained']} µm"
        + resampled_share(card)
        + "; a frame whose "
        "data key declares another (`pixel_size`, `pixel_size_units`) from "
        f"{scope['pixel_size_um']['accepted'][0]:g} to {scope['pixel_size_um']['accepted'][1]:g} "
        "µm is resampled, one outside is refused for its event; without a declaration the "
        "plugin assumes the training pixel size and logs so once per run. A frame with no "
        "contrast (blank, constant, saturated) is refused for its event.",
        "",
    ]
    robustness = card.metrics.get("robustness")
    if not robustness:
        return lines
    table = [
        "| condition | " + " | ".join(names) + " | mean |",
        "|---|" + "---|" * (len(names) + 1),
    ]

    def row(label: str, scores: dict) -> str:
        return (
            f"| {label} | "
            + " | ".join(
                f"{scores['iou'][n]:.3f}" if scores["iou"][n] is not None else "-" for n in names
            )
            + f" | {scores['mean_iou']:.3f} |"
        )

    shifted = robustness["detector_shifted"]
    gain, offset, gamma = shifted["gain_offset_gamma"]
    table.append(row(f"detector gain {gain}, offset {offset}, gamma {gamma}", shifted))
    for key in (
        "old_simulator_levels",
        "particles_brighter_than_films",
        "films_brighter_than_particles",
    ):
        table.append(row(f"{key.replace('_', ' ')} {robustness[key]['levels']}", robustness[key]))
    for size, scores in robustness["pixel_size_um"].items():
        table.append(row(f"pixel size {size} µm (resampled)", scores))
    return [
        *lines,
        f"IoU on {robustness['frames_per_condition']} whole frames of a held-out specimen per "
        "condition, measured by the training run (`robustness_metrics`). Under the changed "
        f"detector {100 * shifted['same_phase_as_unshifted']:.2f}% of the pixels keep their "
        "phase: rank normalisation undoes any increasing grey-level map.",
        "",
        *table,
        "",
        "For comparison, version 1.0.0 (fixed affine input, trained with films at 0.90 and",
        "particles at 0.65 in every frame) scored on 8-16 frames of these conditions: mean IoU",
        "0.44 on frames of this generator (spheroidite 0.08), 0.07 after the detector change,",
        "0.58 with particles brighter than films (gb_carbide 0.00), and 0.36-0.51 at pixel",
        "sizes 0.03-0.1 µm, which it segmented as if they were 0.05 µm.",
        "",
        "Not measured: real micrographs, other steels' morphologies (bainite, martensite),",
        "pearlite finer than 0.2 µm (unresolved at 0.05 µm per pixel), charging and drift.",
    ]


def micrograph_figure() -> None:
    """A held-out frame, its true and predicted masks, where they differ, and the uncertainty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from smartlab_plugins.models import segmentation
    from smartlab_plugins.models.store import load_model

    model = load_model("micrograph_unet", device="cpu")
    frames = segmentation.held_out_frames(1, seed=5000, n_specimens=1)
    image, truth = frames.inputs["images"][:1], frames.labels["masks"][:1]
    result = segmentation.segment(
        model.net, image, temperature=model.card.extras["temperature"], uncertainty=True
    )
    colours = ListedColormap(["#f0e6c8", "#3b6fb6", "#c0392b", "#6a9f3a"])
    panels = [
        ("SEM frame", image[0], "gray", None),
        ("true phases", truth[0], colours, (0, 3)),
        ("phase map (published)", result.mask[0], colours, (0, 3)),
        ("differs from the truth", (result.mask[0] != truth[0]).astype(float), "Greys", (0, 1)),
        ("uncertainty", result.uncertainty[0], "magma", (0, 0.5)),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 3.4), dpi=90)
    for ax, (title, data, cmap, limits) in zip(axes, panels, strict=True):
        shown = ax.imshow(
            data,
            cmap=cmap,
            interpolation="nearest",
            **dict(zip(("vmin", "vmax"), limits, strict=True)) if limits else {},
        )
        ax.set(title=title, xticks=[], yticks=[])
        if title == "uncertainty":
            fig.colorbar(shown, ax=ax, fraction=0.046)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colours(k))
        for k in range(len(segmentation.phase_names()))
    ]
    fig.legend(handles, segmentation.phase_names(), loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(FIGURES / "micrograph_unet_example.png")
    plt.close(fig)


def accuracy_figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card = card_of("phase_cnn")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    curves = [("CNN", card.metrics)]
    baselines = baseline_card("phase_baselines")
    if baselines:
        curves += [(k.upper(), b["metrics"]) for k, b in baselines["models"].items()]
    panels = (
        ("accuracy_by_composition_margin", "composition margin (Ti fraction)", 0.2),
        ("accuracy_by_curie_margin", "|T - T_C(x)| (K)", 300.0),
    )
    for ax, (key, label, last) in zip(axes, panels, strict=True):
        for name, metrics in curves:
            curve = metrics.get(key, [])
            centres = [np.mean(b["margin"]) if b["margin"][1] is not None else last for b in curve]
            ax.plot(centres, [b["accuracy"] for b in curve], marker="o", label=name)
        ax.set(xlabel=f"{label} (bin centre; last bin open)", ylabel="test accuracy")
        ax.set_xscale("symlog", linthresh=0.01 if last < 1 else 10)
    axes[0].legend()
    fig.suptitle("phase classification near the boundaries")
    fig.tight_layout()
    fig.savefig(FIGURES / "phase_cnn_accuracy.png")
    plt.close(fig)


def transfer_experiment() -> list[tuple[str, dict]]:
    """On a shifted instrument: shipped, trained from scratch on 50 maps, fine-tuned on them."""
    import tempfile

    from smartlab_plugins.cases import simulate_case
    from smartlab_plugins.devices.ins import SpinWaveConfig
    from smartlab_plugins.models.finetune import FINETUNE_CONFIG, finetune, score
    from smartlab_plugins.models.nets import build
    from smartlab_plugins.models.spinwave import SpinWaveTask
    from smartlab_plugins.models.training import TrainingConfig, fit, predict, split_by_seed

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


def ood_section(name: str) -> str:
    """The page's last section: the model's out-of-distribution flag against each shift (card)."""
    entry = card_of(name).extras.get("ood", {})
    evaluation = entry.get("evaluation")
    if not evaluation:
        return ""
    shifts = evaluation["shifts"]
    scored = {k: v for k, v in shifts.items() if "ood" in v}
    told = [f"`{k}`" for k, v in scored.items() if v["ood"]["auroc"] >= 0.95]
    missed = [
        f"`{k}` ({v['ood']['auroc']:.2f})" for k, v in scored.items() if v["ood"]["auroc"] < 0.95
    ]
    refused = [f"`{k}`" for k, v in shifts.items() if "refused" in v]
    flagged = next(iter(scored.values()))["ood"]["flagged_in_distribution_set"] if scored else None
    lines = [
        "",
        "## When not to trust it",
        "",
        "Each event also gets `ood_score` and `in_distribution` (0: unlike the training data).",
        f"On {evaluation['n']} new in-distribution inputs "
        + (f"{100 * flagged:.1f} % were flagged. " if flagged is not None else "")
        + "Told apart at OOD AUROC >= 0.95: "
        + (", ".join(told) or "none")
        + ". Not: "
        + (", ".join(missed) or "none")
        + "."
        + (f" Refused before the network: {', '.join(refused)}." if refused else ""),
        f"The table, with the honesty of the uncertainties on each shift: [ood.md](ood.md#{name}).",
        "",
    ]
    return "\n".join(lines)


PAGES = ("spinwave_cnn", "phase_cnn", "transition_lstm", "micrograph_unet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-transfer", action="store_true")
    parser.add_argument(
        "--pages", nargs="+", choices=PAGES, default=PAGES, help="pages to write (default: all)"
    )
    args = parser.parse_args()
    MODELS.mkdir(parents=True, exist_ok=True)
    if "spinwave_cnn" in args.pages:
        transfer = None if args.skip_transfer else transfer_experiment()
        (MODELS / "spinwave_cnn.md").write_text(
            spinwave_page(transfer) + ood_section("spinwave_cnn")
        )
    if "phase_cnn" in args.pages:
        accuracy_figure()
        (MODELS / "phase_cnn.md").write_text(phase_page() + ood_section("phase_cnn"))
    if "transition_lstm" in args.pages:
        (MODELS / "transition_lstm.md").write_text(
            transition_page() + ood_section("transition_lstm")
        )
    if "micrograph_unet" in args.pages:
        micrograph_figure()
        (MODELS / "micrograph_unet.md").write_text(
            micrograph_page() + ood_section("micrograph_unet")
        )
    print(f"wrote {', '.join(f'{page}.md' for page in args.pages)} in {MODELS}")


if __name__ == "__main__":
    main()
