"""File-writing area detectors, as facilities run them: frames go to HDF5, not into events.

At a beamline or a microscope an area detector does not put its frames into event
documents: it writes them to an HDF5 file and the events only point into that file.
This module gives the simulated instruments that behaviour, in the two forms found at
facilities:

* ophyd-async ``StandardDetector``\\ s, :class:`MPBFileDetector` (the diffraction
  detector of :mod:`~smartlab_plugins.devices.mpb`) and :class:`SEMFileCamera` (the SEM
  camera of :mod:`~smartlab_plugins.devices.microscopy`). Built as ophyd-async's
  ``SimBlobDetector`` is: a trigger, an acquire and a data logic around one shared
  engine (here :class:`_Readout`, there ``PatternGenerator``). They write through a
  ``PathProvider`` and emit ``stream_resource``/``stream_datum``; the descriptor shape
  is ``[N, H, W]`` with N frames per event.
* an ophyd v1 areaDetector-style device, :class:`MPBHDF5Detector`, which emits
  ``resource`` (spec ``AD_HDF5``, ``frame_per_point``) and ``datum`` (``point_number``)
  documents and describes its frames as ``external: "FILESTORE:"``.

Every form writes frames to the dataset :data:`DATASET` of a file opened in SWMR mode,
one frame at a time as it is exposed, flushed, so a reader sees the file grow during a
scan. The physics is not here: each file-writing detector drives the in-memory device
of its instrument (``MPBDetector``, ``SEMCamera``), which calls the same
``generate_frames``/``acquire_frames`` as the training-set generators. With the same
seed, the files hold exactly the frames the in-memory device would have recorded.

The read keys are the in-memory devices' (``mpb_image``, ``camera_image``), so plugins
that select those keys find them in the descriptor; the events themselves carry no
frame, only the documents that locate it in the file.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Final, TypedDict

import h5py
import numpy as np
from bluesky.protocols import Asset
from event_model import ComposeResourceBundle, compose_resource
from ophyd import Device as OphydDevice
from ophyd.status import StatusBase
from ophyd_async.core import (
    AsyncStatus,
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    PathProvider,
    SignalR,
    StandardDetector,
    StaticPathProvider,
    StreamResourceDataProvider,
    StreamResourceInfo,
    TriggerInfo,
    UUIDFilenameProvider,
    init_devices,
    soft_signal_r_and_setter,
)

from smartlab_plugins.devices.microscopy import MicroscopyConfig, SEMCamera, XYStage
from smartlab_plugins.devices.mpb import MPBConfig, MPBDetector, MPBStage

__all__ = [
    "DATASET",
    "FileDevices",
    "FileWritingDetector",
    "MPBFileDetector",
    "MPBHDF5Detector",
    "SEMFileCamera",
    "make_file_devices",
]

DATASET: Final = "/entry/data/data"
"""Where frames go in each file: areaDetector's NeXus layout, which bluesky-tiled-plugins
assumes for the ``AD_HDF5`` spec and ophyd-async's detectors use too."""

IMAGE_SUFFIX: Final = "_image"  # data key = detector name + suffix, as the in-memory devices


