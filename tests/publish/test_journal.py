"""The results journal on real files: safe and bad rounds, adopted folders, a full disk."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from smartlab_plugins.publish import journal
from smartlab_plugins.publish.journal import CorruptRound, Journal, JournalError, JournalFull

URI = "http://tiled.example:8000"


class _RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _container(header: dict[str, Any], payload: bytes) -> bytes:
    """A round file built from the format the module documents, independently of its writer."""
    encoded = json.dumps(header).encode()
    body = b"SLROUND\n" + struct.pack(">Q", len(encoded)) + encoded + payload
    return body + hashlib.sha256(body).digest()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _orphan(root: Path, records: list[dict[str, Any]]) -> Path:
    """A journal folder with one round, left by a process that has died; returns the folder."""
    left = Journal(root, URI)
    left.add(records)
    owner = json.loads((left.dir / journal.OWNER_FILE).read_text())
    owner["pid"] = _dead_pid()
    (left.dir / journal.OWNER_FILE).write_text(json.dumps(owner))
    return left.dir


def _records() -> list[dict[str, Any]]:
    return [
        {
            "op": "append",
            "path": ("run", "primary", "events"),
            "rows": pd.DataFrame(
                {
                    "seq_num": [1, 2, 3],
                    "peak": [0.5, np.nan, 2.0],
                    "ok": [True, False, True],
                    "label": ["a", "b", "c"],
                }
            ),
            "meta": {"plugin": "peak_stats", "sha256": None, "n": 3, "nested": {"x": [1.5, -2]}},
        },
        {
            "op": "write_array",
            "image": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "mask": np.array([[True, False]]),
            "counts": np.array([1, 2, 3], dtype=np.uint16),
            "scalar": np.float64(1.25),
        },
        {"op": "table", "table": pa.table({"t": [0.1, 0.2], "name": ["x", None]})},
    ]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "journals"
    folder.mkdir(mode=0o700)
    return folder


def test_round_trip_keeps_frames_arrays_tables_and_json(root: Path) -> None:
    j = Journal(root, URI)
    path = j.add(_records())
    assert path.suffix == journal.ROUND_SUFFIX and journal.rounds_in(j.dir) == [path]
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(j.dir.glob("*.partial"))

    first, second, third = journal.load(path)
    pd.testing.assert_frame_equal(first["rows"], _records()[0]["rows"])
    assert first["path"] == ["run", "primary", "events"]
    assert first["meta"] == _records()[0]["meta"]
    for key in ("image", "mask", "counts"):
        expected = _records()[1][key]
        assert isinstance(second[key], np.ndarray)
        assert second[key].dtype == expected.dtype and second[key].shape == expected.shape
        np.testing.assert_array_equal(second[key], expected)
    assert second["scalar"] == 1.25
    assert isinstance(third["table"], pa.Table) and third["table"].equals(_records()[2]["table"])


def test_values_a_round_cannot_hold_are_refused_before_writing(root: Path) -> None:
    j = Journal(root, URI)
    for bad in (
        {"a": np.array([object()], dtype=object)},
        {"a": {1, 2}},
        {"a": {1: "int key"}},
        {"a": [np.zeros(2)]},
    ):
        with pytest.raises(TypeError, match="record 0, key 'a'"):
            j.add([bad])
    assert list(j.dir.iterdir()) == [j.dir / journal.OWNER_FILE]


def test_a_pickle_is_never_loaded(root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = _RunsCode(marker)
    as_file = root / f"000000001{journal.ROUND_SUFFIX}"
    as_file.write_bytes(pickle.dumps([evil]))
    with pytest.raises(CorruptRound, match="not a SmartLab round"):
        journal.load(as_file)

    # A well-formed round with a correct checksum whose array is a pickle of objects.
    npy = io.BytesIO()
    np.save(npy, np.array([evil], dtype=object), allow_pickle=True)
    blob = {"record": 0, "key": "a", "kind": "ndarray", "offset": 0, "length": len(npy.getvalue())}
    crafted = root / f"000000002{journal.ROUND_SUFFIX}"
    crafted.write_bytes(_container({"format": 1, "records": [{}], "blobs": [blob]}, npy.getvalue()))
    with pytest.raises(CorruptRound, match="cannot decode") as caught:
        journal.load(crafted)
    assert caught.value.path == crafted
    assert not marker.exists()
    pickle.loads(as_file.read_bytes())  # the test's own check: unpickling it does run code
    assert marker.exists()


def test_truncated_altered_and_unknown_rounds_are_corrupt(root: Path) -> None:
    j = Journal(root, URI)
    good = j.add(_records())
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "truncated to nothing": data[:10],
        "flipped in the payload": bytearray(data),
        "flipped in the header": bytearray(data),
    }
    cases["flipped in the payload"][-100] ^= 0x01
    cases["flipped in the header"][20] ^= 0x01
    for name, content in cases.items():
        bad = root / f"{name}{journal.ROUND_SUFFIX}"
        bad.write_bytes(bytes(content))
        with pytest.raises(CorruptRound) as caught:
            journal.load(bad)
        assert caught.value.path == bad and caught.value.reason, name

    future = root / f"future{journal.ROUND_SUFFIX}"
    future.write_bytes(_container({"format": 2, "records": [], "blobs": []}, b""))
    with pytest.raises(CorruptRound, match="unknown format version 2"):
        journal.load(future)
    nonsense = root / f"nonsense{journal.ROUND_SUFFIX}"
    blob = {"record": 3, "key": "a", "kind": "ndarray", "offset": 0, "length": 0}
    nonsense.write_bytes(_container({"format": 1, "records": [{}], "blobs": [blob]}, b""))
    with pytest.raises(CorruptRound, match="outside the round"):
        journal.load(nonsense)


def test_quarantine_moves_the_round_and_logs_why(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    j = Journal(root, URI)
    path = j.add([{"a": 1}])
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptRound) as caught:
        journal.load(path)

    with caplog.at_level(logging.ERROR, logger=journal.__name__):
        moved = j.quarantine(path, caught.value.reason)
    assert not path.exists() and moved.read_bytes()
    assert moved.parent == root / journal.QUARANTINE_DIR and moved.name.endswith(path.name)
    assert (moved.parent.stat().st_mode & 0o777) == 0o700
    assert str(path) in caplog.text and str(moved) in caplog.text and "checksum" in caplog.text
    assert journal.rounds_in(j.dir) == []

    second = j.quarantine(j.add([{"a": 2}]), "test")
    assert second != moved and moved.exists() and second.exists()


def test_adopts_a_dead_publishers_folder(root: Path) -> None:
    orphan = _orphan(root, [{"a": np.arange(3)}])
    j = Journal(root, URI)
    rounds = j.adopt_orphans()
    assert len(rounds) == 1 and not orphan.exists()
    np.testing.assert_array_equal(journal.load(rounds[0])[0]["a"], np.arange(3))
    j.remove(rounds[0])
    assert not rounds[0].parent.exists()


def test_old_pickle_rounds_are_set_aside_not_loaded(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "code-ran"
    orphan = _orphan(root, [{"a": 1}])
    (orphan / "000000000.pkl").write_bytes(pickle.dumps([_RunsCode(marker)]))
    with caplog.at_level(logging.WARNING, logger=journal.__name__):
        rounds = Journal(root, URI).adopt_orphans()
    assert [journal.load(path) for path in rounds] == [[{"a": 1}]]
    assert "pickles" in caplog.text
    assert [p.name[-13:] for p in (root / journal.QUARANTINE_DIR).iterdir()] == ["000000000.pkl"]
    assert not marker.exists()


def _refused(root: Path, caplog: pytest.LogCaptureFixture, why: str) -> None:
    with caplog.at_level(logging.ERROR, logger=journal.__name__):
        assert Journal(root, URI).adopt_orphans() == []
    assert why in caplog.text, caplog.text


def test_refuses_a_world_writable_folder(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    orphan = _orphan(root, [{"a": 1}])
    orphan.chmod(0o777)
    _refused(root, caplog, "group or others may write")
    assert str(orphan) in caplog.text and journal.rounds_in(orphan)


def test_refuses_a_folder_of_another_user(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    orphan = _orphan(root, [{"a": 1}])
    try:
        os.chown(orphan, 65534, 65534)
    except PermissionError:
        pytest.skip("cannot give a folder to another user (not running as root)")
    _refused(root, caplog, "belongs to uid 65534")
    assert journal.rounds_in(orphan)


def test_refuses_a_round_of_another_user(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    orphan = _orphan(root, [{"a": 1}])
    try:
        os.chown(journal.rounds_in(orphan)[0], 65534, 65534)
    except PermissionError:
        pytest.skip("cannot give a file to another user (not running as root)")
    _refused(root, caplog, "000000001.round: it belongs to uid 65534")


def test_refuses_a_symlinked_folder(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    orphan = _orphan(elsewhere, [{"a": 1}])
    link = root / orphan.name
    link.symlink_to(orphan, target_is_directory=True)
    _refused(root, caplog, "symbolic link")
    assert link.is_symlink() and journal.rounds_in(orphan)


def test_refuses_everything_in_a_spool_folder_others_may_write(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    orphan = _orphan(root, [{"a": 1}])
    root.chmod(0o777)
    _refused(root, caplog, "not adopting any results journal")
    assert journal.rounds_in(orphan)
    assert journal.load(Journal(root, URI).add([{"b": 2}])) == [{"b": 2}]  # its own still works


def test_unusable_spool_folder_is_a_journal_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "spool"
    not_a_folder.write_text("")
    with pytest.raises(JournalError, match=str(not_a_folder)):
        Journal(not_a_folder, URI)


def test_a_failed_write_leaves_no_partial_file(root: Path) -> None:
    j = Journal(root, URI)
    (j.dir / f"000000001{journal.ROUND_SUFFIX}").mkdir()  # os.replace onto a folder fails
    with pytest.raises(OSError, match=str(j.dir)) as caught:
        j.add([{"a": 1}])
    assert not isinstance(caught.value, JournalFull)
    assert not list(j.dir.glob("*.partial"))


def test_full_disk_raises_journal_full_and_leaves_nothing(small_disk: Path) -> None:
    j = Journal(small_disk / "spool", URI)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as full:
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(JournalFull, match=str(j.dir)) as caught:
        j.add([{"image": np.zeros(16384)}])
    assert caught.value.errno == errno.ENOSPC
    assert journal.rounds_in(j.dir) == [] and not list(j.dir.glob("*.partial"))

    filler.unlink()
    path = j.add([{"image": np.zeros(16384)}])
    assert journal.load(path)[0]["image"].shape == (16384,)
    shutil.rmtree(j.dir)
