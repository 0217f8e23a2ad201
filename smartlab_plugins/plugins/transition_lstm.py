"""``transition_lstm``: a structural transition flagged live, frame by frame, on a ramp.

Reads the ``operando_pattern`` field (512-channel powder patterns, one per
event) and the frame's temperature from the same event (``operando_temperature``,
else the controller's ``temperature``; the ``temperature_field`` option names
another). The LSTM of :mod:`smartlab_plugins.models.transition` steps once per
event, in ``seq_num`` order, carrying its hidden state in ``run.state``.
Published per event:

``p_transition``
    probability that the sample has left the phase it started the run in;
``flag``
    1 at the one event where the flag rule of the model card (``p_transition``
    at or above the tuned threshold for the tuned number of consecutive frames)
    is first met, else 0;
``onset_temperature``, ``onset_temperature_std``
    at the flagged event only (NaN elsewhere): where ``p_transition`` crossed
    0.5 between the last frame below the threshold and the first above it, and
    its standard deviation (the validation RMS error in temperature steps, times
    that step), in the unit of ``operando_temperature`` (K for the simulated stage;
    the analysis' ``units`` metadata says which);
``note``
    empty, or why this event is special (events missing before it, no temperature,
    a blank pattern);
``ood_score``, ``in_distribution``
    how unlike the training frames this frame looks, and 0 if too unlike to trust
    ``p_transition`` (``inf`` and 0 for a blank pattern; see
    :mod:`smartlab_plugins.models.ood`).

The run's summary says where the flag was raised and the onset temperature,
or ``"no transition seen"``.

Bad input never stops the scan; each case is recorded against its events:

* an event whose ``seq_num`` is not above the last one analysed (out of order,
  or repeated) is refused with an error naming both; the detector's state is
  unchanged;
* a gap in ``seq_num`` (events missing, dropped, or refused for NaN values) is
  carried over: the LSTM steps on from the last frame it saw, the event after
  the gap says so in ``note`` and a warning is logged; the summary counts them;
* a pattern of another length is refused with an error naming the expected and
  the actual shape, unless the run sets ``resample: True``, which interpolates
  it onto 512 channels (same 2theta range, other binning);
* a blank pattern (every channel the same count, e.g. all zero: a closed
  shutter, a detector not counting) carries no diffraction: it is not fed to the
  LSTM (its per-frame standardisation would turn it into a pattern the model
  never saw); its row has ``p_transition`` NaN, ``flag`` 0 and says so in
  ``note``, and the summary counts such frames in ``blank_frames``.

Options (per run, ``RE(plan, smartlab={"options": {"transition_lstm": {...}}})``):
``resample`` (bool) and ``temperature_field`` (str).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smartlab_plugins.hookspecs import (
    DataSpec,
    EventBatch,
    PluginInfo,
    Results,
    RunContext,
    hookimpl,
)
from smartlab_plugins.models import runtime, transition
from smartlab_plugins.models.inference import OOD_UNITS, model_input, ood_flags
from smartlab_plugins.models.store import LoadedModel, model_info, shared_model

logger = logging.getLogger(__name__)

NAME = transition.NAME
FIELD = "operando_pattern"
TEMPERATURE_FIELDS = ("operando_temperature", "temperature")
#: The onset is interpolated between the events' temperatures: it has their unit.
UNITS = {
    "p_transition": "",
    "flag": "",
    "onset_temperature": "{operando_temperature}",
    "onset_temperature_std": "{operando_temperature}",
    **OOD_UNITS,
}
NO_TRANSITION = "no transition seen"


@dataclass
class Flagged:
    """Where the flag was raised."""

    seq_num: int
    temperature: float
    onset: transition.Onset
    p_transition: float

    def describe(self) -> str:
        """One line for the log and the summary."""
        return (
            f"transition flagged at event {self.seq_num} ({self.temperature:.1f} K): "
            f"onset {self.onset.temperature:.1f} ± {self.onset.std:.1f} K"
        )


@dataclass
class Tracker:
    """One run's detector: the carried LSTM state, the flag rule and what the summary needs."""

    model: LoadedModel
    rule: transition.FlagRule
    run_uid: str = ""
    state: transition.State | None = None
    last_seq_num: int | None = None
    frames: int = 0
    missing: int = 0
    blank: int = 0
    temperatures: list[float] = field(default_factory=list)
    max_p: float = 0.0
    flagged: Flagged | None = None

    def check_order(self, seq_nums: np.ndarray) -> None:
        """Raise ValueError, changing nothing, if any event is not after the one before it."""
        previous = self.last_seq_num
        for seq_num in map(int, seq_nums):
            if previous is not None and seq_num <= previous:
                raise ValueError(
                    f"{NAME}: event {seq_num} arrived after event {previous}; events must "
                    "arrive in increasing seq_num order: refused, the detector's state is unchanged"
                )
            previous = seq_num

    def update(self, seq_num: int, pattern: np.ndarray, temperature: float) -> dict[str, Any]:
        """Step the LSTM over one frame; this event's results."""
        note = self._gap_note(seq_num)
        self.last_seq_num = seq_num
        if transition.is_blank(pattern):
            self.blank += 1
            return {
                "p_transition": np.nan,
                "flag": 0,
                "onset_temperature": np.nan,
                "onset_temperature_std": np.nan,
                "note": " ".join(filter(None, [note, transition.BLANK_NOTE])),
            }
        p, self.state = transition.step_frame(self.model, pattern, self.state)
        self.frames += 1
        self.temperatures.append(temperature)
        self.max_p = max(self.max_p, p)
        onset = self.rule.update(p, temperature)
        if onset is not None:
            self.flagged = Flagged(seq_num, temperature, onset, p)
        if not np.isfinite(temperature):
            note = " ".join(filter(None, [note, "no temperature in this event"]))
        return {
            "p_transition": p,
            "flag": int(onset is not None),
            "onset_temperature": onset.temperature if onset else np.nan,
            "onset_temperature_std": onset.std if onset else np.nan,
            "note": note,
        }

    def _gap_note(self, seq_num: int) -> str:
        expected = 1 if self.last_seq_num is None else self.last_seq_num + 1
        if seq_num == expected:
            return ""
        self.missing += seq_num - expected
        after = "the run's start" if self.last_seq_num is None else f"event {self.last_seq_num}"
        note = (
            f"events {expected}-{seq_num - 1} missing: continued from {after}"
            if seq_num - 1 > expected
            else f"event {expected} missing: continued from {after}"
        )
        logger.warning("run %s plugin %s: %s", self.run_uid[:8], NAME, note)
        return note

    def summary(self, stop: Mapping[str, Any]) -> dict[str, Any]:
        """The run's result: the flag and onset, or that none was seen before the run stopped."""
        common = {
            "frames": self.frames,
            "missing_events": self.missing,
            "blank_frames": self.blank,
            "direction": self._direction(),
            "max_p_transition": self.max_p,
            "run_exit_status": stop.get("exit_status", "success"),
        }
        if self.flagged is None:
            last = self.temperatures[-1] if self.temperatures else None
            return {
                "transition": False,
                "result": NO_TRANSITION,
                "last_temperature": last,
                **common,
            }
        flagged = self.flagged
        return {
            "transition": True,
            "result": flagged.describe(),
            "flag_seq_num": flagged.seq_num,
            "flag_temperature": flagged.temperature,
            "onset_temperature": flagged.onset.temperature,
            "onset_temperature_std": flagged.onset.std,
            "p_transition_at_flag": flagged.p_transition,
            **common,
        }

    def _direction(self) -> str:
        finite = [t for t in self.temperatures if np.isfinite(t)]
        if len(finite) < 2 or finite[-1] == finite[0]:
            return "unknown"
        return "heating" if finite[-1] > finite[0] else "cooling"


