"""Live views: matplotlib plots of results as a scan runs, off the RunEngine's path.

A view is added to the session's SmartLab::

    view = LiveCouplings()
    sl.add_live_view(view)      # the worker now also forwards spinwave_cnn's results
    view.start()                # redraw every 250 ms on the GUI thread (interactive backends)

Results arrive on SmartLab's listener thread, where the view only queues
them; drawing happens in :meth:`LiveView.update`, called by a matplotlib
timer on the GUI thread (or directly, e.g. in a script or test), so neither
the RunEngine nor the worker ever waits for a plot. Each view shows the
current run and starts afresh when a new run's results arrive.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import numpy as np


class LiveView:
    """Base class: queue messages from any thread, draw them on :meth:`update`."""

    plugin = ""
    wants_arrays = False
    wants_inputs = False

    def __init__(self, figsize: tuple[float, float] = (7.0, 4.0)) -> None:
        import matplotlib.pyplot as plt

        self.figure = plt.figure(figsize=figsize)
        self._queue: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()
        self._timer = None
        self.run_uid: str | None = None
        self.setup()

    def __call__(self, message: dict[str, Any]) -> None:
        """Take one results message (any thread); cheap."""
        if message.get("plugin") == self.plugin:
            self._queue.append(message)

    def update(self) -> bool:
        """Draw what arrived since the last call; True if anything did."""
        with self._lock:
            messages = [self._queue.popleft() for _ in range(len(self._queue))]
        if not messages:
            return False
        for message in messages:
            if message["run_uid"] != self.run_uid:
                self.run_uid = message["run_uid"]
                self.reset()
            self.absorb(message)
        self.draw()
        self.figure.canvas.draw_idle()
        return True

    def start(self, interval_ms: int = 250) -> None:
        """Redraw from a timer on the GUI thread (needs an interactive matplotlib backend)."""
        self._timer = self.figure.canvas.new_timer(interval=interval_ms)
        self._timer.add_callback(self.update)
        self._timer.start()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    # -- what each view defines --------------------------------------------

    def setup(self) -> None:
        """Create the axes."""

    def reset(self) -> None:
        """Forget the previous run's data."""

    def absorb(self, message: dict[str, Any]) -> None:
        """Add one message's data."""

    def draw(self) -> None:
        """Redraw from the data absorbed so far."""


class _SeriesView(LiveView):
    """A view of scalar columns against a scan coordinate, one point per event."""

    def __init__(self, x: str | None = None, **kwargs: Any) -> None:
        self.x_field = x
        self.series: dict[str, list[float]] = {}
        self.x: list[float] = []
        super().__init__(**kwargs)

    def reset(self) -> None:
        self.series, self.x = {}, []

    def absorb(self, message: dict[str, Any]) -> None:
        context = message["context"]
        self.x.extend(context[self.x_field] if self.x_field in context else message["seq_num"])
        for name, values in message["scalars"].items():
            self.series.setdefault(name, []).extend(values)

    @property
    def x_label(self) -> str:
        return self.x_field or "seq_num"


class LiveCouplings(_SeriesView):
    """``spinwave_cnn``: J1, J2, D (meV) with their standard deviations, per scan point."""

    plugin = "spinwave_cnn"
    names = ("j1", "j2", "d")

    def setup(self) -> None:
        self.axes = self.figure.subplots(1, 3)

    def draw(self) -> None:
        x = np.asarray(self.x)
        for ax, name in zip(self.axes, self.names, strict=True):
            ax.clear()
            ax.errorbar(x, self.series[name], yerr=self.series[f"{name}_std"], fmt="o", capsize=3)
            ax.set(xlabel=self.x_label, ylabel=f"{name.upper()} (meV)", title=name.upper())
        self.figure.suptitle(f"spinwave_cnn, run {self.run_uid[:8]}")
        self.figure.tight_layout()


class LivePhases(_SeriesView):
    """``phase_cnn``: each phase's probability across the scan (e.g. the composition)."""

    plugin = "phase_cnn"

    def setup(self) -> None:
        self.ax = self.figure.subplots()

    def draw(self) -> None:
        self.ax.clear()
        order = np.argsort(self.x, kind="stable")
        x = np.asarray(self.x)[order]
        for name, values in self.series.items():
            if name.startswith("p_"):
                self.ax.plot(x, np.asarray(values)[order], marker="o", label=name[2:])
        self.ax.set(
            xlabel=self.x_label,
            ylabel="probability",
            ylim=(-0.02, 1.02),
            title=f"phase_cnn, run {self.run_uid[:8]}",
        )
        self.ax.legend(loc="center right")
        self.figure.tight_layout()


class LiveTransition(_SeriesView):
    """``transition_lstm``: probability the transition has begun vs temperature; the flag."""

    plugin = "transition_lstm"

    def __init__(self, x: str = "operando_temperature", **kwargs: Any) -> None:
        super().__init__(x=x, **kwargs)

    def setup(self) -> None:
        self.ax = self.figure.subplots()

    def draw(self) -> None:
        self.ax.clear()
        x = np.asarray(self.x)
        self.ax.plot(
            x, self.series.get("p_transition", []), marker=".", label="p(transition begun)"
        )
        flags = np.flatnonzero(np.asarray(self.series.get("flag", []), dtype=bool))
        for i in flags:
            onset = self.series.get("onset_temperature", x)[i]
            self.ax.axvline(onset, color="C3", linestyle="--", label=f"flag: onset {onset:.1f} K")
        self.ax.set(
            xlabel=f"{self.x_label} (K)",
            ylabel="probability",
            ylim=(-0.02, 1.02),
            title=f"transition_lstm, run {self.run_uid[:8]}",
        )
        self.ax.legend(loc="upper left")
        self.figure.tight_layout()


class LiveMask(LiveView):
    """``micrograph_unet``: the latest frame with its predicted phase map over it."""

    plugin = "micrograph_unet"
    wants_arrays = True
    wants_inputs = True

    def __init__(self, alpha: float = 0.4, **kwargs: Any) -> None:
        self.alpha = alpha
        self.latest: dict[str, Any] | None = None
        super().__init__(figsize=(5.0, 5.0), **kwargs)

    def setup(self) -> None:
        self.ax = self.figure.subplots()

    def absorb(self, message: dict[str, Any]) -> None:
        self.latest = message

    def draw(self) -> None:
        message = self.latest
        frame = next(iter(message.get("inputs", {}).values()), None)
        mask = message.get("arrays", {}).get("mask")
        self.ax.clear()
        if frame is not None:
            self.ax.imshow(frame, cmap="gray")
        if mask is not None:
            self.ax.imshow(
                mask, cmap="tab10", vmin=0, vmax=9, alpha=self.alpha, interpolation="nearest"
            )
        fractions = {k: v[-1] for k, v in message["scalars"].items() if k.startswith("fraction")}
        label = ", ".join(
            f"{k.removeprefix('fraction_')} {100 * v:.0f}%" for k, v in fractions.items()
        )
        self.ax.set(xticks=[], yticks=[])
        self.ax.set_title(f"event {message['seq_num'][-1]}\n{label}", fontsize="medium")
        self.figure.tight_layout()
