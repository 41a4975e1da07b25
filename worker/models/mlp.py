"""A multi-layer perceptron classifier: ReLU hidden layers, softmax cross-entropy output.

Layer i maps h_i to h_{i+1} = relu(h_i @ w{i} + b{i}); the last layer has no ReLU and gives
the logits. Gradients are the textbook backward pass, vectorised over the batch.
"""

from __future__ import annotations

from typing import Any, Sequence

from worker.models.base import ParamSpec, check_size
from worker.models.softmax import softmax_cross_entropy
from worker.xp import array_module

__all__ = ["MLP"]


class MLP:
    """Classifier with hidden layer widths `hidden` (empty: softmax regression).

    Parameters are "w0", "b0", "w1", "b1", ..., one pair per layer; weights use "glorot"
    init and biases "zeros". `predict` returns the argmax class indices. Raises
    `ValueError` for sizes < 1 (num_classes must be at least 2) or mismatched shapes.
    Stateless and thread-safe.
    """

    task = "classification"

    def __init__(self, num_features: int, num_classes: int, hidden: Sequence[int] = (64,)) -> None:
        self.num_features = check_size("num_features", num_features)
        self.num_classes = check_size("num_classes", num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
        if isinstance(hidden, (int, str)):
            raise ValueError(f"hidden must be a sequence of layer widths, got {hidden!r}")
        self.hidden = tuple(check_size("hidden layer width", h) for h in hidden)
        self.num_layers = len(self.hidden) + 1

    def __repr__(self) -> str:
        return (
            f"MLP(num_features={self.num_features}, num_classes={self.num_classes}, "
            f"hidden={self.hidden})"
        )

    def parameters(self) -> dict[str, ParamSpec]:
        """Return specs for "w0", "b0", ... in layer order."""
        sizes = (self.num_features, *self.hidden, self.num_classes)
        specs: dict[str, ParamSpec] = {}
        for i in range(self.num_layers):
            specs[f"w{i}"] = ParamSpec((sizes[i], sizes[i + 1]), init="glorot")
            specs[f"b{i}"] = ParamSpec((sizes[i + 1],))
        return specs

    def _forward(self, params: dict[str, Any], x: Any) -> tuple[list[Any], Any]:
        """Return the inputs of every layer (x, then the ReLU outputs) and the logits."""
        xp = array_module(params["w0"])
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"x must have shape (n, {self.num_features}), got {x.shape}")
        h = x.astype(params["w0"].dtype, copy=False)
        inputs = []
        for i in range(self.num_layers - 1):
            inputs.append(h)
            h = xp.maximum(h @ params[f"w{i}"] + params[f"b{i}"], 0)
        inputs.append(h)
        last = self.num_layers - 1
        return inputs, h @ params[f"w{last}"] + params[f"b{last}"]

    def loss_and_grads(
        self, params: dict[str, Any], x: Any, y: Any
    ) -> tuple[float, dict[str, Any]]:
        """Return the mean cross-entropy (a float) and grads for every "w{i}" and "b{i}"."""
        xp = array_module(params["w0"])
        inputs, logits = self._forward(params, x)
        loss, delta = softmax_cross_entropy(logits, y)
        grads: dict[str, Any] = {}
        for i in reversed(range(self.num_layers)):
            grads[f"w{i}"] = inputs[i].T @ delta
            grads[f"b{i}"] = xp.sum(delta, axis=0)
            if i > 0:  # through the ReLU that produced inputs[i]
                delta = (delta @ params[f"w{i}"].T) * (inputs[i] > 0)
        return loss, {name: grads[name] for name in self.parameters()}

    def predict(self, params: dict[str, Any], x: Any) -> Any:
        """Return the predicted class index of each row, shape (n,)."""
        return array_module(params["w0"]).argmax(self._forward(params, x)[1], axis=1)
