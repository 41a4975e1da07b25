"""The arrays at the two ends of a dense step: checked gradients in, writable weights out.

:func:`flatten_grads` turns the caller's gradients into flat little-endian views (copying
only when needed); :func:`outputs` picks where pulled weights land: the caller's ``out``
arrays, the shared-memory arrays that ``Client.buffers`` handed out, or fresh arrays.
Pure: no I/O, nothing blocks. Raises :class:`~ps.errors.InvalidArgumentError` for a
shape, dtype or layout that does not match the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ps.errors import InvalidArgumentError
from ps.protocol.wire import dtype_refusal

if TYPE_CHECKING:
    from worker.client.client import Client


def flatten_grads(client: Client, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Checked, contiguous little-endian 1-D views of the gradients (copies only if needed)."""
    flat: dict[str, np.ndarray] = {}
    for name, grad in grads.items():
        spec = client.spec(name)
        arr = np.asarray(grad)
        if arr.shape != spec.shape:
            raise InvalidArgumentError(f"{name}: gradient shape {arr.shape}, table shape {spec.shape}")
        if arr.dtype != np.dtype(spec.dtype):
            raise dtype_refusal(name, arr.dtype, spec.dtype)
        flat[name] = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(-1)
    return flat


def outputs(client: Client, names: list[str], out: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Flat writable destinations: the caller's ``out`` arrays (checked) or fresh ones."""
    dest = {}
    for name in names:
        spec = client.spec(name)
        given = None if out is None else out.get(name)
        if given is None:
            dest[name] = np.empty(spec.size, dtype=spec.dtype)
            continue
        alias = _weights_alias(client, name, given)
        if alias is not None:  # an array from buffers(): read-only to the user, not to us
            dest[name] = alias
            continue
        if (not isinstance(given, np.ndarray) or given.shape != spec.shape or given.dtype != np.dtype(spec.dtype)
                or not given.flags.c_contiguous or not given.flags.writeable):
            raise InvalidArgumentError(f"out[{name!r}] must be a writable C-contiguous {spec.dtype} array "
                                       f"of shape {spec.shape}")
        dest[name] = given.reshape(-1)
    return dest


def _weights_alias(client: Client, name: str, given) -> np.ndarray | None:
    """The writable flat array behind a weights array that ``buffers()`` handed out."""
    if not isinstance(given, np.ndarray):
        return None
    alias = client._weights.get((name, given.__array_interface__["data"][0]))
    if alias is None or alias.size != given.size or alias.dtype != given.dtype:
        return None
    return alias