class _FrameFile:
    """An HDF5 file whose frame dataset grows one flushed frame at a time (SWMR).

    The dataset is created empty with an unlimited first axis and one chunk per frame,
    then the file switches to single-writer/multiple-reader mode, so that a reader
    opening it with ``swmr=True`` during a scan sees every frame appended so far.
    """

    def __init__(self, path: Path, frame_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path = path
        self._file = h5py.File(path, "w", libver="latest")
        self._data = self._file.create_dataset(
            DATASET,
            shape=(0, *frame_shape),
            maxshape=(None, *frame_shape),
            chunks=(1, *frame_shape),
            dtype=dtype,
        )
        self._file.swmr_mode = True

    @property
    def frames(self) -> int:
        """How many frames the file holds."""
        return self._data.shape[0]

    def append(self, frame: np.ndarray) -> None:
        """Write ``frame`` after the last one and flush it to readers."""
        if frame.shape != self._data.shape[1:]:
            raise ValueError(
                f"{self.path.name}: expected a frame of shape {self._data.shape[1:]}, "
                f"got {frame.shape}"
            )
        index = self.frames
        self._data.resize(index + 1, axis=0)
        self._data[index] = frame
        self._data.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file.id.valid:
            self._file.close()


def _frame_layout(sensor: OphydDevice) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the frames of an in-memory detector, from its ``image`` signal."""
    frame = np.asarray(sensor.image.get())
    return frame.shape, frame.dtype


def _checked_frames_per_event(value: int) -> int:
    """``value`` if it is an integer >= 1, else a ValueError saying what was expected."""
    if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
        raise ValueError(f"frames_per_event={value!r}: expected an integer >= 1")
    return value


# =========================================================================================
# ophyd-async: StandardDetector with trigger, acquire and data logic around one engine
# =========================================================================================
class _Readout:
    """The simulated driver and HDF5 file plugin that a detector's three logics share.

    Takes exposures from the in-memory ``sensor`` (an ophyd v1 detector with an
    ``image`` signal) and appends them to the open file; ``frames_written`` counts the
    frames in the file, which is how ``StandardDetector`` knows an exposure is done.
    ``settings`` mirrors the sensor's configuration signals (e.g. ``count_time``) as
    ophyd-async signals, refreshed at each acquisition, for ``read_configuration``.
    """

    def __init__(self, sensor: OphydDevice, exposure_time: str | None) -> None:
        self.sensor = sensor
        self.exposure_time = exposure_time
        self.frame_shape, self.dtype = _frame_layout(sensor)
        self.exposures = 1  # per start of acquisition, set by the trigger logic
        self.frames_written, self._set_frames_written = soft_signal_r_and_setter(int)
        self.settings = {
            attr: soft_signal_r_and_setter(
                float,
                initial_value=float(getattr(sensor, attr).get()),
                units=getattr(getattr(sensor, attr), "units", None),
            )
            for attr in sensor.configuration_attrs
        }
        self._file: _FrameFile | None = None

    def open_file(self, path: Path) -> None:
        """Start a new file of frames (closing any previous one)."""
        self.close_file()
        self._file = _FrameFile(path, self.frame_shape, self.dtype)
        self._set_frames_written(0)

    def close_file(self) -> None:
        """Close the current file, if any."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def set_exposure_time(self, seconds: float) -> None:
        """Set the sensor's exposure time, refused (LimitError) if out of its range."""
        if self.exposure_time is None:
            raise ValueError(
                f"{self.sensor.name}: has no exposure time to set from TriggerInfo.livetime="
                f"{seconds}; expected livetime=0 (change its settings "
                f"{list(self.settings)} instead)"
            )
        getattr(self.sensor, self.exposure_time).put(seconds)

    async def acquire(self) -> None:
        """Take ``exposures`` frames, each written and flushed before the next is taken.

        Exposures are computed in a worker thread, so the RunEngine's event loop stays
        free; an error (e.g. a frame off the specimen) fails the calling trigger at once.
        """
        if self._file is None:
            raise RuntimeError(f"{self.sensor.name}: no HDF5 file open; stage or prepare first")
        file = self._file
        for attr, (_, set_value) in self.settings.items():
            set_value(float(getattr(self.sensor, attr).get()))
        for _ in range(self.exposures):
            await asyncio.to_thread(self._take_frame, file)
            self._set_frames_written(file.frames)

    def _take_frame(self, file: _FrameFile) -> None:
        """One exposure of the sensor at its stage's position, appended to ``file``."""
        self.sensor.trigger().wait()
        file.append(self.sensor.image.get())


class _ReadoutTriggerLogic(DetectorTriggerLogic):
    """Internal triggering only: each start of acquisition takes ``num`` exposures."""

    def __init__(self, readout: _Readout, frames_per_event: int) -> None:
        self._readout = readout
        self._frames_per_event = frames_per_event

    def config_sigs(self) -> set[SignalR]:
        """The mirrored sensor settings, for the descriptor's configuration."""
        return {signal for signal, _ in self._readout.settings.values()}

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        """Take ``num`` exposures per acquisition; ``livetime`` > 0 sets the exposure time.

        ``deadtime`` is ignored: simulated exposures take no wall-clock time.
        """
        if num < 1:
            raise ValueError(
                f"{self._readout.sensor.name}: expected a finite number of events "
                f"(TriggerInfo.number_of_events >= 1), got {num} exposures"
            )
        if livetime:
            self._readout.set_exposure_time(livetime)
        self._readout.exposures = num

    async def default_trigger_info(self) -> TriggerInfo:
        """``frames_per_event`` frames per event, the detector's setting."""
        return TriggerInfo(collections_per_event=self._frames_per_event)


class _ReadoutAcquireLogic(DetectorAcquireLogic):
    """Starting acquisition takes every exposure; nothing runs on in the background."""

    def __init__(self, readout: _Readout) -> None:
        self._readout = readout

    async def start_acquiring(self) -> None:
        """Take and write the prepared number of exposures."""
        await self._readout.acquire()

    async def wait_for_idle(self) -> None:
        """Nothing to wait for: ``start_acquiring`` returns once the frames are written."""

    async def ensure_stopped(self) -> None:
        """Nothing to stop: no acquisition outlives ``start_acquiring``."""


class _HDF5DataLogic(DetectorDataLogic):
    """One HDF5 file per prepare, from the path provider, announced as one stream resource."""

    datakey_suffix = IMAGE_SUFFIX

    def __init__(self, path_provider: PathProvider, readout: _Readout) -> None:
        self._path_provider = path_provider
        self._readout = readout

    async def prepare_unbounded(self, datakey_name: str) -> StreamResourceDataProvider:
        """Open a new file and describe its dataset (shape of one frame, one chunk each)."""
        info = self._path_provider(datakey_name)
        filename = f"{info.filename}.h5"
        self._readout.open_file(Path(info.directory_path) / filename)
        frames = StreamResourceInfo(
            data_key=datakey_name,
            shape=self._readout.frame_shape,
            chunk_shape=(1, *self._readout.frame_shape),
            dtype_numpy=self._readout.dtype.str,
            parameters={"dataset": DATASET},
        )
        return StreamResourceDataProvider(
            uri=f"{info.directory_uri}{filename}",
            resources=[frames],
            mimetype="application/x-hdf5",
            collections_written_signal=self._readout.frames_written,
        )

    async def stop(self) -> None:
        """Close the file."""
        self._readout.close_file()

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        """The frames are the detector's main field."""
        return [datakey_name]


class FileWritingDetector(StandardDetector):
    """An ophyd-async area detector that writes the frames of an in-memory detector to HDF5.

    ``sensor`` is the in-memory ophyd v1 detector of an instrument (its ``trigger()``
    renders a frame into its ``image`` signal); this device is its readout: on each
    trigger it takes ``frames_per_event`` exposures at the stage's position and
    appends them to a file from ``path_provider`` (one new file per stage/prepare).
    Data key ``<name>_image``, descriptor shape ``[frames_per_event, H, W]``,
    ``external: "STREAM:"``; configuration: the sensor's settings
    (``<name>_count_time``, ...). ``exposure_time`` names the sensor setting that a
    plan's ``TriggerInfo.livetime`` sets (None: livetime must be 0).

    Staging prepares the detector for ``frames_per_event`` frames per event, so that
    ``bp.count``/``bp.scan``, which never call ``prepare``, get that many; a plan that
    does call ``prepare`` overrides it.
    """

    _child_name_separator = "_"  # configuration keys as the in-memory devices name them

    def __init__(
        self,
        sensor: OphydDevice,
        path_provider: PathProvider,
        *,
        frames_per_event: int = 1,
        exposure_time: str | None = None,
        name: str = "",
    ) -> None:
        self._sensor = sensor
        self._frames_per_event = _checked_frames_per_event(frames_per_event)
        readout = _Readout(sensor, exposure_time)
        for attr, (signal, _) in readout.settings.items():
            setattr(self, attr, signal)
        self._readout_trigger_logic = _ReadoutTriggerLogic(readout, frames_per_event)
        self.add_detector_logics(
            self._readout_trigger_logic,
            _ReadoutAcquireLogic(readout),
            _HDF5DataLogic(path_provider, readout),
        )
        super().__init__(name=name)

    @property
    def sensor(self) -> OphydDevice:
        """The in-memory detector: its settings, and its ``truth`` at the last frame."""
        return self._sensor

    @property
    def frames_per_event(self) -> int:
        """Frames per event when a plan does not ``prepare`` the detector."""
        return self._frames_per_event

    @AsyncStatus.wrap
    async def stage(self) -> None:
        """Reset, then prepare ``frames_per_event`` frames per event (opens a new file)."""
        await super().stage()
        await self.prepare(await self._readout_trigger_logic.default_trigger_info())


class MPBFileDetector(FileWritingDetector):
    """The MPB diffraction detector (97 x 243 px) writing its frames to HDF5 (ophyd-async).

    Frames come from :class:`~smartlab_plugins.devices.mpb.MPBDetector` (``sensor``)
    at the composition and temperature of ``stage``, with the same ``seed``. Data key
    ``mpb_image`` ([N, 97, 243] float32 counts, external); configuration
    ``mpb_count_time`` (s), which ``TriggerInfo.livetime`` sets when non-zero.
    """

    def __init__(
        self,
        stage: MPBStage,
        path_provider: PathProvider,
        *,
        seed: int = 0,
        config: MPBConfig | None = None,
        frames_per_event: int = 1,
        name: str = "mpb",
    ) -> None:
        super().__init__(
            MPBDetector(stage=stage, seed=seed, config=config, name=name),
            path_provider,
            frames_per_event=frames_per_event,
            exposure_time="count_time",
            name=name,
        )


class SEMFileCamera(FileWritingDetector):
    """The SEM camera writing its frames to HDF5 (ophyd-async).

    Frames come from :class:`~smartlab_plugins.devices.microscopy.SEMCamera`
    (``sensor``) at the position of ``stage``, same ``seed`` and ``sample_seed``. Data
    key ``camera_image`` ([N, F, F] float32, SE yield, external); configuration
    ``camera_dose`` and ``camera_readout_noise``, set on ``sensor`` (range-checked).
    The first frame of a specimen builds it (seconds, cached), as for ``SEMCamera``.
    """

    def __init__(
        self,
        stage: XYStage,
        path_provider: PathProvider,
        *,
        seed: int = 0,
        sample_seed: int | None = None,
        config: MicroscopyConfig | None = None,
        frames_per_event: int = 1,
        name: str = "camera",
    ) -> None:
        super().__init__(
            SEMCamera(stage, name=name, seed=seed, sample_seed=sample_seed, config=config),
            path_provider,
            frames_per_event=frames_per_event,
            name=name,
        )


# =========================================================================================
# ophyd v1: areaDetector-style resource/datum
# =========================================================================================
class MPBHDF5Detector(MPBDetector):
    """The MPB diffraction detector as an ophyd v1 areaDetector with its HDF5 plugin.

    Staging opens a new file ``<uuid>.h5`` in ``folder`` and composes a ``resource``
    (spec ``AD_HDF5``, ``root`` the folder, ``resource_path`` the file name,
    ``resource_kwargs={"frame_per_point": frames_per_event}``). Each trigger renders
    ``frames_per_event`` frames with :class:`~smartlab_plugins.devices.mpb.MPBDetector`'s
    own ``trigger()``, appends them to :data:`DATASET`, and composes a ``datum``
    (``datum_kwargs={"point_number": i}``, i counting events from 0); ``read()`` gives
    its ``datum_id`` as ``mpb_image``, which ``describe()`` gives as ``external:
    "FILESTORE:"`` with areaDetector's shape ``[frames_per_event, 97, 243]``. The
    documents come out through ``collect_asset_docs``; unstaging closes the file.
    Settings, truth and the omitted truth signals are ``MPBDetector``'s.
    """

    def __init__(
        self,
        prefix: str = "",
        *,
        stage: MPBStage,
        folder: Path | str,
        frames_per_event: int = 1,
        seed: int = 0,
        config: MPBConfig | None = None,
        name: str = "mpb",
        **kwargs: Any,
    ) -> None:
        super().__init__(prefix, stage=stage, seed=seed, config=config, name=name, **kwargs)
        self.folder = Path(folder).expanduser().resolve()
        self.frames_per_event = _checked_frames_per_event(frames_per_event)
        self._file: _FrameFile | None = None
        self._resource: ComposeResourceBundle | None = None
        self._point = 0
        self._datum_id: str | None = None
        self._asset_docs: list[Asset] = []

    def stage(self) -> list[object]:
        """Open a new HDF5 file and compose its ``resource`` document."""
        staged = super().stage()
        filename = f"{uuid.uuid4()}.h5"
        shape, dtype = _frame_layout(self)
        self._file = _FrameFile(self.folder / filename, shape, dtype)
        self._resource = compose_resource(
            spec="AD_HDF5",
            root=str(self.folder),
            resource_path=filename,
            resource_kwargs={"frame_per_point": self.frames_per_event},
        )
        self._asset_docs = [("resource", self._resource.resource_doc)]
        self._point = 0
        self._datum_id = None
        return staged

    def unstage(self) -> list[object]:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return super().unstage()

    def trigger(self) -> StatusBase:
        """Render and write ``frames_per_event`` frames, and compose their ``datum``."""
        if self._file is None or self._resource is None:
            raise RuntimeError(f"{self.name}: stage() before trigger(); staging opens the file")
        for _ in range(self.frames_per_event):
            status = super().trigger()
            self._file.append(self.image.get())
        datum = self._resource.compose_datum(datum_kwargs={"point_number": self._point})
        self._point += 1
        self._datum_id = datum["datum_id"]
        self._asset_docs.append(("datum", datum))
        return status

    def describe(self) -> dict[str, dict[str, Any]]:
        """``mpb_image`` as areaDetector describes a file-backed image."""
        description = super().describe()
        entry = description[self.image.name]
        entry.update(
            shape=[self.frames_per_event, *entry["shape"]],
            source=f"AD_HDF5:{self.folder}",
            external="FILESTORE:",
        )
        return description

    def read(self) -> dict[str, dict[str, Any]]:
        """The other signals as ``MPBDetector`` reads them; ``mpb_image``: the datum id."""
        if self._datum_id is None:
            raise RuntimeError(f"{self.name}: read() before trigger(); no frame written yet")
        reading = super().read()
        reading[self.image.name]["value"] = self._datum_id  # timestamp: the last frame's
        return reading

    def collect_asset_docs(self) -> Iterator[Asset]:
        """The ``resource`` and ``datum`` documents composed since the last call."""
        docs, self._asset_docs = self._asset_docs, []
        yield from docs


# =========================================================================================
# ready-to-use devices
# =========================================================================================
class FileDevices(TypedDict):
    """What :func:`make_file_devices` returns: the stages and the file-writing detectors.

    ``mpb`` (ophyd-async) and ``mpb_hdf5`` (ophyd v1) are two forms of the same
    detector, both named ``mpb`` (data key ``mpb_image``): use one per plan.
    """

    sample: MPBStage
    mpb: MPBFileDetector
    mpb_hdf5: MPBHDF5Detector
    xy: XYStage
    camera: SEMFileCamera


def make_file_devices(
    folder: Path | str,
    *,
    seed: int = 0,
    frames_per_event: int = 1,
    mpb_config: MPBConfig | None = None,
    microscopy_config: MicroscopyConfig | None = None,
    connect: bool = True,
) -> FileDevices:
    """Stages and file-writing detectors that write HDF5 files into ``folder``.

    ``folder`` is created if missing and resolved (no ``..``, no symlinks), so that the
    file URIs in the documents are the real paths, as a Tiled server checks them
    against its readable area. Each stage of a detector starts a new file there.

    The ophyd-async detectors are connected in the RunEngine's event loop, so create
    the ``RunEngine`` first::

        RE = RunEngine()
        devices = make_file_devices("/data/external/run42", frames_per_event=3)
        RE(bp.scan([devices["mpb"]], devices["sample"].x, 0.40, 0.55, 16))

    Inside a plan (e.g. a queueserver startup script run in the loop), pass
    ``connect=False`` and run ``yield from ophyd_async.plan_stubs.ensure_connected(
    devices["mpb"], devices["camera"])`` instead.
    """
    folder = Path(folder).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path_provider = StaticPathProvider(UUIDFilenameProvider(), folder)
    microscopy_config = microscopy_config or MicroscopyConfig()
    sample = MPBStage(name="sample")
    xy = XYStage(name="xy", travel_um=microscopy_config.travel_um)
    mpb_hdf5 = MPBHDF5Detector(
        stage=sample,
        folder=folder,
        frames_per_event=frames_per_event,
        seed=seed,
        config=mpb_config,
        name="mpb",
    )
    with init_devices(set_name=False) if connect else nullcontext():
        mpb = MPBFileDetector(
            sample,
            path_provider,
            seed=seed,
            config=mpb_config,
            frames_per_event=frames_per_event,
            name="mpb",
        )
        camera = SEMFileCamera(
            xy,
            path_provider,
            seed=seed,
            config=microscopy_config,
            frames_per_event=frames_per_event,
            name="camera",
        )
    return FileDevices(sample=sample, mpb=mpb, mpb_hdf5=mpb_hdf5, xy=xy, camera=camera)
