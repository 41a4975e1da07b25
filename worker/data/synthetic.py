"""Synthetic datasets for benchmarks: any row range, generated deterministically from a seed.

Rows are made in fixed chunks of ``CHUNK_ROWS``, chunk ``c`` from the generator seeded by
``(seed, 1, c)``, so rows ``[start, stop)`` are the same whoever asks and whatever the
range: a worker builds only its own shard, and the shards of all workers together are the
full dataset. The model behind the data (class centres, weights) comes from ``(seed, 0)``.

- ``classification``: labels uniform over ``classes``; features are the label's centre,
  drawn once from N(0, 9/features) per coordinate, plus N(0, noise²) noise (default 1), so
  a linear model separates the classes well but not perfectly.
- ``regression``: features N(0, 1); targets ``x @ w + noise·N(0, 1)`` (default noise 0.1)
  with ``w`` of shape (features, outputs) drawn from N(0, 1/features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CHUNK_ROWS", "Synthetic"]

CHUNK_ROWS = 4096


@dataclass(frozen=True)
class Synthetic:
    """A synthetic dataset's definition. Construction does no work and draws nothing.

    ``kind`` is ``"classification"`` (uses ``classes``) or ``"regression"`` (uses
    ``outputs``; targets are 1-D when ``outputs == 1``). ``noise`` is a standard deviation;
    ``None`` picks the kind's default. Raises ValueError for an unknown kind or a size
    below its minimum.
    """

    kind: str
    n: int = 10_000
    features: int = 64
    classes: int = 10
    outputs: int = 1
    noise: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "regression"):
            raise ValueError(f"unknown synthetic kind {self.kind!r}: expected "
                             "classification or regression")
        for name, low in (("n", 1), ("features", 1), ("classes", 2), ("outputs", 1),
                          ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.noise is not None and not self.noise >= 0:
            raise ValueError(f"noise must be a non-negative number, got {self.noise}")

    @property
    def num_classes(self) -> int:
        """The class count, 0 for regression."""
        return self.classes if self.kind == "classification" else 0

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Generate rows ``[start, stop)``: x float32 (m, features), and y int64 labels or
        float32 targets. Costs O(m + CHUNK_ROWS) time and memory; pure, thread-safe."""
        start, stop = max(0, start), min(self.n, stop)
        model = np.random.default_rng([self.seed, 0])
        if self.kind == "classification":
            centres = model.standard_normal((self.classes, self.features)) * (
                3.0 / np.sqrt(self.features))
        else:
            weights = model.standard_normal((self.features, self.outputs)) / np.sqrt(
                self.features)
        xs, ys = [], []
        for chunk in range(start // CHUNK_ROWS, -(-stop // CHUNK_ROWS) if stop > start else 0):
            rng = np.random.default_rng([self.seed, 1, chunk])
            m = min(CHUNK_ROWS, self.n - chunk * CHUNK_ROWS)
            if self.kind == "classification":
                y = rng.integers(self.classes, size=m)
                noise = 1.0 if self.noise is None else self.noise
                x = centres[y] + noise * rng.standard_normal((m, self.features))
            else:
                x = rng.standard_normal((m, self.features))
                noise = 0.1 if self.noise is None else self.noise
                y = x @ weights + noise * rng.standard_normal((m, self.outputs))
            lo = max(start - chunk * CHUNK_ROWS, 0)
            hi = min(stop - chunk * CHUNK_ROWS, m)
            xs.append(x[lo:hi])
            ys.append(y[lo:hi])
        x = np.concatenate(xs) if xs else np.zeros((0, self.features))
        if self.kind == "classification":
            y = np.concatenate(ys) if ys else np.zeros(0)
            return x.astype(np.float32), y.astype(np.int64)
        y = np.concatenate(ys) if ys else np.zeros((0, self.outputs))
        y = y[:, 0] if self.outputs == 1 else y
        return x.astype(np.float32), y.astype(np.float32)
