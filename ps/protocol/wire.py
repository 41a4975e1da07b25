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

import struct as _struct
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
_BY_DTYPE: dict[Any, int] = {**_WIRE_DTYPES, np.dtype("<f4"): ps_pb2.FLOAT32, np.dtype("<f8"): ps_pb2.FLOAT64}


def wire_dtype(dtype: Any) -> int:
    """The wire enum for a NumPy dtype (or its name). Raises InvalidArgumentError if unsupported."""
    fast = _BY_DTYPE.get(dtype) if isinstance(dtype, (np.dtype, str)) else None
    if fast is not None:
        return fast
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _WIRE_DTYPES:
        raise InvalidArgumentError(f"unsupported dtype {name!r}; tables hold float32 or float64")
    return _WIRE_DTYPES[name]


def dtype_refusal(table: str, got: np.dtype, want: str) -> InvalidArgumentError:
    """The error for a gradient of dtype ``got`` pushed to a table of dtype ``want``, saying
    how to fix it (NumPy computes in float64 unless told otherwise)."""
    return InvalidArgumentError(f"{table}: gradient dtype {got.name}, table dtype {want}: convert the gradient "
                                f"with .astype(np.{want}), or create the table with dtype={got.name!r}")


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


# -- the same-host data plane ---------------------------------------------------------------
#
# A worker on the same machine as a shard may move tensor bytes through a shared-memory
# region instead of the gRPC message (see ps.serving.local_plane and worker.planes.local_plane). The
# control messages are the protocol's own protobuf headers (PushHeader, PullHeader,
# PushReply, PullReplyHeader); each travels over a unix socket behind this fixed frame:
#
#   request:  kind u8, flags u8, pad u16, message length u32, timeout_s f64,
#             push offset u64, push bytes u64, pull offset u64, pull capacity u64
#   reply:    kind u8, flags u8, status u16 (gRPC code; 0 = OK), message length u32,
#             push outcome u32, pad u32, push version i64
#
# followed by the message bytes (an error's UTF-8 details when status != 0). An attach
# request passes the region's file descriptor (SCM_RIGHTS), its size in "push bytes" and
# its layout as JSON ``{"tables": {name: [push offset, pull offset, bytes]}}``. Pull and
# push-pull requests and replies put the shard's state token (``with_token``) before the
# message: known block versions count only under the token they were read at.

LOCAL_HELLO, LOCAL_ATTACH, LOCAL_PUSH, LOCAL_PULL, LOCAL_PUSH_PULL = 1, 2, 3, 4, 5
#: the TCP plane's kinds (ps.serving.stream_plane): the same frames, no attach
STREAM_HELLO, STREAM_PUSH, STREAM_PULL, STREAM_PUSH_PULL = LOCAL_HELLO, LOCAL_PUSH, LOCAL_PULL, LOCAL_PUSH_PULL
#: flags bit: the worker sends ``known`` block versions that hold in its pull area
LOCAL_FLAG_KNOWN = 1
_REQUEST = _struct.Struct("<BBHIdQQQQ")
_REPLY = _struct.Struct("<BBHIIIq")
LOCAL_REQUEST_SIZE = _REQUEST.size
LOCAL_REPLY_SIZE = _REPLY.size
#: the largest control message either side accepts (headers only; payloads are in shm)
LOCAL_MAX_MESSAGE = 16 << 20


def pack_local_request(kind: int, message: bytes, timeout_s: float, push_offset: int = 0, push_bytes: int = 0,
                       pull_offset: int = 0, pull_capacity: int = 0, flags: int = 0) -> bytes:
    """A request frame followed by its message bytes."""
    return _REQUEST.pack(kind, flags, 0, len(message), timeout_s, push_offset, push_bytes, pull_offset,
                         pull_capacity) + message


def unpack_local_request(frame: bytes) -> tuple[int, int, int, float, int, int, int, int]:
    """(kind, flags, message length, timeout_s, push offset, push bytes, pull offset, pull capacity)."""
    kind, flags, _, length, timeout_s, po, pb, qo, qc = _REQUEST.unpack(frame)
    return kind, flags, length, timeout_s, po, pb, qo, qc


def pack_local_reply(kind: int, message: bytes, status: int = 0, outcome: int = 0, version: int = 0,
                     reason: int = 0) -> bytes:
    """A reply frame followed by its message. An error reply (``status`` != 0) has the details
    as its message and the error's :class:`ps.errors.Reason` number in ``reason``."""
    return _REPLY.pack(kind, 0, status, len(message), outcome, reason, version) + message


def local_reply_reason(frame: bytes) -> int:
    """The :class:`ps.errors.Reason` number of an error reply frame (0: none)."""
    return _REPLY.unpack(frame)[5]


def unpack_local_reply(frame: bytes) -> tuple[int, int, int, int, int]:
    """(kind, status, message length, push outcome, push version)."""
    kind, _, status, length, outcome, _, version = _REPLY.unpack(frame)
    return kind, status, length, outcome, version


def with_token(token: str, message: bytes) -> bytes:
    """``message`` behind a length-prefixed state token (pull requests and replies)."""
    raw = token.encode()
    return len(raw).to_bytes(2, "little") + raw + message


def split_token(body: bytes) -> tuple[str, bytes]:
    """Inverse of :func:`with_token`. Raises ValueError when the body is too short."""
    if len(body) < 2:
        raise ValueError("missing state token")
    n = int.from_bytes(body[:2], "little")
    if len(body) < 2 + n:
        raise ValueError("truncated state token")
    return body[2 : 2 + n].decode(), body[2 + n :]
