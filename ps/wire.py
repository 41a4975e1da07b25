"""Tensor payloads on the wire: raw little-endian C-order bytes beside a small header.

A request or reply that carries tensors is the protobuf message
``{ header = 1 (a message); payload = 2 (bytes) }`` where the payload is the blocks' bytes
back to back in the header's order. :func:`encode_framed` writes that message with a
single copy of the tensor bytes (no intermediate protobuf object holds them), and
:func:`decode_framed` returns the payload as a zero-copy ``memoryview`` into the received
buffer, so :func:`split_payload` can hand out ``np.frombuffer`` views. Any other protobuf
encoder or decoder (grpcurl, another language) interoperates: these are ordinary messages.

Pure functions; thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError

#: wire dtype -> NumPy dtype (always little-endian on the wire)
NP_DTYPES: dict[int, np.dtype] = {
    ps_pb2.FLOAT32: np.dtype("<f4"),
    ps_pb2.FLOAT64: np.dtype("<f8"),
}
_WIRE_DTYPES: dict[str, int] = {"float32": ps_pb2.FLOAT32, "float64": ps_pb2.FLOAT64}


def wire_dtype(dtype: Any) -> int:
    """The wire enum for a NumPy dtype (or its name). Raises InvalidArgumentError if unsupported."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _WIRE_DTYPES:
        raise InvalidArgumentError(f"unsupported dtype {name!r}; tables hold float32 or float64")
    return _WIRE_DTYPES[name]


def np_dtype(wire: int) -> np.dtype:
    """The NumPy dtype for a wire enum. Raises InvalidArgumentError if unknown."""
    try:
        return NP_DTYPES[wire]
    except KeyError:
        raise InvalidArgumentError(f"unknown dtype enum {wire}") from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def encode_framed(header: bytes, buffers: Sequence[Any]) -> bytes:
    """``{header = 1; payload = 2}`` as protobuf bytes; ``buffers`` are contiguous bytes-likes.

    Copies each buffer once, into the returned bytes.
    """
    total = sum(memoryview(b).nbytes for b in buffers)
    parts: list[Any] = [b"\x0a", _varint(len(header)), header]
    if total:
        parts += [b"\x12", _varint(total), *buffers]
    return b"".join(parts)


def decode_framed(data: bytes, message_type: type) -> tuple[Any, memoryview]:
    """Parse ``{header = 1; payload = 2}``: returns (header message, payload view).

    Takes the single-copy path when the fields come as this module writes them (the order
    protobuf itself uses), and otherwise falls back to the protobuf parser.
    Raises InvalidArgumentError when the bytes are not such a message.
    """
    view = memoryview(data)
    try:
        header = None
        payload = memoryview(b"")
        pos = 0
        while pos < len(view):
            tag, pos = _read_varint(view, pos)
            if tag not in (0x0A, 0x12):
                raise ValueError("unexpected field")
            length, pos = _read_varint(view, pos)
            if pos + length > len(view):
                raise ValueError("truncated field")
            field = view[pos : pos + length]
            pos += length
            if tag == 0x0A:
                if header is not None:
                    raise ValueError("repeated header")  # protobuf merges: let it do so
                header = message_type.FromString(field)
            else:
                payload = field
        return (header if header is not None else message_type()), payload
    except Exception:
        pass
    outer = _OUTER[message_type]
    try:
        msg = outer.FromString(data)
    except Exception as exc:
        raise InvalidArgumentError(f"malformed {outer.DESCRIPTOR.name}: {exc}") from None
    return msg.header, memoryview(msg.payload)


_OUTER: dict[type, type] = {
    ps_pb2.PushHeader: ps_pb2.PushRequest,
    ps_pb2.PullReplyHeader: ps_pb2.PullReply,
}


def split_payload(blocks: Sequence[Any], payload: memoryview) -> list[np.ndarray]:
    """Read-only ``np.frombuffer`` views, one per ``BlockRef``, over the payload.

    Raises InvalidArgumentError for an unknown dtype, a negative count or when the
    byte length of the payload differs from what the header describes.
    """
    out = []
    offset = 0
    size = payload.nbytes
    for ref in blocks:
        dtype = np_dtype(ref.dtype)
        if ref.count < 0:
            raise InvalidArgumentError(f"{ref.table}[block {ref.block}]: negative element count {ref.count}")
        nbytes = ref.count * dtype.itemsize
        if offset + nbytes > size:
            raise InvalidArgumentError(
                f"payload is {size} bytes but the header describes at least {offset + nbytes}"
            )
        if ref.count:
            out.append(np.frombuffer(payload, dtype=dtype, count=ref.count, offset=offset))
        else:
            out.append(np.empty(0, dtype=dtype))
        offset += nbytes
    if offset != size:
        raise InvalidArgumentError(f"payload is {size} bytes but the header describes {offset}")
    return out
