"""What a model is: named parameter specs plus a loss with its gradients.

A model holds no weights. It declares its parameters as `ParamSpec`s (the servers create
tables from them) and computes `loss_and_grads` from weights it is handed, so the same
object serves every worker and the single-process reference. Array arithmetic goes through
the module of the arrays it is given (see `worker.xp`), so it runs on NumPy or CuPy alike.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["INITS", "Model", "ParamSpec", "check_size", "init_array", "init_params"]

INITS = ("zeros", "normal", "uniform", "glorot")


@dataclass(frozen=True)
class ParamSpec:
    """Shape and initialiser of one parameter.

    `init` is one of "zeros", "normal" (std `scale`), "uniform" (on [-scale, scale]) or
    "glorot" (uniform on [-limit, limit] with limit = sqrt(6 / (fan_in + fan_out)),
    fan_in = shape[0], fan_out = shape[-1]; `scale` is ignored, as it is for "zeros").
    Raises `ValueError` for an empty or non-positive shape, an unknown init or a negative
    or non-finite scale.
    """

    shape: tuple[int, ...]
    init: str = "zeros"
    scale: float = 0.0

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"shape must be non-empty with positive sizes, got {self.shape!r}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose from {', '.join(INITS)}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"scale must be finite and >= 0, got {self.scale!r}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "scale", float(self.scale))


@runtime_checkable
class Model(Protocol):
    """A differentiable model over named parameters.

    `task` is "classification" (labels are int class indices, `predict` returns them) or
    "regression" (`predict` returns values). Arrays may be NumPy or CuPy; a model takes its
    array module from its inputs and returns arrays of the same module. Inputs `x` are cast
    to the parameters' dtype; gradients keep the parameters' shapes and dtypes.
    """

    task: str

    def parameters(self) -> dict[str, ParamSpec]:
        """Return the parameter specs by name, in a fixed order."""
        ...

    def loss_and_grads(
        self, params: dict[str, Any], x: Any, y: Any
    ) -> tuple[float, dict[str, Any]]:
        """Return the mean loss over the batch (a Python float) and its gradients by name."""
        ...

    def predict(self, params: dict[str, Any], x: Any) -> Any:
        """Return class indices (classification) or predicted values (regression) for `x`."""
        ...


def init_array(name: str, spec: ParamSpec, seed: int, dtype: Any = np.float32) -> np.ndarray:
    """Materialise one parameter with NumPy, deterministically from `(seed, name)`.

    Each parameter draws from its own stream, seeded by `seed` and the crc32 of its name,
    so the values do not depend on which other parameters exist or in what order they are
    made. Raises `ValueError` for a negative seed.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    dtype = np.dtype(dtype)
    if spec.init == "zeros":
        return np.zeros(spec.shape, dtype=dtype)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    if spec.init == "normal":
        values = rng.normal(0.0, spec.scale, size=spec.shape)
    else:
        if spec.init == "uniform":
            limit = spec.scale
        else:  # glorot
            limit = math.sqrt(6.0 / (spec.shape[0] + spec.shape[-1]))
        values = rng.uniform(-limit, limit, size=spec.shape)
    return values.astype(dtype)


def init_params(model: Model, seed: int, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Materialise all of `model`'s parameters locally with NumPy (see `init_array`)."""
    return {name: init_array(name, spec, seed, dtype) for name, spec in model.parameters().items()}


def check_size(what: str, value: Any) -> int:
    """Return `value` as an int if it is an integer >= 1; raise `ValueError` naming `what`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)
