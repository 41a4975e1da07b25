"""The arrays of moving units on the wire: the ``payload`` of a ``MoveReply`` (give) and a ``MoveRequest`` (take).

A move carries, per unit (a dense block or a sparse row bucket, in the order of the
message's ``units``/``take`` list), a few named NumPy arrays: ``values``, ``state.<name>``,
``ids``, ``accesses`` and so on (``ps.shard.moves``). A page can hold thousands of small
units (a sparse table has 4096 row buckets), so the encoding costs one pass over the
bytes and no per-array parsing (an ``.npz`` costs about a millisecond per array to read)::

    u32 little-endian   length of the directory
    directory           JSON: [[unit, name, dtype, shape, offset], ...]
    zero padding        to a multiple of 8 bytes
    data                each array's bytes, C order, at its offset (8-byte aligned) from here

``dtype`` is NumPy's ``dtype.str`` (``"<f4"``, ``"<i8"``, ``"|b1"``): only booleans,
integers and floats, so nothing on the wire is ever unpickled. Pure functions; thread-safe.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from ps.errors import InvalidArgumentError

_LEN = struct.Struct("<I")
_KINDS = "biuf"


def _aligned(n: int) -> int:
    return -(-n // 8) * 8


def encode_units(units: Sequence[Mapping[str, np.ndarray]]) -> bytes:
    """The payload for ``units`` (per unit, its arrays by name): one copy of every array."""
    directory = []
    chunks: list = []
    offset = 0
    for i, arrays in enumerate(units):
        for name, arr in arrays.items():
            arr = np.asarray(arr, order="C")  # keeps 0-d arrays 0-d (ascontiguousarray would not)
            directory.append([i, name, arr.dtype.str, list(arr.shape), offset])
            chunks.append(arr.reshape(-1).view(np.uint8).data if arr.size else b"")
            pad = _aligned(arr.nbytes) - arr.nbytes
            if pad:
                chunks.append(bytes(pad))
            offset += arr.nbytes + pad
    head = json.dumps(directory, separators=(",", ":")).encode()
    lead = _LEN.pack(len(head)) + head
    return b"".join([lead, bytes(_aligned(len(lead)) - len(lead)), *chunks])


def decode_units(payload: bytes, count: int) -> list[dict[str, np.ndarray]]:
    """Per unit (``count`` of them, in order), its arrays by name: writable copies. Raises
    InvalidArgumentError for a payload that is not such an encoding (a bad directory, a
    dtype that is not bool/int/float, an array past the end, a unit out of range)."""
    view = memoryview(payload)
    try:
        (length,) = _LEN.unpack_from(view, 0)
        directory = json.loads(bytes(view[_LEN.size:_LEN.size + length]))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"malformed Move payload: {exc}") from None
    data = view[_aligned(_LEN.size + length):]
    out: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    if not isinstance(directory, list):
        raise InvalidArgumentError("malformed Move payload: the directory is not a list")
    for entry in directory:
        try:
            i, name, dtype, shape, offset = entry
            dtype = np.dtype(dtype)
            shape = tuple(int(d) for d in shape)
            i, offset = int(i), int(offset)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"malformed Move payload entry {entry!r}: {exc}") from None
        if dtype.kind not in _KINDS or not isinstance(name, str) or not 0 <= i < count or offset < 0 \
                or any(d < 0 for d in shape):
            raise InvalidArgumentError(f"malformed Move payload entry {entry!r}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + nbytes > len(data):
            raise InvalidArgumentError(f"malformed Move payload: {name!r} of unit {i} runs past the end")
        out[i][name] = np.frombuffer(data[offset:offset + nbytes], dtype=dtype).reshape(shape).copy()
    return out
