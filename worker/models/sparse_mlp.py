"""An embedding bag and a small MLP over hashed categorical features (a minimal deep CTR model).

Each feature id has an embedding row of width ``dim`` in the sparse table ``"emb"``. A row
of the click log becomes ``h0 = sum_j value_j * emb[id_j]`` (an embedding bag), then
``h1 = relu(h0 @ w1 + b1)`` and the click logit ``z = h1 @ w2 + b2``; the loss is the mean
log loss, as for :mod:`worker.models.sparse_lr`. The gradient for the occurrence j of row
i is ``value_j * dloss/dh0_i`` (the client and server sum the occurrences of one id).

NumPy only; stateless and thread-safe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.data.ctr import CtrDataset
from worker.models.base import ParamSpec, check_size
from worker.models.sparse_lr import SparseParam, _sigmoid

__all__ = ["SparseMLP"]


class SparseMLP:
    """Embedding bag (``dim`` per id) -> ReLU layer of ``hidden`` units -> click logit.

    ``num_features`` is accepted for the registry's signature (ids are hashed); raises
    ValueError for ``num_classes`` other than 2 or sizes < 1.
    """

    task = "classification"
    sparse = True

    def __init__(self, num_features: int = 0, num_classes: int = 2, *, dim: int = 8, hidden: int = 16) -> None:
        if num_classes != 2:
            raise ValueError(f"sparse_mlp is a binary (click) model: num_classes must be 2, got {num_classes}")
        self.dim = check_size("dim", dim)
        self.hidden = check_size("hidden", hidden)

    def __repr__(self) -> str:
        return f"SparseMLP(dim={self.dim}, hidden={self.hidden})"

    def sparse_parameters(self) -> dict[str, SparseParam]:
        return {"emb": SparseParam(dim=self.dim, init="normal", scale=0.05)}

    def parameters(self) -> dict[str, ParamSpec]:
        return {
            "w1": ParamSpec((self.dim, self.hidden), init="glorot"),
            "b1": ParamSpec((self.hidden,)),
            "w2": ParamSpec((self.hidden, 1), init="glorot"),
            "b2": ParamSpec((1,)),
        }

    def lookups(self, batch: CtrDataset) -> dict[str, np.ndarray]:
        return {"emb": batch.ids}

    def _forward(self, params: dict[str, Any], rows: dict[str, np.ndarray], batch: CtrDataset):
        e = rows["emb"]
        if e.shape != (len(batch.ids), self.dim):
            raise ValueError(f"emb rows must have shape ({len(batch.ids)}, {self.dim}), got {e.shape}")
        row_of = batch.row_of
        h0 = np.zeros((len(batch), self.dim))
        np.add.at(h0, row_of, e.astype(np.float64) * batch.vals[:, None])
        w1, b1 = np.asarray(params["w1"], np.float64), np.asarray(params["b1"], np.float64)
        w2, b2 = np.asarray(params["w2"], np.float64), np.asarray(params["b2"], np.float64)
        a1 = h0 @ w1 + b1
        h1 = np.maximum(a1, 0.0)
        z = (h1 @ w2 + b2)[:, 0]
        return row_of, h0, a1, h1, z

    def loss_and_grads(self, params: dict[str, Any], rows: dict[str, np.ndarray],
                       batch: CtrDataset) -> tuple[float, dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """``(mean log loss, dense grads, {"emb": (ids, occurrence grads)})``. Raises ValueError
        for an empty batch or rows of the wrong shape."""
        n = len(batch)
        if n < 1:
            raise ValueError("the batch is empty")
        row_of, h0, a1, h1, z = self._forward(params, rows, batch)
        y = batch.y.astype(np.float64)
        loss = float(np.mean(np.logaddexp(0.0, z) - y * z))
        dz = ((_sigmoid(z) - y) / n)[:, None]
        w1, w2 = np.asarray(params["w1"], np.float64), np.asarray(params["w2"], np.float64)
        da1 = (dz @ w2.T) * (a1 > 0)
        dh0 = da1 @ w1.T
        dtype = np.asarray(params["w1"]).dtype
        dense = {"w1": h0.T @ da1, "b1": da1.sum(axis=0), "w2": h1.T @ dz, "b2": dz.sum(axis=0)}
        dense = {k: v.astype(dtype) for k, v in dense.items()}
        occurrence = (dh0[row_of] * batch.vals[:, None]).astype(rows["emb"].dtype)
        return loss, dense, {"emb": (batch.ids, occurrence)}

    def predict_proba(self, params: dict[str, Any], rows: dict[str, np.ndarray], batch: CtrDataset) -> np.ndarray:
        """Click probabilities, shape (n,), float64."""
        return _sigmoid(self._forward(params, rows, batch)[4])
