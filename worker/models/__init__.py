"""The models a worker can train, by name.

`make_model("mlp", num_features=64, num_classes=10, hidden=(32,))` builds one; `MODELS` maps
each name to its factory `(num_features, num_classes, **options) -> Model`. For the
regression model "linear", `num_classes` is the number of outputs.
"""

from __future__ import annotations

from typing import Any, Callable

from worker.models.base import Model, ParamSpec, init_params
from worker.models.linear import LinearRegression
from worker.models.mlp import MLP
from worker.models.softmax import SoftmaxRegression

__all__ = [
    "MLP",
    "MODELS",
    "LinearRegression",
    "Model",
    "ParamSpec",
    "SoftmaxRegression",
    "init_params",
    "make_model",
]


def _linear(num_features: int, num_classes: int, **options: Any) -> Model:
    return LinearRegression(num_features, num_outputs=num_classes, **options)


MODELS: dict[str, Callable[..., Model]] = {
    "linear": _linear,
    "softmax": SoftmaxRegression,
    "mlp": MLP,
}


def make_model(name: str, num_features: int, num_classes: int, **options: Any) -> Model:
    """Build the model called `name` (a key of `MODELS`).

    `options` go to the model's constructor (e.g. `hidden=(64,)` for "mlp"). Raises
    `ValueError` for an unknown name or bad sizes, `TypeError` for an unknown option.
    """
    factory = MODELS.get(name)
    if factory is None:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return factory(num_features, num_classes, **options)
