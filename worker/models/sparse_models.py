"""The sparse (embedding-table) models a worker can train, by name.

Kept apart from :data:`worker.models.MODELS` (dense models over a feature matrix): a
sparse model reads click logs (:class:`worker.data.ctr.CtrDataset`) and keeps part of its
parameters in sparse tables, so it trains with :func:`worker.training.sparse_loop.train_sparse`.
"""

from __future__ import annotations

from typing import Any, Callable

from worker.models.sparse_lr import SparseLogisticRegression
from worker.models.sparse_mlp import SparseMLP

__all__ = ["SPARSE_MODELS", "make_sparse_model"]

SPARSE_MODELS: dict[str, Callable[..., Any]] = {
    "sparse_lr": SparseLogisticRegression,
    "sparse_mlp": SparseMLP,
}


def make_sparse_model(name: str, num_features: int = 0, num_classes: int = 2, **options: Any) -> Any:
    """Build the sparse model ``name``. Raises ValueError for an unknown name or bad sizes."""
    factory = SPARSE_MODELS.get(name)
    if factory is None:
        raise ValueError(f"unknown sparse model {name!r}; choose from {', '.join(sorted(SPARSE_MODELS))}")
    return factory(num_features, num_classes, **options)
