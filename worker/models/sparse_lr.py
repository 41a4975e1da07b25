"""Sparse logistic regression over hashed categorical features (the classic CTR model).

For a row with features ``(id_j, value_j)`` the click probability is
``p = sigmoid(z)``, ``z = b + sum_j w[id_j] * value_j``, where ``w`` is the sparse table
``"emb"`` (one float per id, rows of width 1) and ``b`` the dense table ``"bias"`` of
shape (1,). The loss is the mean log loss over the batch of n rows,

    loss = 1/n * sum_i [log(1 + exp(z_i)) - y_i z_i]

so with ``d_i = (p_i - y_i) / n``: dloss/db = sum_i d_i and the gradient for the feature
occurrence j of row i is ``d_i * value_j`` (occurrences of one id are summed by the
client and the server, which is dloss/dw[id]).

A sparse model states its tables (``sparse_parameters`` and the dense ``parameters``),
which ids of a batch each sparse table must supply (``lookups``), and computes loss and
gradients from the rows for those ids, in that order. NumPy only; stateless, thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.data.ctr import CtrDataset
from worker.models.base import ParamSpec

__all__ = ["SparseLogisticRegression", "SparseParam"]


@dataclass(frozen=True)
class SparseParam:
    """A sparse table of a model: rows of width ``dim``, initialised ``init`` (zeros | normal
    | uniform) with ``scale``."""

    dim: int
    init: str = "zeros"
    scale: float = 0.0


class SparseLogisticRegression:
    """Logistic regression with one sparse weight per feature id and a dense bias.

    ``num_features`` and ``num_classes`` are accepted for the model registry's signature:
    ids are hashed (any int64), and the model is binary (raises ValueError for
    ``num_classes`` other than 2).
    """

    task = "classification"
    sparse = True

    def __init__(self, num_features: int = 0, num_classes: int = 2) -> None:
        if num_classes != 2:
            raise ValueError(f"sparse_lr is a binary (click) model: num_classes must be 2, got {num_classes}")
        self.num_features = int(num_features)

    def __repr__(self) -> str:
        return "SparseLogisticRegression()"

    def sparse_parameters(self) -> dict[str, SparseParam]:
        return {"emb": SparseParam(dim=1)}

    def parameters(self) -> dict[str, ParamSpec]:
        return {"bias": ParamSpec((1,))}

    def lookups(self, batch: CtrDataset) -> dict[str, np.ndarray]:
        """The ids whose rows each sparse table must supply for ``batch``, in order."""
        return {"emb": batch.ids}

    def _logits(self, params: dict[str, Any], rows: dict[str, np.ndarray], batch: CtrDataset,
                row_of: np.ndarray) -> np.ndarray:
        w = rows["emb"]
        if w.shape != (len(batch.ids), 1):
            raise ValueError(f"emb rows must have shape ({len(batch.ids)}, 1), got {w.shape}")
        contrib = w[:, 0].astype(np.float64) * batch.vals
        return np.bincount(row_of, weights=contrib, minlength=len(batch)) + float(params["bias"][0])

    def loss_and_grads(self, params: dict[str, Any], rows: dict[str, np.ndarray],
                       batch: CtrDataset) -> tuple[float, dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """``(mean log loss, dense grads, {table: (ids, row grads)})`` for ``batch``.

        Row grads have one row per occurrence (``lookups`` order), in the table's dtype.
        Raises ValueError for an empty batch or rows of the wrong shape.
        """
        n = len(batch)
        if n < 1:
            raise ValueError("the batch is empty")
        row_of = batch.row_of
        z = self._logits(params, rows, batch, row_of)
        y = batch.y.astype(np.float64)
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
        d = (_sigmoid(z) - y) / n
        dtype = rows["emb"].dtype
        row_grads = (d[row_of] * batch.vals)[:, None].astype(dtype)
        bias_grad = np.array([d.sum()], dtype=np.asarray(params["bias"]).dtype)
        return loss, {"bias": bias_grad}, {"emb": (batch.ids, row_grads)}

    def predict_proba(self, params: dict[str, Any], rows: dict[str, np.ndarray], batch: CtrDataset) -> np.ndarray:
        """Click probabilities, shape (n,), float64."""
        return _sigmoid(self._logits(params, rows, batch, batch.row_of))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))
