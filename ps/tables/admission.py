"""``AdmissionSketch``: how often each id was pushed, in bounded memory (a count-min sketch).

A sparse table with ``admit_after = k > 1`` stores a row only once pushes have touched
its id ``k`` times. Counting every id ever seen exactly would cost memory per id, which
is what the filter exists to avoid, so the counts live in a count-min sketch: ``DEPTH``
rows of ``width`` uint32 counters, each id adding one to one counter per row (chosen by
independent hashes) and reading as the minimum of its counters. The estimate is never
below the true count and exceeds it only through collisions (at most ``e * total / width``
with probability ``1 - e**-DEPTH``): a rare id may be admitted a little early, never late.

Memory: ``DEPTH * width * 4`` bytes (4 MiB by default) per table per shard.
Not thread-safe: the owning table holds its lock.
"""

from __future__ import annotations

import numpy as np

DEPTH = 4
DEFAULT_WIDTH = 1 << 18
_SEEDS = np.array([0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89],
                  dtype=np.uint64)


def _buckets(ids: np.ndarray, width: int) -> np.ndarray:
    """(DEPTH, len(ids)) counter columns, from SplitMix64 of the id salted per row."""
    with np.errstate(over="ignore"):
        x = ids.view(np.uint64)[None, :] ^ _SEEDS[:DEPTH, None]
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(width)).astype(np.int64)


class AdmissionSketch:
    """Approximate push counts per id (never under-counted). Not thread-safe."""

    def __init__(self, width: int = DEFAULT_WIDTH, counts: np.ndarray | None = None) -> None:
        if counts is not None:
            counts = np.ascontiguousarray(counts, dtype=np.uint32)
            if counts.ndim != 2 or counts.shape[0] != DEPTH or counts.shape[1] < 1:
                raise ValueError(f"sketch counts must have shape ({DEPTH}, width), got {counts.shape}")
            self.counts = counts.copy()
        else:
            if width < 1:
                raise ValueError(f"width must be >= 1, got {width}")
            self.counts = np.zeros((DEPTH, width), dtype=np.uint32)

    @property
    def width(self) -> int:
        return self.counts.shape[1]

    @property
    def nbytes(self) -> int:
        return self.counts.nbytes

    def add(self, ids: np.ndarray) -> np.ndarray:
        """Count one sighting of each of ``ids`` (unique int64); return their new estimates."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        cols = _buckets(ids, self.width)
        flat = self.counts.reshape(-1)
        index = (cols + (np.arange(DEPTH, dtype=np.int64) * self.width)[:, None]).reshape(-1)
        np.add.at(flat, index, np.uint32(1))
        return flat[index].reshape(DEPTH, -1).min(axis=0).astype(np.int64)

    def estimate(self, ids: np.ndarray) -> np.ndarray:
        """Estimated sightings of each id (int64), without counting."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        cols = _buckets(ids, self.width)
        return self.counts[np.arange(DEPTH)[:, None], cols].min(axis=0).astype(np.int64)

    def merge(self, other: AdmissionSketch) -> None:
        """Add ``other``'s counts into this sketch (same width): still never under-counts."""
        if other.counts.shape != self.counts.shape:
            raise ValueError(f"cannot merge sketches of shapes {other.counts.shape} and {self.counts.shape}")
        np.add(self.counts, other.counts, out=self.counts)
