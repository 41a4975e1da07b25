"""The array-module seam: one code path for NumPy (CPU) and CuPy (CUDA GPU).

Model code never imports NumPy or CuPy for its arithmetic; it asks the arrays it was given
which module they belong to (`array_module`) and uses the functions NumPy and CuPy share.
CuPy is imported lazily, only by `get_xp("cuda")`, so every module imports on a CPU-only
machine. Nothing here blocks except the device-to-host copy in `to_host`, and every function
is thread-safe.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["DeviceUnavailableError", "array_module", "get_xp", "to_device", "to_host"]

DEVICES = ("cpu", "cuda")


class DeviceUnavailableError(RuntimeError):
    """The requested device cannot be used here (no CuPy, or no CUDA GPU)."""


def get_xp(device: str) -> ModuleType:
    """Return the array module for `device`: numpy for "cpu", cupy for "cuda".

    Raises `DeviceUnavailableError` when "cuda" is asked for and CuPy is not installed or
    sees no CUDA device, and `ValueError` for any other device name.
    """
    if device == "cpu":
        return np
    if device != "cuda":
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    try:
        import cupy  # noqa: PLC0415 - optional dependency, imported only when asked for

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, CUDARuntimeError, missing driver libraries, ...
        raise _unavailable(f"{type(exc).__name__}: {exc}") from exc
    if count < 1:
        raise _unavailable("no CUDA device found")
    return cupy


def _unavailable(reason: str) -> DeviceUnavailableError:
    reason = " ".join(str(reason).split()) or "unknown error"
    return DeviceUnavailableError(
        f"--device cuda needs CuPy and a CUDA GPU: {reason}; "
        "install with pip install 'grpc-ps[cuda]'"
    )


def array_module(a: Any) -> ModuleType:
    """Return the module `a` belongs to: cupy for CuPy arrays, numpy for everything else.

    Never imports CuPy: if it has not been imported already, `a` cannot be a CuPy array.
    """
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return np
    return cupy.get_array_module(a)


def to_host(a: Any) -> np.ndarray:
    """Return `a` as a NumPy array (a no-copy view when it already is one).

    For a CuPy array this copies device to host and blocks until the copy is done.
    """
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    if callable(get) and array_module(a) is not np:
        return get()
    return np.asarray(a)


def to_device(a: Any, xp: ModuleType) -> Any:
    """Return `a` as an array of module `xp` (no copy when it already lives there)."""
    if xp is np:
        return to_host(a)
    return xp.asarray(a)
