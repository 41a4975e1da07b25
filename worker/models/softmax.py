"""Softmax (multinomial logistic) regression and the softmax cross-entropy it is built on.

For logits z = x @ w + b and integer labels y, the loss is the mean over the batch of
-log softmax(z)[y] = logsumexp(z) - z[y], computed after subtracting each row's max so that
exp never overflows. Its gradient with respect to the logits is (softmax(z) - onehot(y)) / n.
"""

from __future__ import annotations

from typing import Any

from worker.models.base import ParamSpec, check_size
from worker.xp import array_module

__all__ = ["SoftmaxRegression", "softmax_cross_entropy"]


def softmax_cross_entropy(logits: Any, y: Any) -> tuple[float, Any]:
    """Return (mean cross-entropy as a float, its gradient with respect to `logits`).

    `logits` has shape (n, num_classes); `y` holds n integer class indices. The gradient has
    the logits' shape and dtype. Raises `ValueError` for an empty batch, labels of the wrong
    shape, a non-integer label dtype, or labels outside [0, num_classes).
    """
    xp = array_module(logits)
    n, num_classes = logits.shape
    if n < 1:
        raise ValueError("the batch is empty")
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},), got {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"class labels must have an integer dtype, got {y.dtype}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"class labels must lie in [0, {num_classes}), got [{low}, {high}]")
    rows = xp.arange(n)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    log_norm = xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))
    log_probs = shifted - log_norm
    loss = -float(xp.sum(log_probs[rows, y])) / n
    grad = xp.exp(log_probs)
    grad[rows, y] -= 1
    return loss, grad / n


class SoftmaxRegression:
    """Logits `x @ w + b`, w of shape (num_features, num_classes), b of shape (num_classes,).

    Trained with `softmax_cross_entropy`; `predict` returns the argmax class indices.
    Raises `ValueError` for sizes < 1 (num_classes must be at least 2) or mismatched shapes.
    Stateless and thread-safe.
    """

    task = "classification"

    def __init__(self, num_features: int, num_classes: int) -> None:
        self.num_features = check_size("num_features", num_features)
        self.num_classes = check_size("num_classes", num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")

    def __repr__(self) -> str:
        return (
            f"SoftmaxRegression(num_features={self.num_features}, "
            f"num_classes={self.num_classes})"
        )

    def parameters(self) -> dict[str, ParamSpec]:
        """Return specs for "w" and "b", both initialised to zeros."""
        return {
            "w": ParamSpec((self.num_features, self.num_classes)),
            "b": ParamSpec((self.num_classes,)),
        }

    def _logits(self, params: dict[str, Any], x: Any) -> Any:
        w, b = params["w"], params["b"]
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"x must have shape (n, {self.num_features}), got {x.shape}")
        return x.astype(w.dtype, copy=False) @ w + b

    def loss_and_grads(
        self, params: dict[str, Any], x: Any, y: Any
    ) -> tuple[float, dict[str, Any]]:
        """Return the mean cross-entropy (a float) and grads for "w" and "b"."""
        xp = array_module(params["w"])
        x = x.astype(params["w"].dtype, copy=False)
        loss, dlogits = softmax_cross_entropy(self._logits(params, x), y)
        return loss, {"w": x.T @ dlogits, "b": xp.sum(dlogits, axis=0)}

    def predict(self, params: dict[str, Any], x: Any) -> Any:
        """Return the predicted class index of each row, shape (n,)."""
        return array_module(params["w"]).argmax(self._logits(params, x), axis=1)
