"""The default placement of blocks and sparse rows on shards: a pure rule every process computes alike.

Where a table lives is a versioned :class:`~ps.tables.placement_map.PlacementMap`; this
module is its default, the rule a table is created with (and restored with onto another
shard count), before anything moved:

- a table's name is turned into 64 bits by a hash that never depends on the process
  (BLAKE2b), and its *offset* on ``N`` shards is that hash modulo ``N``;
- dense block ``b`` of the table lives on shard ``(offset + b) % N``: the blocks are dealt
  round-robin, so every shard holds the same number of a table's blocks, give or take one,
  and tables start on different shards;
- a sparse row id is hashed (SplitMix64 of the id mixed with the table hash) into one of
  :data:`ROW_BUCKETS` buckets, and bucket ``k`` lives on shard ``(offset + k) % N``: rows
  spread evenly, and later move bucket by bucket.

Tables are cut into blocks small enough to be dealt evenly (``ps.tables.spec``: the
automatic block size), so bytes, optimizer state included, balance across shards without
a coordinator. Pure functions; thread-safe; no I/O.
"""

from __future__ import annotations

import hashlib

import numpy as np

_MASK64 = (1 << 64) - 1
#: sparse row buckets per table: the unit in which rows are placed (and later moved); a power of two
ROW_BUCKETS = 4096
_BUCKET_SHIFT = np.uint64(64 - ROW_BUCKETS.bit_length() + 1)


def table_hash(name: str) -> int:
    """64-bit stable hash of a table name."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def _check_count(num_shards: int) -> None:
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")


def table_offset(table: str, num_shards: int) -> int:
    """The shard that holds block 0 (and row bucket 0) of ``table`` by default.

    Raises ValueError if ``num_shards`` < 1."""
    _check_count(num_shards)
    return table_hash(table) % num_shards


def block_shard(table: str, block: int, num_shards: int) -> int:
    """The shard that owns block ``block`` of dense table ``table`` by default."""
    return (table_offset(table, num_shards) + block) % num_shards


def blocks_of_shard(table: str, num_blocks: int, shard: int, num_shards: int) -> list[int]:
    """The block indices of a ``num_blocks``-block table that ``shard`` owns by default, ascending."""
    first = (shard - table_offset(table, num_shards)) % num_shards
    return list(range(first, num_blocks, num_shards))


def _splitmix64_np(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def row_buckets(table: str, ids: np.ndarray) -> np.ndarray:
    """The row bucket (in ``[0, ROW_BUCKETS)``) of each int64 row id of sparse table ``table`` (int64 array)."""
    with np.errstate(over="ignore"):
        keys = _splitmix64_np(np.asarray(ids, dtype=np.int64).view(np.uint64) ^ np.uint64(table_hash(table)))
    return (keys >> _BUCKET_SHIFT).astype(np.int64)


def bucket_owners(table: str, num_shards: int) -> np.ndarray:
    """The default shard of every row bucket of ``table`` (int64 array of ``ROW_BUCKETS``).

    Raises ValueError if ``num_shards`` < 1."""
    return (np.arange(ROW_BUCKETS, dtype=np.int64) + table_offset(table, num_shards)) % num_shards


def row_shards(table: str, ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Default shard of each int64 row id of sparse table ``table``, vectorised (int64 array).

    Raises ValueError if ``num_shards`` < 1.
    """
    _check_count(num_shards)
    if num_shards == 1:
        return np.zeros(np.shape(ids), dtype=np.int64)
    return bucket_owners(table, num_shards)[row_buckets(table, ids)]
