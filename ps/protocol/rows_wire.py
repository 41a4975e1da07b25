"""Sparse rows on the wire: ``RowsRequest`` / ``RowsReply`` with a framed payload.

Both messages are ``{ header = 1 (RowsHeader); payload = 2 (bytes) }`` like every tensor
message (:mod:`ps.protocol.wire`). A request's payload is ``num_ids`` int64 ids (little-endian),
then, for a push, ``num_ids x dim`` values of ``dtype`` in C order; a pull reply's
payload is the ``num_ids x dim`` values. Ids and values are read with ``np.frombuffer``
(zero-copy, read-only views).

Pure functions; thread-safe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.protocol.wire import decode_framed, encode_framed, np_dtype

_ID = np.dtype("<i8")


def encode_rows(header: ps_pb2.RowsHeader, ids: np.ndarray | None, values: np.ndarray | None) -> bytes:
    """A RowsRequest/RowsReply as bytes: ``ids`` (int64) then ``values``, each copied once.

    The arrays must be C-contiguous and little-endian (``ascontiguousarray`` them first).
    """
    buffers: list[Any] = []
    if ids is not None and len(ids):
        buffers.append(ids)
    if values is not None and values.size:
        buffers.append(values)
    return encode_framed(header.SerializeToString(), buffers)


def decode_rows(data: bytes) -> tuple[ps_pb2.RowsHeader, memoryview]:
    """Parse a RowsRequest or RowsReply: returns (header, payload view).

    Raises InvalidArgumentError when the bytes are not such a message.
    """
    try:
        return decode_framed(data, ps_pb2.RowsHeader)
    except KeyError:  # ps.protocol.wire's protobuf fallback does not know RowsHeader: parse it here
        pass
    try:
        msg = ps_pb2.RowsRequest.FromString(data)
    except Exception as exc:
        raise InvalidArgumentError(f"malformed RowsRequest: {exc}") from None
    return msg.header, memoryview(msg.payload)


def split_rows(header: ps_pb2.RowsHeader, payload: memoryview, *, with_ids: bool,
               with_values: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(ids, values)`` views over ``payload`` as ``header`` describes them.

    ``ids`` is int64 ``(num_ids,)``; ``values`` is ``(num_ids, dim)`` of ``header.dtype``.
    Raises InvalidArgumentError for a negative count or width, an unknown dtype, or a
    payload whose byte length differs from what the header describes.
    """
    n, dim = header.num_ids, header.dim
    if n < 0:
        raise InvalidArgumentError(f"{header.table}: negative num_ids {n}")
    if with_values and dim < 1:
        raise InvalidArgumentError(f"{header.table}: row width (dim) must be >= 1, got {dim}")
    dtype = np_dtype(header.dtype) if with_values else None
    id_bytes = n * _ID.itemsize if with_ids else 0
    value_bytes = n * dim * dtype.itemsize if dtype is not None else 0
    if payload.nbytes != id_bytes + value_bytes:
        raise InvalidArgumentError(
            f"{header.table}: payload is {payload.nbytes} bytes but the header describes {id_bytes + value_bytes} "
            f"({n} ids" + (f" x row width {dim} of {dtype.name})" if dtype is not None else ")")
        )
    ids = np.frombuffer(payload, dtype=_ID, count=n) if with_ids else None
    values = None
    if dtype is not None:
        values = np.frombuffer(payload, dtype=dtype, count=n * dim, offset=id_bytes).reshape(n, dim)
    if ids is not None and ids.dtype != np.int64:  # a big-endian host
        ids = ids.astype(np.int64)
    return ids, values
