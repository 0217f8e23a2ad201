"""``smartlab demo``: a simulated scan with live analysis, results read back from Tiled.

Starts the embedded Tiled server (unless one is given), scans a steering
motor across a simulated beam-profile monitor with ``peak_stats`` analysing
every frame as it arrives, then runs short scans of four simulated science
instruments (inelastic neutron scattering, diffraction across a morphotropic
phase boundary, an operando temperature ramp through a structural transition,
an SEM raster of a steel specimen), each with its science plugin live,
fetches the results back over HTTP and prints them beside the simulators'
hidden truth, with the snippet that finds them from any other process.

The diffraction and SEM detectors write their frames to HDF5 files, as facility
detectors do (:mod:`~smartlab_plugins.devices.file_detectors`), in the server's
``external/`` folder, so that Tiled serves the raw frames; against a remote server
with no local data folder, the in-memory detectors stand in for them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from smartlab_demos.target import Target, step, tiled_server
from smartlab_plugins import settings

QUERY_SNIPPET = """\
import os
from tiled.client import from_uri
from tiled.queries import Key

client = from_uri("{uri}", api_key=os.environ["SMARTLAB_API_KEY"])
uid = "{run_uid}"
run = client[uid]  # the raw scan, as a BlueskyRun
analysis = (
    client["smartlab"]
    .search(Key("run_uid") == uid)
    .search(Key("plugin") == "peak_stats")
    .values()
    .first()
)
table = analysis["primary"]["events"].read()  # one row per analysed event
print(table)
print(analysis.metadata["summary"])"""


def run_demo(
    tiled_uri: str | None = None,
    data_dir: Path | None = None,
    points: int = 41,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Run the demo scan, print the results; return them as data (for tests)."""
    with step(out, "Loading bluesky, tiled and the simulated instruments"):
        import bluesky.plans as bp
        from bluesky import RunEngine
        from tiled.client import from_uri

        from smartlab_plugins import SmartLab
        from smartlab_plugins.devices.beam import make_devices
        from smartlab_plugins.results import find_analyses, read_events

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tiled_server(tiled_uri, data_dir, out) as target:
        devices = make_devices(seed=1)
        RE = RunEngine()
        with step(out, "Starting SmartLab's worker process, which loads the plugins' models"):
            smartlab = SmartLab(target.uri, target.api_key)
        with smartlab:
            RE.subscribe(smartlab)
            print(
                f"Scanning steer from -4 to 4 mm in {points} points, peak_stats live ...", file=out
            )
            (run_uid,) = RE(bp.scan([devices["beam"]], devices["steer"], -4, 4, points))
            client = from_uri(target.uri, api_key=target.api_key)
            instrument_runs = _instrument_scans(RE, out, client, smartlab, target.external_dir)
            with step(out, "Waiting for the last analyses to reach Tiled"):
                smartlab.close()
        (analysis,) = find_analyses(client, run_uid=run_uid, plugin="peak_stats")
        table = read_events(analysis)
        summary = analysis.metadata.get("summary") or {}
        _report(out, target, run_uid, analysis, table, summary)
        _report_instruments(out, client, instrument_runs)
        _query_help(out, target, run_uid)
        return {"uri": target.uri, "run_uid": run_uid, "table": table, "summary": summary}


