"""``evaluate``: a dense model's held-out score."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from worker.data.dataset import Dataset
from worker.models import Model
from worker.xp import to_device, to_host

#: rows per forward pass when evaluating, so a large test split does not need a huge array
EVAL_CHUNK_ROWS = 8192


def evaluate(model: Model, params: Mapping[str, Any], ds: Dataset, xp: ModuleType = np) -> tuple[str, float]:
    """``("accuracy", fraction correct)`` or ``("mse", mean squared error)`` of ``params`` on ``ds``.

    ``params`` live on ``xp``'s device; the rows are moved there in chunks. Blocks on the
    computation. NaN for an empty dataset.
    """
    metric = "accuracy" if model.task == "classification" else "mse"
    if len(ds) == 0:
        return metric, math.nan
    total = 0.0
    for start in range(0, len(ds), EVAL_CHUNK_ROWS):
        x = to_device(ds.x[start:start + EVAL_CHUNK_ROWS], xp)
        y = ds.y[start:start + EVAL_CHUNK_ROWS]
        pred = to_host(model.predict(params, x))
        if metric == "accuracy":
            total += float(np.count_nonzero(pred == y))
        else:
            diff = pred.astype(np.float64) - y.reshape(pred.shape)
            total += float(np.sum(diff * diff)) / (diff.size // len(y))
    return metric, total / len(ds)
