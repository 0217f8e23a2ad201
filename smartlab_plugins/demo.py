"""``smartlab demo``: a simulated scan with live analysis, results read back from Tiled.

Starts the embedded Tiled server (unless one is given), scans a steering
motor across a simulated beam-profile monitor with ``peak_stats`` analysing
every frame as it arrives, then runs short scans of two simulated science
instruments (diffraction across a morphotropic phase boundary, an operando
temperature ramp), fetches the results back over HTTP and prints them with
the snippet that finds them from any other process.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from smartlab_plugins import settings

QUERY_SNIPPET = """\
import os
import pandas
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
events = analysis["primary"]["events"]  # immutable parts, one per batch
table = pandas.concat([part.read() for _, part in sorted(events.items())])
print(table)
print(analysis.metadata["summary"])"""


@dataclass
class Target:
    """The Tiled server the demo publishes to; ``embedded_dir`` is set if the demo started it."""

    uri: str
    api_key: str | None
    embedded_dir: Path | None = None


@contextlib.contextmanager
def tiled_server(tiled_uri: str | None, data_dir: Path | None, out: TextIO) -> Iterator[Target]:
    """The given server, or the embedded one started for the duration."""
    uri = tiled_uri or settings.tiled_uri()
    if uri:
        yield Target(uri, settings.api_key(data_dir))
        return
    from smartlab_plugins.server import EmbeddedServer, free_port

    port = settings.DEFAULT_PORT if _port_is_free(settings.DEFAULT_PORT) else free_port()
    server = EmbeddedServer(data_dir, port=port)
    print(
        f"Starting the embedded Tiled server (data in {server.data_dir}) ...", file=out, flush=True
    )
    with server:
        yield Target(server.uri, server.api_key, server.data_dir)


def run_demo(
    tiled_uri: str | None = None,
    data_dir: Path | None = None,
    points: int = 41,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Run the demo scan, print the results; return them as data (for tests)."""
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
        with SmartLab(target.uri, target.api_key) as smartlab:
            RE.subscribe(smartlab)
            print(
                f"Scanning steer from -4 to 4 mm in {points} points, peak_stats live ...", file=out
            )
            (run_uid,) = RE(bp.scan([devices["beam"]], devices["steer"], -4, 4, points))
            instrument_runs = _instrument_scans(RE, out)
        client = from_uri(target.uri, api_key=target.api_key)
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


@dataclass
class InstrumentScan:
    """One short scan of a simulated instrument and the live results to show from it."""

    title: str
    plugin: str
    columns: list[str]
    uids: list[str] = field(default_factory=list)


def _instrument_scans(RE: Any, out: TextIO) -> list[InstrumentScan]:
    """Scans of three simulated instruments, each with its plugin live."""
    import bluesky.plans as bp

    from smartlab_plugins.devices import ins, mpb, operando

    diffraction = mpb.make_devices(seed=1)
    spectrometer = ins.make_devices(seed=1)["ins"]
    ramp = operando.make_devices(seed=1)

    def spin_waves():
        for truth in ((0.55, 0.09, 0.05), (0.8, 0.15, 0.1)):
            spectrometer.sample.set_truth(*truth)
            yield from bp.count([spectrometer], 1, md={"hidden_truth_meV": truth})

    scans = [
        (
            InstrumentScan(
                "Inelastic neutron scattering, two samples (hidden truth J1, J2, D = "
                "0.55, 0.09, 0.05 and 0.8, 0.15, 0.1 meV); spinwave_cnn live",
                "spinwave_cnn",
                ["j1", "j1_std", "j2", "j2_std", "d", "d_std"],
            ),
            spin_waves(),
        ),
        (
            InstrumentScan(
                "Diffraction across the morphotropic phase boundary (x_MPB = 0.475 at 300 K), "
                "composition x from 0.3 to 0.7; phase_cnn live",
                "phase_cnn",
                ["sample_x", "true_phase", "phase_name", "confidence", "p_monoclinic"],
            ),
            bp.list_scan(
                [diffraction["mpb"], diffraction["sample"].temperature],
                diffraction["sample"].x,
                COMPOSITIONS,
            ),
        ),
        (
            InstrumentScan(
                "Operando powder pattern on a temperature ramp from 350 to 550 K; peak_stats live",
                "peak_stats",
                ["operando_pattern_max", "operando_pattern_argmax", "operando_pattern_fwhm"],
            ),
            bp.scan([ramp["operando"]], ramp["temperature"], 350, 550, 11),
        ),
    ]
    for scan, plan in scans:
        print(f"{scan.title} ...", file=out, flush=True)
        scan.uids = list(RE(plan))
    return [scan for scan, _ in scans]


def _report_instruments(out: TextIO, client: Any, scans: list[InstrumentScan]) -> None:
    import pandas as pd

    from smartlab_plugins.results import find_analyses, read_events

    for scan in scans:
        tables = []
        for uid in scan.uids:
            for analysis in find_analyses(client, run_uid=uid, plugin=scan.plugin):
                tables.append(read_events(analysis).assign(run=uid[:8]))
        table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        if scan.plugin == "phase_cnn" and len(table):
            table = _with_true_phase(client, scan.uids[0], table)
        shown = [c for c in ["run", "seq_num", *scan.columns] if c in table]
        print(
            f"{scan.title}:\n"
            + (
                table[shown].to_string(index=False, float_format="%.3f")
                if len(table)
                else "  (no results)"
            )
            + "\n",
            file=out,
        )


def _with_true_phase(client: Any, uid: str, table: Any) -> Any:
    """Add the scanned composition and the simulator's hidden phase, to compare with."""
    from smartlab_plugins.devices import mpb

    primary = client[uid]["primary"]
    x = np.asarray(primary["sample_x"].read())
    temperature = np.asarray(primary["sample_temperature"].read())
    truth = [mpb.PHASE_NAMES[mpb.truth_at(a, t).phase] for a, t in zip(x, temperature, strict=True)]
    return table.assign(sample_x=x[: len(table)], true_phase=truth[: len(table)])


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _port_is_free(port: int) -> bool:
    try:
        with socket.create_connection((settings.DEFAULT_HOST, port), timeout=0.2):
            return False
    except OSError:
        return True
