"""Live views: matplotlib plots of a plugin's results as a scan runs, as RunEngine callbacks.

A view is subscribed to the RunEngine like bluesky's ``LivePlot``, and given
the session's SmartLab, which sends it the results::

    RE.subscribe(LiveCouplings(sl, x="ins_temperature"))

The run's documents bring what the results do not carry: the scan id, the
units of the scan coordinate and of the results (the descriptors' data keys,
resolved as the plugin's ``PluginInfo.units`` says, exactly as the analysis'
``units`` metadata in Tiled) and, for :class:`LiveMask`, the pixel size. A view
made without ``RE.subscribe`` still draws its results, with the units the
plugin states outright and "no unit recorded" for the rest.

Why not ``LivePlot`` itself: it draws event fields in its ``event`` method,
while our data are results that SmartLab's worker computes off the RunEngine's
path and sends on its own listener thread, often after the run's stop
document. So documents (RunEngine thread) and results (listener thread) are
only noted, under a lock; drawing happens in :meth:`LiveView.update`, called
every ``interval_ms`` by a matplotlib timer made with the figure, on the
thread that made the view (the GUI thread in a session, so the plot redraws
by itself with any interactive backend, not only Qt, which is all bluesky's
Qt teleporter covers), or directly in a script or test (``view.update()``
before ``savefig``). Neither the RunEngine nor the worker ever waits for a
plot. As with ``LivePlot``, call ``plt.ion()`` in an IPython session.

Each view shows the latest run of its plugin: it starts afresh when a new
run's results arrive, so other scans in between leave it as it was.
:meth:`LiveView.close` (or closing the window) stops it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from typing import Any

import numpy as np
from event_model import DocumentRouter

#: Documents of this many recent runs are kept, to label results that arrive late.
RECENT_RUNS = 16


class _Inbox:
    """What SmartLab's ``add_live_view`` takes: results of one plugin, queued for a view."""

    def __init__(self, plugin: str, arrays: bool, inputs: bool) -> None:
        self.plugin = plugin
        self.wants_arrays = arrays
        self.wants_inputs = inputs
        self.messages: deque[dict[str, Any]] = deque()

    def __call__(self, message: dict[str, Any]) -> None:
        """Take one results message (listener thread); cheap."""
        if message.get("plugin") == self.plugin:
            self.messages.append(message)


