"""Stable placement of blocks and sparse rows on shards.

A key is turned into 64 bits by a hash that never depends on the process (BLAKE2b of
the table name, mixed with the block index or row id by SplitMix64), and the 64 bits
are mapped to a shard with jump consistent hashing (Lamping & Veach, 2014): every key
lands on the same shard in every process and Python hash seed, keys spread evenly, and
growing from N to N+1 shards moves only about 1/(N+1) of them.

Pure functions; thread-safe; no I/O.
"""

from __future__ import annotations

import hashlib

import numpy as np

_MASK64 = (1 << 64) - 1
_JUMP_MULT = 2862933555777941757


def table_hash(name: str) -> int:
    """64-bit stable hash of a table name."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def jump_hash(key: int, num_shards: int) -> int:
    """Jump consistent hash of a 64-bit key onto ``range(num_shards)``.

    Raises ValueError if ``num_shards`` < 1.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    b, j = -1, 0
    while j < num_shards:
        b = j
        key = (key * _JUMP_MULT + 1) & _MASK64
        j = int((b + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return b


def block_shard(table: str, block: int, num_shards: int) -> int:
    """The shard that owns block ``block`` of dense table ``table``."""
    return jump_hash(_splitmix64(table_hash(table) ^ _splitmix64(block)), num_shards)


def blocks_of_shard(table: str, num_blocks: int, shard: int, num_shards: int) -> list[int]:
    """The block indices of a ``num_blocks``-block table that ``shard`` owns, ascending."""
    return [b for b in range(num_blocks) if block_shard(table, b, num_shards) == shard]


def _splitmix64_np(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_shards(table: str, ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard of each int64 row id of sparse table ``table``, vectorised (int64 array).

    Raises ValueError if ``num_shards`` < 1.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    with np.errstate(over="ignore"):
        keys = _splitmix64_np(np.asarray(ids, dtype=np.int64).view(np.uint64) ^ np.uint64(table_hash(table)))
        if num_shards == 1:
            return np.zeros(keys.shape, dtype=np.int64)
        b = np.full(keys.shape, -1, dtype=np.int64)
        j = np.zeros(keys.shape, dtype=np.int64)
        active = np.ones(keys.shape, dtype=bool)
        # Each round advances every key that has not yet jumped past num_shards; the
        # expected number of rounds is O(log num_shards).
        while active.any():
            idx = np.nonzero(active)[0]
            b[idx] = j[idx]
            k = keys[idx] * np.uint64(_JUMP_MULT) + np.uint64(1)
            keys[idx] = k
            nxt = ((b[idx] + 1).astype(np.float64) * (float(1 << 31) / ((k >> np.uint64(33)).astype(np.float64) + 1.0)))
            j[idx] = np.minimum(nxt, float(num_shards)).astype(np.int64)
            active[idx] = j[idx] < num_shards
        return b
