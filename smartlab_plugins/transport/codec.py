"""Documents as bytes on the bus: msgpack, with numpy arrays as raw buffers.

Nothing read from the network is unpickled. An array travels as an msgpack
extension holding its dtype string, its shape and its bytes; object arrays
(which only pickle could carry) are refused on the way in. A message that
does not decode to a ``(name, document)`` pair is a :class:`MalformedMessage`,
which the worker logs, acknowledges and skips.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

ARRAY_EXT = 1
#: The fields of one stream entry.
NAME, DOC, RUN, SOURCE, COUNT = b"name", b"doc", b"run", b"src", b"n"


class MalformedMessage(ValueError):
    """A stream entry that is not a document this transport wrote; the reason is the message."""


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"cannot send an array of dtype {value.dtype} (objects) over the bus")
        array = np.ascontiguousarray(value)
        header = msgpack.packb([array.dtype.str, list(array.shape)])
        return msgpack.ExtType(ARRAY_EXT, header + array.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot send a {type(value).__name__} over the bus")


def _ext_hook(code: int, data: bytes) -> Any:
    if code != ARRAY_EXT:
        raise MalformedMessage(f"unknown msgpack extension type {code}")
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    dtype, shape = unpacker.unpack()
    offset = unpacker.tell()
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise MalformedMessage(f"refused an array of dtype {dtype} (objects)")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape).copy()


def encode(doc: Mapping[str, Any]) -> bytes:
    """A document as bytes; raises TypeError for what only pickle could carry."""
    return msgpack.packb(doc, default=_default, use_bin_type=True)


def decode(fields: Mapping[bytes, bytes]) -> tuple[str, dict[str, Any]]:
    """The ``(name, document)`` of a stream entry, or MalformedMessage saying what is wrong."""
    try:
        name = fields[NAME].decode()
        raw = fields[DOC]
    except KeyError as exc:
        raise MalformedMessage(f"no {exc.args[0].decode()!r} field") from None
    except UnicodeDecodeError:
        raise MalformedMessage("the document name is not UTF-8 text") from None
    try:
        doc = msgpack.unpackb(raw, ext_hook=_ext_hook, raw=False, strict_map_key=True)
    except MalformedMessage:
        raise
    except Exception as exc:
        raise MalformedMessage(f"undecodable document: {type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedMessage(f"the {name!r} document is a {type(doc).__name__}, not a mapping")
    return name, doc