class LiveView(DocumentRouter):
    """Base class: a RunEngine callback that plots its plugin's results from ``smartlab``.

    ``fig`` is a figure to draw in (default: a new one); ``interval_ms`` how
    often the figure's timer looks for new results.
    """

    plugin = ""
    wants_arrays = False
    wants_inputs = False
    figsize: tuple[float, float] = (7.0, 4.0)

    def __init__(self, smartlab: Any, *, fig: Any = None, interval_ms: int = 250) -> None:
        import matplotlib.pyplot as plt

        super().__init__()
        self.smartlab = smartlab
        self.info = smartlab.plugins.info(self.plugin)
        self.figure = fig if fig is not None else plt.figure(figsize=self.figsize)
        self.inbox = _Inbox(self.plugin, self.wants_arrays, self.wants_inputs)
        self.run_uid: str | None = None
        self.start_doc: dict[str, Any] = {}
        self.descriptors: dict[str, dict[str, Any]] = {}
        self.units: dict[str, str | None] = {}
        self._runs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.setup()
        self._timer = self.figure.canvas.new_timer(interval=interval_ms)
        self._timer.add_callback(self.update)
        self._timer.start()
        self._on_close = self.figure.canvas.mpl_connect("close_event", lambda _: self.close())
        smartlab.add_live_view(self.inbox)
        self._open = True

    # -- documents, on the RunEngine's thread: noted only --------------------

    def start(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self._runs[doc["uid"]] = {"start": doc, "descriptors": {}}
            while len(self._runs) > RECENT_RUNS:
                self._runs.popitem(last=False)

    def descriptor(self, doc: dict[str, Any]) -> None:
        with self._lock:
            run = self._runs.get(doc["run_start"])
            if run is not None:
                run["descriptors"][doc.get("name", "primary")] = doc

    # -- drawing, on the GUI thread ------------------------------------------

    def update(self) -> bool:
        """Draw what arrived since the last call; True if anything did."""
        messages = [self.inbox.messages.popleft() for _ in range(len(self.inbox.messages))]
        if not messages:
            return False
        for message in messages:
            if message["run_uid"] != self.run_uid:
                self.run_uid = message["run_uid"]
                self.reset()
            self.absorb(message)
        with self._lock:
            run = self._runs.get(self.run_uid, {"start": {}, "descriptors": {}})
        self.start_doc, self.descriptors = run["start"], dict(run["descriptors"])
        self.units = self.info.resolve_units(
            self.descriptors, {stream: self.info.accepts.fields for stream in self.descriptors}
        )
        self.draw()
        self.figure.canvas.draw_idle()
        return True

    def close(self) -> None:
        """Stop the timer and take the view off SmartLab's list."""
        if self._open:
            self._open = False
            self._timer.stop()
            self.figure.canvas.mpl_disconnect(self._on_close)
            self.smartlab.remove_live_view(self.inbox)

    @property
    def title(self) -> str:
        scan_id = self.start_doc.get("scan_id")
        run = f"scan {scan_id} ({self.run_uid[:8]})" if scan_id is not None else self.run_uid[:8]
        return f"{self.plugin}, {run}"

    def data_key_unit(self, name: str) -> str | None:
        """The unit the descriptors give field ``name``; None if none does."""
        for descriptor in self.descriptors.values():
            unit = descriptor.get("data_keys", {}).get(name, {}).get("units")
            if unit:
                return unit
        return None

    # -- what each view defines --------------------------------------------

    def setup(self) -> None:
        """Create the axes."""

    def reset(self) -> None:
        """Forget the previous run's data."""

    def absorb(self, message: dict[str, Any]) -> None:
        """Add one message's data."""

    def draw(self) -> None:
        """Redraw from the data absorbed so far."""


def labelled(name: str, unit: str | None) -> str:
    """An axis label with its unit: ``"J1 (meV)"``, ``"p"`` or ``"x (no unit recorded)"``."""
    if unit is None:
        return f"{name} (no unit recorded)"
    return f"{name} ({unit})" if unit else name


class _SeriesView(LiveView):
    """A view of scalar columns against a scan coordinate, one point per event."""

    def __init__(self, smartlab: Any, x: str | None = None, **kwargs: Any) -> None:
        self.x_field = x
        self.series: dict[str, list[Any]] = {}
        self.x: list[float] = []
        super().__init__(smartlab, **kwargs)

    def reset(self) -> None:
        self.series, self.x = {}, []

    def absorb(self, message: dict[str, Any]) -> None:
        context = message["context"]
        self.x.extend(context[self.x_field] if self.x_field in context else message["seq_num"])
        for name, values in message["scalars"].items():
            self.series.setdefault(name, []).extend(values)

    @property
    def x_label(self) -> str:
        if self.x_field is None:
            return "seq_num"
        return labelled(self.x_field, self.data_key_unit(self.x_field))

    def sorted_series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``name`` against the scan coordinate, sorted by it (scans may go back and forth)."""
        order = np.argsort(self.x, kind="stable")
        return np.asarray(self.x, float)[order], np.asarray(self.series[name], float)[order]

    def mark_out_of_distribution(self, ax: Any, name: str) -> None:
        """Cross the points of ``name`` whose ``in_distribution`` result is false, if published."""
        if "in_distribution" not in self.series:
            return
        x, y = self.sorted_series(name)
        _, inside = self.sorted_series("in_distribution")
        outside = ~inside.astype(bool)
        if outside.any():
            ax.plot(x[outside], y[outside], "x", color="C3", ms=9, label="not in distribution")


class LiveCouplings(_SeriesView):
    """``spinwave_cnn``: J1, J2, D with a band of ± one standard deviation, per scan point."""

    plugin = "spinwave_cnn"
    names = ("j1", "j2", "d")
    figsize = (10.0, 4.0)

    def setup(self) -> None:
        self.axes = self.figure.subplots(1, 3)

    def draw(self) -> None:
        for ax, name in zip(self.axes, self.names, strict=True):
            ax.clear()
            x, y = self.sorted_series(name)
            _, std = self.sorted_series(f"{name}_std")
            ax.fill_between(x, y - std, y + std, color="C0", alpha=0.25, label="± 1 std")
            ax.plot(x, y, "o-", color="C0", label=name.upper())
            self.mark_out_of_distribution(ax, name)
            ax.set(xlabel=self.x_label, ylabel=labelled(name.upper(), self.units.get(name)))
            ax.legend(loc="best", fontsize="small")
        self.figure.suptitle(self.title)
        self.figure.tight_layout()


class LivePhases(_SeriesView):
    """``phase_cnn``: each phase's probability across the scan (e.g. the composition)."""

    plugin = "phase_cnn"

    def setup(self) -> None:
        self.ax = self.figure.subplots()

    def draw(self) -> None:
        self.ax.clear()
        for name in self.series:
            if name.startswith("p_"):
                self.ax.plot(*self.sorted_series(name), marker="o", label=name[2:])
        if "in_distribution" in self.series:
            self.mark_out_of_distribution(self.ax, "confidence")
        self.ax.set(xlabel=self.x_label, ylabel="probability", ylim=(-0.02, 1.02), title=self.title)
        self.ax.legend(loc="center right", title="phase")
        self.figure.tight_layout()


class LiveTransition(_SeriesView):
    """``transition_lstm``: probability the transition has begun vs temperature; the onset ± std."""

    plugin = "transition_lstm"

    def __init__(self, smartlab: Any, x: str = "operando_temperature", **kwargs: Any) -> None:
        super().__init__(smartlab, x=x, **kwargs)

    def setup(self) -> None:
        self.ax = self.figure.subplots()

    def draw(self) -> None:
        self.ax.clear()
        x = np.asarray(self.x, float)
        self.ax.plot(
            x, self.series.get("p_transition", []), marker=".", label="p(transition begun)"
        )
        unit = self.units.get("onset_temperature")
        flags = np.flatnonzero(np.asarray(self.series.get("flag", []), dtype=bool))
        for i in flags:
            onset = self.series.get("onset_temperature", x)[i]
            std = self.series.get("onset_temperature_std", [math.nan] * len(x))[i]
            text = f"flag: onset {onset:.1f} ± {std:.1f} {unit or '(no unit recorded)'}"
            self.ax.axvspan(onset - std, onset + std, color="C3", alpha=0.2, label=text)
            self.ax.axvline(onset, color="C3", linestyle="--")
            if "in_distribution" in self.series:
                inside = bool(self.series["in_distribution"][i])
                self.ax.plot([], [], " ", label=f"in distribution: {'yes' if inside else 'no'}")
        self.ax.set(xlabel=self.x_label, ylabel="probability", ylim=(-0.02, 1.02), title=self.title)
        self.ax.legend(loc="upper left")
        self.figure.tight_layout()


class LiveMask(LiveView):
    """``micrograph_unet``: the latest frame under its phase map, a phase legend and a scale bar.

    The scale bar's pixel size is ``pixel_size`` (a value and its unit, e.g.
    ``(0.05, "um")``) if given, else a ``*pixel_size`` setting of the run's
    descriptors (a device's configuration, with its ``units``); with
    neither, the bar is in pixels and says so.
    """

    plugin = "micrograph_unet"
    wants_arrays = True
    wants_inputs = True
    figsize = (5.5, 5.5)

    def __init__(
        self,
        smartlab: Any,
        alpha: float = 0.4,
        pixel_size: tuple[float, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.alpha = alpha
        self.pixel_size = pixel_size
        self.latest: dict[str, Any] | None = None
        super().__init__(smartlab, **kwargs)

    def setup(self) -> None:
        self.ax = self.figure.subplots()

    def absorb(self, message: dict[str, Any]) -> None:
        self.latest = message

    def draw(self) -> None:
        from matplotlib import colormaps
        from matplotlib.patches import Patch

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
        # the plugin publishes fraction_<phase> in the order of the mask's phase ids
        scalars = message["scalars"]
        fractions = {
            k.removeprefix("fraction_"): v[-1]
            for k, v in scalars.items()
            if k.startswith("fraction_")
        }
        colours = colormaps["tab10"]
        handles = [
            Patch(color=colours(k), alpha=0.8, label=f"{name} {100 * value:.0f}%")
            for k, (name, value) in enumerate(fractions.items())
        ]
        self.ax.legend(handles=handles, title="phase", loc="upper right", fontsize="small")
        if frame is not None or mask is not None:
            width = np.shape(frame if frame is not None else mask)[-1]
            self.ax.add_artist(self.scale_bar(width))
        notes = [f"event {message['seq_num'][-1]}"]
        if "uncertainty_mean" in scalars:
            notes.append(f"mean uncertainty {scalars['uncertainty_mean'][-1]:.2f}")
        if "in_distribution" in scalars:
            notes.append(f"in distribution: {'yes' if scalars['in_distribution'][-1] else 'no'}")
        self.ax.set(xticks=[], yticks=[])
        self.ax.set_title(f"{self.title}\n{', '.join(notes)}", fontsize="medium")
        self.figure.tight_layout()

    def found_pixel_size(self) -> tuple[float, str] | None:
        """The pixel size given, or the first ``*pixel_size`` setting with a unit in the run."""
        if self.pixel_size is not None:
            return self.pixel_size
        for descriptor in self.descriptors.values():
            for config in descriptor.get("configuration", {}).values():
                values = config.get("data", {})
                for name, key in config.get("data_keys", {}).items():
                    if name.endswith("pixel_size") and key.get("units") and name in values:
                        return float(values[name]), key["units"]
        return None

    def scale_bar(self, width: int) -> Any:
        """A bar about a fifth of the frame wide, of a round length."""
        from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

        found = self.found_pixel_size()
        size, unit = found if found is not None else (1.0, "px")
        length = _round_down(width * size / 5)
        label = f"{length:g} {unit}"
        if found is None:
            label += " (no pixel size recorded)"
        return AnchoredSizeBar(
            self.ax.transData,
            length / size,
            label,
            "lower left",
            color="white",
            frameon=False,
            size_vertical=max(1.0, width / 100),
        )


def _round_down(value: float) -> float:
    """The largest 1, 2 or 5 times a power of ten not above ``value``."""
    power = 10 ** math.floor(math.log10(value))
    return max(step * power for step in (1, 2, 5) if step * power <= value)
