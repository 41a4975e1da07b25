"""The array-module seam: NumPy on the CPU, a clear error when CUDA is asked for and absent."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from worker.xp import DeviceUnavailableError, array_module, get_xp, to_device, to_host


def test_cpu_is_numpy() -> None:
    assert get_xp("cpu") is np


def test_array_module_of_numpy_input_is_numpy() -> None:
    assert array_module(np.zeros(3)) is np
    assert array_module(np.float32(1.0)) is np


def test_array_module_does_not_import_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert array_module(np.zeros(2)) is np
    assert "cupy" not in sys.modules


def test_cuda_without_cupy_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(DeviceUnavailableError) as info:
        get_xp("cuda")
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert message.startswith("--device cuda needs CuPy and a CUDA GPU: ")
    assert "pip install 'grpc-ps[cuda]'" in message and "\n" not in message


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        get_xp("tpu")


def test_host_and_device_copies_on_cpu() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert to_host(a) is a
    assert to_device(a, np) is a
    assert np.array_equal(to_host([1, 2]), np.array([1, 2]))