@hookimpl
def smartlab_describe() -> PluginInfo:
    """Reads ``operando_pattern`` profiles; the model is the shipped ``transition_lstm`` weights."""
    return PluginInfo(
        name=NAME,
        version=transition.VERSION,
        accepts=DataSpec(ndims=(1,), fields=(FIELD,)),
        summary="online transition flag and onset temperature on temperature ramps (LSTM)",
        model=model_info(NAME),
        device=runtime.pick_device().type,
        units=UNITS,
    )


@hookimpl
def smartlab_start_run(run: RunContext) -> None:
    """Load (once per process) the model and start this run's detector with an empty state."""
    model = shared_model(NAME)
    extras = model.card.extras
    rule = transition.FlagRule(
        extras["threshold"], extras["consecutive"], extras["onset_std_steps"]
    )
    run.state["tracker"] = Tracker(model, rule, run.uid)


@hookimpl
def smartlab_analyze(run: RunContext, batch: EventBatch) -> Results | None:
    """Step the detector over the batch's frames in order; one row of results per event."""
    patterns = model_input(run, batch, NAME, FIELD, transition.FIELD_SHAPE)
    if patterns is None:
        return None
    tracker: Tracker = run.state["tracker"]
    tracker.check_order(batch.seq_num)
    temperatures = temperatures_of(run, batch)
    rows = [
        tracker.update(int(seq_num), pattern, float(temperature))
        for seq_num, pattern, temperature in zip(batch.seq_num, patterns, temperatures, strict=True)
    ]
    if tracker.flagged is not None and tracker.flagged.seq_num in batch.seq_num:
        logger.info("run %s plugin %s: %s", run.uid[:8], NAME, tracker.flagged.describe())
    scalars = {
        name: np.array([row[name] for row in rows], dtype=object if name == "note" else None)
        for name in rows[0]
    }
    flags = ood_flags(
        run, NAME, tracker.model, transition.preprocess(patterns), logger, batch.seq_num
    )
    if flags:  # a blank frame is no pattern: as unlike the training data as an input can be
        blank = np.array([transition.is_blank(pattern) for pattern in patterns])
        flags["ood_score"][blank] = np.inf
        flags["in_distribution"][blank] = 0
    return Results(scalars={**scalars, **flags})


@hookimpl
def smartlab_finish_run(run: RunContext, stop: Mapping[str, Any]) -> dict[str, Any] | None:
    """The flagged event and the onset temperature, or ``"no transition seen"``."""
    tracker: Tracker | None = run.state.get("tracker")
    return tracker.summary(stop) if tracker else None


def temperatures_of(run: RunContext, batch: EventBatch) -> np.ndarray:
    """Each event's temperature (K) from the chosen or first available field; NaN if none."""
    chosen = run.options.get("temperature_field")
    for name in (chosen,) if chosen else TEMPERATURE_FIELDS:
        if name in batch.context:
            return np.asarray(batch.context[name], dtype=float)
    return np.full(len(batch), np.nan)
