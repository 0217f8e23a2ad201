"""``transition_lstm``: online detection of a structural transition during a temperature ramp.

The data are the operando powder patterns of :mod:`smartlab_plugins.devices.operando`:
one 512-channel pattern per frame of a heating or cooling ramp. The network
reads a ramp **one frame at a time, causally**: a small 1-D convolutional
encoder reduces each preprocessed frame (the peaks above a smooth background in
Poisson standard deviations, asinh-compressed, 4-channel means: :func:`preprocess`)
to 32 features ``f_t``; an LSTM reads ``[f_t, f_t - f_0]`` (the frame
and its change since the run's first frame) and a linear head gives the logit
of ``p_transition``, the probability that the sample has left the phase it
started in. The network, :class:`~smartlab_plugins.models.nets.TransitionNet`
(in ``nets`` with the others, so a card rebuilds it anywhere), takes whole
ramps in ``forward`` (training) and one frame and the carried state in
``step`` (the live plugin); both give the same numbers.

The flag rule (:func:`first_flags`) raises the flag at the first frame where
``p_transition >= threshold`` for ``consecutive`` frames in a row; the
threshold and ``consecutive`` are tuned on the validation split
(:meth:`TransitionTask.calibrate`) for the most onsets flagged within 2 frames
with at most :data:`MAX_FALSE_ALARM` of the no-transition ramps flagged. The
onset temperature is interpolated where ``p_transition`` crossed 0.5 between
the last frame below the threshold and the first one above it
(:func:`onset_temperature`); its standard deviation is the RMS error of that
estimate on the validation split, in units of the temperature step between
those two frames, times that step.

Two non-learning baselines read the background-subtracted counts of the
(3/2 1/2 1/2) superlattice line in Poisson standard deviations
(:func:`superlattice_z`): a two-sided CUSUM against the mean of the first
frames, its drift and threshold tuned on the same validation split
(:func:`cusum_flags`, the generic change-point test), and the instrument
documentation's hand rule that knows the physics: the line is there in the
tilted phase and gone in the cubic one (:func:`presence_flags`). The hand rule
finds the line from the first frame's (110) (:func:`superlattice_position`).

The training ramps are the instrument's whole family
(:class:`~smartlab_plugins.devices.operando.OperandoConfig`): seven perovskites,
two tilt systems, first-order, tricritical and second-order transitions, 2-8 K/min;
the metrics are given per direction and per transition type (:func:`by_group`).
A blank frame (every channel the same count) is not a pattern: the plugin
leaves it out (:func:`is_blank`).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import minimum_filter1d, uniform_filter1d
from torch import nn

from smartlab_plugins.devices.dataset import SimulatedSet
from smartlab_plugins.models import runtime
from smartlab_plugins.models.nets import State
from smartlab_plugins.models.training import Split

if TYPE_CHECKING:
    from smartlab_plugins.models.store import LoadedModel

NAME = "transition_lstm"
VERSION = "1.1.0"
FIELD_SHAPE = (512,)
POOL = 4  # channels averaged per network input point (0.31 deg)
ENVELOPE = 41  # channels of the background's lower envelope (3.2 deg)
ASINH_SCALE = 3.0  # asinh of the noise units, divided by this: the strongest lines at ~3
INPUT_POINTS = FIELD_SHAPE[0] // POOL
WITHIN_FRAMES = 2  # an onset flagged within this many frames counts as detected
MAX_FALSE_ALARM = 0.005  # largest fraction of no-transition validation ramps the rule may flag
THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))
CONSECUTIVE = (1, 2, 3)
CUSUM_REFERENCE_FRAMES = 3
CUSUM_DRIFTS = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
CUSUM_THRESHOLDS = tuple(5.0 * 2.0**k for k in range(11))  # 5 ... 5120
CHUNK = 500  # ramps preprocessed at a time
PRESENCE_Z = 8.0  # the superlattice line counts as present above this z
PARENT_SEARCH = (
    28.0,
    36.0,
)  # degrees 2theta: where the strongest line, (110), lies for a perovskite
SUPERLATTICE_WINDOW = (-0.35, 0.45)  # degrees about the (3/2 1/2 1/2) line: K-alpha1 and 2
SUPERLATTICE_SIDES = ((-1.3, -0.7), (0.65, 0.95))  # background either side, short of (111)
WAVELENGTH = 1.54056  # angstrom, Cu K-alpha1: the line positions of the hand rule


def background(frames: np.ndarray) -> np.ndarray:
    """Smooth lower envelope of each pattern (..., 512): the background under the peaks, counts.

    A 5-channel mean (less noise), the minimum over :data:`ENVELOPE` channels
    (wider than any cluster of split peaks and their K-alpha2), then a mean over
    as many: it sits about one Poisson standard deviation under the true
    background, the same everywhere, which the network takes as an offset.
    """
    smooth = uniform_filter1d(frames, 5, axis=-1, mode="nearest")
    lowest = minimum_filter1d(smooth, ENVELOPE, axis=-1, mode="nearest")
    return uniform_filter1d(lowest, ENVELOPE, axis=-1, mode="nearest")


def preprocess(frames: np.ndarray) -> np.ndarray:
    """Patterns (..., 512) counts to network input (..., 128): the peaks in noise units.

    ``asinh((counts - b) / sqrt(b + 1)) / 3`` with ``b`` the :func:`background`,
    then the mean of each 4 channels (0.31 deg: a line, FWHM >= 0.2 deg, falls in one
    or two input points; the (3/2 1/2 1/2) line and the parent (111) are 1.7 deg
    apart). In Poisson standard deviations a superlattice line at 0.1 % of the
    strongest line is as plain as it is to a person looking for it (a few units),
    while asinh, logarithmic for large values, brings the strongest lines
    (thousands of standard deviations) down to about 3; the counting time, the sample amount and
    the material's scattering power change the scale of the peaks, not where
    the noise lies.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.shape[-1:] != FIELD_SHAPE:
        raise ValueError(f"expected patterns of {FIELD_SHAPE[0]} channels, got {frames.shape}")
    frames = np.clip(frames, 0.0, None)
    level = np.clip(background(frames), 0.0, None)
    x = np.arcsinh((frames - level) / np.sqrt(level + 1.0)) / ASINH_SCALE
    return x.reshape(*x.shape[:-1], INPUT_POINTS, POOL).mean(axis=-1).astype(np.float32)


