"""Linear regression with a squared-error loss.

Prediction is `x @ w + b`. For a batch of n rows with residuals r = x @ w + b - y the loss is

    loss = 0.5 / n * sum over rows and outputs of r**2

(half the mean over the batch of the per-row sum of squared errors; for one output this is
half the mean squared error), so dloss/dw = x.T @ r / n and dloss/db = sum_rows(r) / n.
"""

from __future__ import annotations

from typing import Any

from worker.models.base import ParamSpec, check_size
from worker.xp import array_module

__all__ = ["LinearRegression"]


class LinearRegression:
    """`x @ w + b` with w of shape (num_features, num_outputs) and b of shape (num_outputs,).

    Targets `y` may have shape (n,) when num_outputs is 1, else (n, num_outputs); they are
    cast to the parameters' dtype. `predict` returns shape (n,) for one output, else
    (n, num_outputs). Raises `ValueError` for sizes < 1 or mismatched shapes. Stateless and
    thread-safe.
    """

    task = "regression"

    def __init__(self, num_features: int, num_outputs: int = 1) -> None:
        self.num_features = check_size("num_features", num_features)
        self.num_outputs = check_size("num_outputs", num_outputs)

    def __repr__(self) -> str:
        return f"LinearRegression(num_features={self.num_features}, num_outputs={self.num_outputs})"

    def parameters(self) -> dict[str, ParamSpec]:
        """Return specs for "w" and "b", both initialised to zeros."""
        return {
            "w": ParamSpec((self.num_features, self.num_outputs)),
            "b": ParamSpec((self.num_outputs,)),
        }

    def _forward(self, params: dict[str, Any], x: Any) -> Any:
        w, b = params["w"], params["b"]
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"x must have shape (n, {self.num_features}), got {x.shape}")
        return x.astype(w.dtype, copy=False) @ w + b

    def loss_and_grads(
        self, params: dict[str, Any], x: Any, y: Any
    ) -> tuple[float, dict[str, Any]]:
        """Return the loss in the module docstring (a float) and grads for "w" and "b"."""
        w = params["w"]
        xp = array_module(w)
        pred = self._forward(params, x)
        n = x.shape[0]
        if n < 1:
            raise ValueError("the batch is empty")
        if y.ndim == 1 and self.num_outputs == 1:
            y = y.reshape(n, 1)
        if y.shape != (n, self.num_outputs):
            raise ValueError(f"y must have shape ({n}, {self.num_outputs}), got {y.shape}")
        x = x.astype(w.dtype, copy=False)
        r = pred - y.astype(w.dtype, copy=False)
        loss = 0.5 * float(xp.sum(r * r)) / n
        return loss, {"w": (x.T @ r) / n, "b": xp.sum(r, axis=0) / n}

    def predict(self, params: dict[str, Any], x: Any) -> Any:
        """Return predicted values: shape (n,) for one output, else (n, num_outputs)."""
        out = self._forward(params, x)
        return out[:, 0] if self.num_outputs == 1 else out
