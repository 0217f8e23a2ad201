"""Documents waiting on local disk while analysis is behind (the front door's overflow)."""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path
from typing import Any


class DiskQueue:
    """A first-in, first-out queue of picklable items in one local file.

    For documents waiting while analysis is behind: :meth:`put` appends to
    the file, :meth:`take` reads the oldest, and the file is emptied whenever
    the reader catches up. Not thread-safe by itself: its user locks.
    """

    def __init__(self, root: Path, prefix: str = "overflow") -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = root / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}.pkl"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "r+b")
        self._read_at = 0
        self._count = 0
        self.bytes_written = 0

    def __len__(self) -> int:
        return self._count

    def put(self, item: Any) -> None:
        """Append ``item``; raises whatever pickling it raises, leaving the queue unchanged."""
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.seek(0, os.SEEK_END)
        self._file.write(len(data).to_bytes(8, "little") + data)
        self._count += 1
        self.bytes_written += len(data)

    def take(self, most: int) -> list[Any]:
        """Up to ``most`` of the oldest items."""
        self._file.flush()
        self._file.seek(self._read_at)
        items = []
        while len(items) < most and self._count:
            size = int.from_bytes(self._file.read(8), "little")
            items.append(pickle.loads(self._file.read(size)))
            self._count -= 1
        self._read_at = self._file.tell()
        if not self._count:  # caught up: start the file again
            self._file.seek(0)
            self._file.truncate()
            self._read_at = 0
        return items

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)