BLANK_NOTE = "blank pattern (every channel the same count): no diffraction, not analysed"


def is_blank(pattern: np.ndarray) -> bool:
    """Whether a pattern carries no diffraction at all: every channel holds the same count.

    Such a frame (a closed shutter, a detector reading zeros) would come out
    of :func:`preprocess` as all zeros, an input the model never saw; the
    plugin leaves it out instead of stepping the LSTM on it.
    """
    pattern = np.asarray(pattern)
    return bool(pattern.size == 0 or np.ptp(pattern) == 0)


def probabilities(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """``p_transition`` from logits."""
    return torch.sigmoid(torch.as_tensor(logits).float()).numpy()


def first_flags(p: np.ndarray, threshold: float, consecutive: int) -> np.ndarray:
    """Frame index of the flag per ramp (-1: never): ``consecutive`` frames at p >= threshold."""
    above = np.asarray(p) >= threshold
    run = np.zeros(above.shape[0], dtype=int)
    flagged = np.full(above.shape[0], -1)
    for t in range(above.shape[1]):
        run = np.where(above[:, t], run + 1, 0)
        flagged = np.where((flagged < 0) & (run >= consecutive), t, flagged)
    return flagged


def onset_temperature(p_before: float, p_at: float, t_before: float, t_at: float) -> float:
    """Temperature where p crossed 0.5 between two frames, linearly interpolated.

    Clipped to the two frames: ``t_at`` if p never reached 0.5 or did not
    rise, ``t_before`` if it was already above.
    """
    p_before, p_at, t_before, t_at = map(float, (p_before, p_at, t_before, t_at))
    if not p_at > p_before:
        return t_at
    fraction = min(max((0.5 - p_before) / (p_at - p_before), 0.0), 1.0)
    return t_before + fraction * (t_at - t_before)


def onset_estimates(
    p: np.ndarray, temperatures: np.ndarray, flagged: np.ndarray, consecutive: int
) -> tuple[np.ndarray, np.ndarray]:
    """Onset temperature per flagged ramp (NaN if none) and the temperature step it lies in."""
    estimate = np.full(len(p), np.nan)
    step = np.full(len(p), np.nan)
    for i in np.flatnonzero(flagged >= 0):
        first = flagged[i] - consecutive + 1
        if first == 0:  # no frame before the flag's run: no step to interpolate in
            estimate[i] = temperatures[i, 0]
            continue
        estimate[i] = onset_temperature(
            p[i, first - 1], p[i, first], temperatures[i, first - 1], temperatures[i, first]
        )
        step[i] = abs(float(temperatures[i, first]) - float(temperatures[i, first - 1]))
    return estimate, step


@dataclass
class Onset:
    """A raised flag: the onset temperature (K) and its standard deviation."""

    temperature: float
    std: float


@dataclass
class FlagRule:
    """The flag rule of :func:`first_flags`, applied one frame at a time, raising at most once.

    Keeps ``p`` and the temperature of the last ``consecutive + 1`` frames, so
    the onset can be interpolated between the last frame below the threshold
    and the first above it (:func:`onset_temperature`, as
    :func:`onset_estimates` does for whole ramps). The standard deviation is
    ``onset_std_steps`` times the temperature step between those frames (NaN
    when the first frame of the run already raised it: no step to scale).
    """

    threshold: float
    consecutive: int
    onset_std_steps: float
    above: int = 0
    raised: bool = False
    recent: list[tuple[float, float]] = field(default_factory=list)

    def update(self, p: float, temperature: float) -> Onset | None:
        """Take one frame's ``p_transition``; the onset if this frame raises the flag."""
        self.recent = [*self.recent, (p, temperature)][-(self.consecutive + 1) :]
        self.above = self.above + 1 if p >= self.threshold else 0
        if self.raised or self.above < self.consecutive:
            return None
        self.raised = True
        if len(self.recent) <= self.consecutive:
            return Onset(self.recent[0][1], float("nan"))
        (p_before, t_before), (p_at, t_at) = self.recent[0], self.recent[1]
        step = abs(t_at - t_before)
        return Onset(onset_temperature(p_before, p_at, t_before, t_at), self.onset_std_steps * step)


def step_frame(model: LoadedModel, pattern: np.ndarray, state: State | None) -> tuple[float, State]:
    """``p_transition`` of one pattern (512,) and the state to carry, on the model's device.

    Through the inference runtime, as :meth:`LoadedModel.run`: on CUDA the
    encoder runs under bfloat16 autocast and the recurrence in float32 (see
    :class:`~smartlab_plugins.models.nets.TransitionNet`); the state stays on the device.
    """
    x = runtime.to_device(preprocess(pattern[None]), model.device)
    with runtime.inference(model.device):
        logit, state = model.net.step(x, state)
    return float(torch.sigmoid(logit.float())[0]), state


def superlattice_position(pattern: np.ndarray, two_theta: np.ndarray) -> float:
    """2theta (deg) of the (3/2 1/2 1/2) superlattice line of the perovskite in ``pattern``.

    The hand rule's lattice: the strongest line between 28 and 36 deg is the
    pseudo-cubic (110) (for any ABO3 of the operando family), so
    ``a = sqrt(2) d_110`` and ``d = 2a / sqrt(11)`` for the first superlattice
    line a tilt can make ((1/2 1/2 1/2) has ``F = 0`` for every tilt system).
    """
    search = (two_theta > PARENT_SEARCH[0]) & (two_theta < PARENT_SEARCH[1])
    peak = two_theta[search][np.argmax(np.asarray(pattern)[search])]
    a = np.sqrt(2.0) * WAVELENGTH / (2.0 * np.sin(np.radians(peak / 2.0)))
    return float(2.0 * np.degrees(np.arcsin(WAVELENGTH * np.sqrt(11.0) / (4.0 * a))))


def superlattice_z(patterns: np.ndarray, two_theta: np.ndarray) -> np.ndarray:
    """Background-subtracted counts of the (3/2 1/2 1/2) line in Poisson standard deviations.

    ``patterns`` (ramps, frames, channels); the line's position is read off
    each ramp's first frame (:func:`superlattice_position`), as a person
    would set the window before the ramp goes on.
    """
    patterns = np.asarray(patterns)
    z = np.zeros(patterns.shape[:2], dtype=np.float32)
    for i, ramp in enumerate(patterns):
        offset = two_theta - superlattice_position(ramp[0], two_theta)
        window = (offset > SUPERLATTICE_WINDOW[0]) & (offset < SUPERLATTICE_WINDOW[1])
        sides = np.zeros_like(window)
        for low, high in SUPERLATTICE_SIDES:
            sides |= (offset > low) & (offset < high)
        total = ramp[:, window].sum(-1, dtype=np.float64)
        excess = total - ramp[:, sides].mean(-1, dtype=np.float64) * window.sum()
        z[i] = excess / np.sqrt(np.maximum(total, 1.0))
    return z


def cusum_flags(z: np.ndarray, drift: float, threshold: float) -> np.ndarray:
    """Frame index of a two-sided CUSUM alarm per ramp (-1: none) on the feature ``z``.

    The reference is the mean of the first :data:`CUSUM_REFERENCE_FRAMES`
    frames; each frame adds its deviation beyond ``drift`` (in the feature's
    units, Poisson standard deviations) to an upward and a downward sum, and
    the alarm sounds when either exceeds ``threshold``.
    """
    z = np.asarray(z, dtype=np.float64)
    reference = z[:, :CUSUM_REFERENCE_FRAMES].mean(axis=1)
    up = np.zeros(len(z))
    down = np.zeros(len(z))
    flagged = np.full(len(z), -1)
    for t in range(CUSUM_REFERENCE_FRAMES, z.shape[1]):
        deviation = z[:, t] - reference
        up = np.maximum(0.0, up + deviation - drift)
        down = np.maximum(0.0, down - deviation - drift)
        flagged = np.where((flagged < 0) & ((up > threshold) | (down > threshold)), t, flagged)
    return flagged


def presence_flags(z: np.ndarray, level: float = PRESENCE_Z) -> np.ndarray:
    """Frame index per ramp (-1: none) where the superlattice line's presence first changes.

    The physics-aware hand rule of the instrument's documentation: the line
    is present (ordered phase) where ``z > level``; the flag is the first
    frame whose presence differs from the run's first frame.
    """
    present = np.asarray(z) > level
    changed = present != present[:, :1]
    return np.where(changed.any(axis=1), changed.argmax(axis=1), -1)


def detection_metrics(flagged: np.ndarray, onset: np.ndarray) -> dict[str, Any]:
    """Detection within :data:`WITHIN_FRAMES`, false alarms and frame errors of flags vs onsets."""
    crossing, quiet = onset >= 0, onset < 0
    error = (flagged - onset)[crossing & (flagged >= 0)]
    detected = crossing & (flagged >= 0) & (np.abs(flagged - onset) <= WITHIN_FRAMES)
    early = crossing & (flagged >= 0) & (flagged < onset - WITHIN_FRAMES)
    return {
        "n_transition": int(crossing.sum()),
        "n_no_transition": int(quiet.sum()),
        "detection_within_2": float(detected[crossing].mean()) if crossing.any() else None,
        "false_alarm_rate": float((flagged[quiet] >= 0).mean()) if quiet.any() else None,
        "early_flag_rate": float(early[crossing].mean()) if crossing.any() else None,
        "missed_rate": float((flagged[crossing] < 0).mean()) if crossing.any() else None,
        "mean_abs_frame_error": float(np.abs(error).mean()) if error.size else None,
        "frame_error_counts": {str(k): int((error == k).sum()) for k in np.unique(error)},
    }


def by_group(
    flagged: np.ndarray, onset: np.ndarray, direction: np.ndarray, kind: np.ndarray
) -> dict[str, dict[str, Any]]:
    """:func:`detection_metrics` for all ramps, by direction and by transition type.

    ``kind`` indexes :data:`~smartlab_plugins.devices.operando.KINDS`; a
    type's false-alarm rate is over the no-transition ramps of that type's
    samples (their transition lay outside the ramp).
    """
    from smartlab_plugins.devices.operando import KINDS

    groups = [
        ("all", np.ones(len(onset), dtype=bool)),
        ("heating", direction > 0),
        ("cooling", direction < 0),
        *((name, kind == index) for index, name in enumerate(KINDS)),
    ]
    return {name: detection_metrics(flagged[chosen], onset[chosen]) for name, chosen in groups}


def tune_rule(
    flags_for: Any, candidates: list[tuple[Any, ...]], onset: np.ndarray, prefer: Any
) -> tuple[Any, ...]:
    """The candidate whose flags detect most onsets with at most MAX_FALSE_ALARM false alarms.

    ``flags_for(candidate)`` gives flags per ramp; among equally good
    candidates the one ranked first by ``prefer`` (a sort key) wins.
    """
    scored = []
    for candidate in candidates:
        metrics = detection_metrics(flags_for(candidate), onset)
        false_alarm = metrics["false_alarm_rate"] or 0.0
        detected = metrics["detection_within_2"] or 0.0
        scored.append((false_alarm > MAX_FALSE_ALARM, -detected, false_alarm, prefer(candidate)))
    best = min(range(len(candidates)), key=lambda i: scored[i])
    return candidates[best]


def scope(config: Any) -> dict[str, Any]:
    """What the model was trained on, for its card: materials, transitions, temperatures, ramps."""
    return {
        "materials": list(config.materials),
        "tilt_systems": list(config.tilt_systems),
        "transition_types": dict(
            zip(("first_order", "tricritical", "second_order"), config.kind_fractions, strict=True)
        ),
        "t_c_K": list(config.tc_range),
        "first_order_hysteresis_K": list(config.hysteresis_range),
        "first_order_coexistence_sigma_K": list(config.coexistence_range),
        "tilt_at_0K_deg": list(config.tilt_range),
        "ramp_rate_K_per_min": list(config.ramp_rate_range),
        "temperature_limits_K": list(config.temperature_limits),
        "wavelengths_angstrom": [config.wavelength, config.wavelength_ka2],
        "frame_time_s": config.frame_time,
        "two_theta_deg": list(config.two_theta_range),
    }


def training_config():
    """The generator config of the training set: the instrument's defaults."""
    from smartlab_plugins.devices.operando import OperandoConfig

    return OperandoConfig()


class TransitionTask:
    """Training and scoring of ``transition_lstm`` (see :mod:`smartlab_plugins.models.training`)."""

    name = NAME
    version = VERSION
    kind = "classification"  # per frame: transformed or not
    case = "operando"
    input_field_shape = FIELD_SHAPE

    def __init__(self) -> None:
        self.outputs = ["p_transition"]

    def generator_config(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(training_config()).items()
        }

    def make_data(self, n: int, seed: int) -> Split:
        from smartlab_plugins.cases import simulate_case

        made = simulate_case("operando", n, seed=seed, config=training_config(), progress=False)
        return self.from_set(made)

    def from_set(self, made: SimulatedSet) -> Split:
        """Preprocessed ramps, per-frame ``transformed`` targets, and what the metrics need."""
        labels = made.labels
        branch = np.where(labels["direction"] > 0, labels["t_up"], labels["t_down"])
        patterns = made.inputs["patterns"]
        x = np.concatenate(  # in chunks: the float temporaries of a whole set would be large
            [preprocess(patterns[i : i + CHUNK]) for i in range(0, len(patterns), CHUNK)]
        )
        return Split(
            x,
            labels["transformed"].astype(np.float32),
            {
                "onset": labels["onset"].astype(np.int64),
                "direction": labels["direction"].astype(np.int64),
                "temperatures": made.inputs["temperatures"].astype(np.float32),
                "transition_temperature": np.where(labels["onset"] >= 0, branch, np.nan).astype(
                    np.float32
                ),
                "kind": labels["kind"].astype(np.int64),
                "superlattice_z": superlattice_z(patterns, made.coords["two_theta"]),
            },
        )

    def architecture(self) -> dict[str, Any]:
        return {
            "class": "TransitionNet",
            "params": {"points": INPUT_POINTS, "channels": 8, "features": 32, "hidden": 32},
        }

    def preprocessing(self) -> dict[str, Any]:
        return {
            "steps": [
                f"background b: 5-channel mean, {ENVELOPE}-channel minimum, "
                f"{ENVELOPE}-channel mean",
                f"asinh((counts - b) / sqrt(b + 1)) / {ASINH_SCALE:g}",
                f"mean over {POOL}-channel bins -> {INPUT_POINTS} points",
            ],
            "sequence": "one frame per event, causal; LSTM input [f_t, f_t - f_0]",
            "target": "transformed: the sample has left the phase it started the run in",
            "blank_frames": "a frame with every channel the same count is not analysed",
            "scope": scope(training_config()),
        }

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-frame binary cross-entropy."""
        return F.binary_cross_entropy_with_logits(output.float(), target.float())

    def selection_score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(output, target)

    def calibrate(self, net: nn.Module, validation: Split) -> dict[str, Any]:
        """Tune the flag rule, the onset uncertainty and the CUSUM baseline on ``validation``."""
        from smartlab_plugins.models.training import predict

        p = probabilities(predict(net, validation.x))
        extra = validation.extra
        onset = extra["onset"]
        threshold, consecutive = tune_rule(
            lambda c: first_flags(p, *c),
            list(itertools.product(THRESHOLDS, CONSECUTIVE)),
            onset,
            prefer=lambda c: (c[1], abs(c[0] - 0.5)),
        )
        drift, cusum_threshold = tune_rule(
            lambda c: cusum_flags(extra["superlattice_z"], *c),
            list(itertools.product(CUSUM_DRIFTS, CUSUM_THRESHOLDS)),
            onset,
            prefer=lambda c: (c[1], c[0]),
        )
        flagged = first_flags(p, threshold, consecutive)
        estimate, step = onset_estimates(p, extra["temperatures"], flagged, consecutive)
        # the onset's uncertainty where the flag is the onset's (within WITHIN_FRAMES): a
        # late flag (a second-order line still in the noise) is a miss, not a wide onset
        detected = (onset >= 0) & (flagged >= 0) & (np.abs(flagged - onset) <= WITHIN_FRAMES)
        residual = (estimate - extra["transition_temperature"]) / step
        residual = residual[detected & np.isfinite(residual)]
        return {
            "threshold": float(threshold),
            "consecutive": int(consecutive),
            "max_false_alarm": MAX_FALSE_ALARM,
            "onset_std_steps": float(np.sqrt(np.mean(residual**2))) if residual.size else 0.5,
            "cusum": {
                "drift": float(drift),
                "threshold": float(cusum_threshold),
                "reference_frames": CUSUM_REFERENCE_FRAMES,
            },
        }

    def evaluate(
        self, output: torch.Tensor, split: Split, calibration: dict[str, Any]
    ) -> dict[str, Any]:
        """Detection, false alarms and onset temperatures by direction; the CUSUM beside them."""
        p = probabilities(output)
        extra = split.extra
        onset, direction, kind = extra["onset"], extra["direction"], extra["kind"]
        threshold, consecutive = calibration["threshold"], calibration["consecutive"]
        flagged = first_flags(p, threshold, consecutive)
        estimate, step = onset_estimates(p, extra["temperatures"], flagged, consecutive)
        error = estimate - extra["transition_temperature"]
        std = calibration["onset_std_steps"] * step
        detected = (onset >= 0) & (flagged >= 0) & (np.abs(flagged - onset) <= WITHIN_FRAMES)
        cusum = calibration["cusum"]
        cusum_flagged = cusum_flags(extra["superlattice_z"], cusum["drift"], cusum["threshold"])
        return {
            "lstm": by_group(flagged, onset, direction, kind),
            "cusum": by_group(cusum_flagged, onset, direction, kind),
            "presence_rule": by_group(
                presence_flags(extra["superlattice_z"]), onset, direction, kind
            ),
            "onset_temperature": {
                "n": int(detected.sum()),
                "mean_abs_error_K": float(np.abs(error[detected]).mean())
                if detected.any()
                else None,
                "mean_std_K": float(std[detected].mean()) if detected.any() else None,
                "coverage_1std": float((np.abs(error[detected]) <= std[detected]).mean())
                if detected.any()
                else None,
            },
            "frame_accuracy": float(((p >= 0.5) == (split.y >= 0.5)).mean()),
            "n": len(onset),
        }