def _report(
    out: TextIO, target: Target, run_uid: str, analysis: Any, table: Any, summary: dict
) -> None:
    columns = ["seq_num", *(f"beam_profile_{s}" for s in ("max", "argmax", "centroid", "fwhm"))]
    step = max(1, len(table) // 8)
    shown = table[[c for c in columns if c in table]].iloc[::step]
    peak = summary.get("beam_profile_sum", {})
    print(
        f"\nTiled server:  {target.uri}\n"
        f"Run uid:       {run_uid}\n"
        f"Results node:  smartlab/{analysis.item['id']} "
        f"(status {analysis.metadata['status']}, {len(table)} events analysed)\n\n"
        f"peak_stats per frame, fetched back from Tiled (every {step}th row):\n"
        f"{shown.to_string(index=False, float_format=lambda v: f'{v:9.2f}')}\n\n"
        "Peak of the integrated intensity across the scan: "
        f"centroid at steer = {_number(peak.get('centroid'))} mm, "
        f"FWHM = {_number(peak.get('fwhm'))} mm\n",
        file=out,
    )


def _query_help(out: TextIO, target: Target, run_uid: str) -> None:
    uri = target.uri
    if target.embedded_dir is not None:
        uri = f"http://{settings.DEFAULT_HOST}:{settings.DEFAULT_PORT}"
        key_file = target.embedded_dir / settings.API_KEY_FILENAME
        key = f"$(cat {key_file})" if key_file.exists() else "<the key you set>"
        print(
            "The embedded server stopped with the demo; its data stays in the data folder.\n"
            f"To query it again, run `smartlab serve --data-dir {target.embedded_dir}` in one\n"
            f"shell; in another, `export SMARTLAB_API_KEY={key}`, then in Python:\n",
            file=out,
        )
    else:
        print("Query the results from any other process (with SMARTLAB_API_KEY set):\n", file=out)
    print(QUERY_SNIPPET.format(uri=uri, run_uid=run_uid), file=out)


COMPOSITIONS = [0.3, 0.4, 0.45, 0.47, 0.475, 0.48, 0.5, 0.6, 0.7]
#: Wall-clock seconds per frame of the ramp and the raster. The simulators take no time, but a
#: detector does: with this stand-in for exposure, results are seen arriving during the scan.
FRAME_DELAY = 0.2


def _exposing_step(detectors: list, step: dict, pos_cache: dict) -> Any:
    """``bps.one_nd_step``, then ``FRAME_DELAY`` of wall time (see above)."""
    import bluesky.plan_stubs as bps

    yield from bps.one_nd_step(detectors, step, pos_cache)
    yield from bps.sleep(FRAME_DELAY)


@dataclass
class InstrumentScan:
    """One short scan of a simulated instrument and the live results to show from it."""

    title: str
    plugin: str
    columns: list[str]
    uids: list[str] = field(default_factory=list)
    #: followed in Tiled during the scan: (new rows) -> a note once what it waits for is there
    watch: Callable[[Any], str | None] | None = None
    live_note: str = ""  # what the watch saw, and at which event of the scan
    #: adds columns to compare with: (client, run uid, analysis node, table) -> table
    annotate: Callable[[Any, str, Any, Any], Any] | None = None
    rows: Callable[[Any], Any] | None = None  # the rows of the results table to print
    truth: str = ""  # the simulator's hidden answer, printed under the results
    frames: str = ""  # the raw run's frame field, read back from Tiled to check its shape


def _instrument_scans(
    RE: Any, out: TextIO, client: Any, smartlab: Any, external_dir: Path | None = None
) -> list[InstrumentScan]:
    """Scans of four simulated instruments, each with its plugin live.

    The diffraction detector and the SEM camera write their frames to HDF5 files in
    ``external_dir`` (the server's ``external/`` folder); without one (a remote
    server), the in-memory detectors put the frames in the events instead.
    """
    import bluesky.plans as bp
    from ophyd import Kind

    from smartlab_plugins.devices import ins, microscopy, mpb, operando

    spectrometer = ins.make_devices(seed=1)["ins"]
    ramp = operando.make_devices(seed=1)
    detector = ramp["operando"]
    t_up = detector.truth["t_up"]
    if external_dir is not None:
        from smartlab_plugins.devices.file_detectors import make_file_devices

        folder = external_dir / "demo"
        files = make_file_devices(folder, seed=1)  # after the RunEngine: connects in its loop
        diffraction = {"sample": files["sample"], "mpb": files["mpb"]}
        # the file camera drives an in-memory SEMCamera (its sensor), whose hidden mask of
        # the frame just taken is read beside it as ``camera_mask``, to compare with
        sem = {"xy": files["xy"], "camera": files["camera"], "mask": files["camera"].sensor.mask}
        print(f"The MPB and SEM detectors write their frames to HDF5 files in {folder}", file=out)
    else:
        diffraction = mpb.make_devices(seed=1)
        sem = microscopy.make_devices(seed=1)
        sem["camera"].mask.kind = Kind.normal  # record the hidden truth, to compare with
        print(
            "No local data folder for this Tiled server (--data-dir, with its external/ folder): "
            "the MPB and SEM detectors keep their frames in the events, not in HDF5 files",
            file=out,
        )
    sem_detectors = [sem["camera"], *([sem["mask"]] if "mask" in sem else [])]

    def spin_waves():
        for truth in ((0.55, 0.09, 0.05), (0.8, 0.15, 0.1)):
            spectrometer.sample.set_truth(*truth)
            yield from bp.count([spectrometer], 1, md={"hidden_truth_meV": truth})

    start = 10 * round((t_up - 60) / 10)
    scans = [
        (
            InstrumentScan(
                "Inelastic neutron scattering, two samples (hidden truth J1, J2, D = "
                "0.55, 0.09, 0.05 and 0.8, 0.15, 0.1 meV); spinwave_cnn live",
                "spinwave_cnn",
                ["j1", "j1_std", "j2", "j2_std", "d", "d_std", "in_distribution"],
            ),
            spin_waves(),
        ),
        (
            InstrumentScan(
                "Diffraction across the morphotropic phase boundary (x_MPB = 0.475 at 300 K), "
                "composition x from 0.3 to 0.7; phase_cnn live",
                "phase_cnn",
                [
                    "sample_x",
                    "true_phase",
                    "phase_name",
                    "confidence",
                    "p_monoclinic",
                    "in_distribution",
                ],
                annotate=_with_true_phase,
                frames="mpb_image",
            ),
            bp.list_scan(
                [diffraction["mpb"], diffraction["sample"].temperature],
                diffraction["sample"].x,
                COMPOSITIONS,
            ),
        ),
        (
            InstrumentScan(
                f"Operando powder pattern on a heating ramp from {start} K at 4 K/min, "
                "60 frames; transition_lstm live",
                "transition_lstm",
                [
                    "temperature",
                    "p_transition",
                    "flag",
                    "onset_temperature",
                    "in_distribution",
                    "note",
                ],
                annotate=_with_frame_temperature,
                rows=_around_the_flag,
                watch=_flag_published,
                truth=f"hidden truth: the sample leaves its ordered phase at T_up = {t_up:.1f} K",
            ),
            operando.ramp(
                detector, ramp["temperature"], start, start + 120, 4.0, 60, delay=FRAME_DELAY
            ),
        ),
        (
            InstrumentScan(
                "SEM raster of a steel specimen, 4 x 4 frames of 12.8 um; micrograph_unet live",
                "micrograph_unet",
                [
                    *(f"fraction_{phase}" for phase in microscopy.PHASES),
                    "mask_agrees",
                    "in_distribution",
                ],
                annotate=_with_mask_agreement,
                watch=_masks_published,
                frames="camera_image",
            ),
            bp.grid_scan(
                sem_detectors,
                *(sem["xy"].y, 0, 60, 4, sem["xy"].x, 0, 60, 4),
                per_step=_exposing_step,
            ),
        ),
    ]
    for scan, plan in scans:
        print(f"{scan.title} ...", file=out, flush=True)
        if scan.watch is None:
            scan.uids = list(RE(plan))
            continue
        smartlab.flush()  # the earlier scans' results are out: this scan's are watched alone
        with LiveWatch(RE, client, scan.plugin, scan.watch) as watch:
            scan.uids = list(RE(plan))
        scan.live_note = watch.note
    return [scan for scan, _ in scans]


class LiveWatch:
    """Follows the plugin's results in Tiled while a scan runs, as any other client would.

    A subscription on the RunEngine notes the run uid at the start document,
    starts :func:`smartlab_plugins.results.follow` (Tiled pushes each batch of
    rows as it is published) and counts events (O(1)). Each batch goes to
    ``probe(rows)``, which says whether what it waits for is there; the note
    names the event the scan had reached when it arrived: evidence that results
    reach other clients during the scan, not only after it.
    """

    def __init__(
        self, RE: Any, client: Any, plugin: str, probe: Callable[[Any], str | None]
    ) -> None:
        self.RE, self.client, self.plugin, self.probe = RE, client, plugin, probe
        self.events = 0
        self.stopped = False
        self.note = ""
        self._follower: Any = None

    def __enter__(self) -> LiveWatch:
        self._token = self.RE.subscribe(self._document)
        return self

    def __exit__(self, *exc: object) -> None:
        self.RE.unsubscribe(self._token)
        if self._follower is not None:
            self._follower.close()
        if not self.note:
            self.note = "live: nothing to report before the scan ended"

    def _document(self, name: str, doc: dict[str, Any]) -> None:
        from smartlab_plugins.results import follow

        if name == "start":
            self._follower = follow(self.client, doc["uid"], self.plugin, self._rows)
        elif name == "event":
            self.events = doc["seq_num"]
        elif name == "stop":
            self.stopped = True

    def _rows(self, rows: Any) -> None:
        reached, stopped = self.events, self.stopped
        seen = None if self.note else self.probe(rows)
        if seen and not stopped:
            self.note = f"live: {seen}, pushed by Tiled while the scan was at event {reached}"


def _flag_published(rows: Any) -> str | None:
    """Whether the transition flag is among these rows."""
    flagged = rows[rows["flag"] == 1]
    return f"the flag of event {int(flagged['seq_num'].iloc[0])}" if len(flagged) else None


def _masks_published(rows: Any) -> str | None:
    """The phase fractions of the first frames pushed (their masks are array parts beside)."""
    first = rows.iloc[0]
    fractions = ", ".join(
        f"{name.removeprefix('fraction_')} {first[name]:.2f}"
        for name in rows.columns
        if name.startswith("fraction_")
    )
    return f"the phase fractions of frame {int(first['seq_num'])} ({fractions})"


def _around_the_flag(table: Any) -> Any:
    """The rows from three frames before the flag to two after (the last rows if none)."""
    flagged = np.flatnonzero(table["flag"].to_numpy() == 1)
    if not len(flagged):
        return table.tail(5)
    return table.iloc[max(0, flagged[0] - 3) : flagged[0] + 3]


def _report_instruments(out: TextIO, client: Any, scans: list[InstrumentScan]) -> None:
    import pandas as pd

    from smartlab_plugins.results import find_analyses, read_events

    for scan in scans:
        tables, summaries = [], []
        for uid in scan.uids:
            for analysis in find_analyses(client, run_uid=uid, plugin=scan.plugin):
                table = read_events(analysis)
                if scan.annotate and len(table):
                    table = scan.annotate(client, uid, analysis, table)
                tables.append(table.assign(run=uid[:8]))
                summaries.append(analysis.metadata.get("summary") or {})
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        if scan.rows and len(table):
            table = scan.rows(table)
        shown = [c for c in ["run", "seq_num", *scan.columns] if c in table]
        text = table[shown].to_string(index=False, float_format="%.3f") if len(table) else ""
        lines = [f"{scan.title}:", text or "  (no results)"]
        if scan.live_note:
            lines.append(scan.live_note)
        if scan.truth:
            results = "; ".join(str(s["result"]) for s in summaries if "result" in s)
            lines.append(f"summary: {results or 'none'}; {scan.truth}")
        if scan.frames:
            lines.extend(_frames_line(client, uid, scan.frames) for uid in scan.uids)
        print("\n".join(lines) + "\n", file=out)


def _frames_line(client: Any, uid: str, key: str) -> str:
    """The raw run's frames, read back from Tiled: their shape against the scan's events."""
    run = client[uid]
    events = (run.metadata.get("stop") or {}).get("num_events", {}).get("primary")
    frames = run["primary"][key].read()
    shape = tuple(frames.shape)
    check = "one per event" if shape[0] == events else f"but the scan had {events} events"
    return (
        f'frames came back from Tiled: client["{uid[:8]}"]["primary"]["{key}"] has shape '
        f"{shape}, {check} (max {float(np.max(frames)):.1f})"
    )


def _with_true_phase(client: Any, uid: str, analysis: Any, table: Any) -> Any:
    """Add the scanned composition and the simulator's hidden phase, to compare with."""
    from smartlab_plugins.devices import mpb

    primary = client[uid]["primary"]
    x = np.asarray(primary["sample_x"].read())
    temperature = np.asarray(primary["sample_temperature"].read())
    truth = [mpb.PHASE_NAMES[mpb.truth_at(a, t).phase] for a, t in zip(x, temperature, strict=True)]
    index = table["seq_num"].to_numpy() - 1
    return table.assign(sample_x=x[index], true_phase=np.asarray(truth)[index])


def _with_frame_temperature(client: Any, uid: str, analysis: Any, table: Any) -> Any:
    """Add each frame's temperature (K), as the detector recorded it."""
    temperatures = np.asarray(client[uid]["primary"]["operando_temperature"].read())
    return table.assign(temperature=temperatures[table["seq_num"].to_numpy() - 1])


def _with_mask_agreement(client: Any, uid: str, analysis: Any, table: Any) -> Any:
    """Add the share of pixels where the published phase map equals the hidden true mask."""
    from smartlab_plugins.results import read_array

    masks = read_array(analysis, "mask")
    truth = np.asarray(client[uid]["primary"]["camera_mask"].read())
    agrees = (masks == truth[table["seq_num"].to_numpy() - 1]).mean(axis=(1, 2))
    return table.assign(mask_agrees=[f"{100 * a:.1f}%" for a in agrees])


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
