"""Table specifications: what a dense table is, independent of where its blocks live.

A :class:`TableSpec` fixes a table's shape, dtype, block size, optimizer and initialiser.
Two creates of the same name must carry equal specs (:meth:`TableSpec.__eq__`), which is
what makes ``create`` idempotent across workers. Pure values; thread-safe.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass

import numpy as np

from ps._proto import ps_pb2
from ps.errors import AlreadyExistsError, InvalidArgumentError
from ps.tables.optim import OptimizerSpec
from ps.tables.placement import table_hash
from ps.protocol.wire import np_dtype, wire_dtype

#: the largest automatic block: 1 MiB of float32, well under the message size limit
DEFAULT_BLOCK_ELEMS = 1 << 18
#: ``block_elems`` that asks for the automatic block size (:func:`balanced_block_elems`)
AUTO_BLOCK_ELEMS = 0
#: the automatic block size cuts a table into at most this many blocks (dealt evenly over 2, 3,
#: 4, 6 or 12 shards: ``ps.tables.placement``) ...
DEAL_BLOCKS = 12
#: ... of at least this many elements each (512 KiB of float32): a block costs a header entry and
#: an update call on each side of every step, so a smaller one only balances shards at the price
#: of steps ...
MIN_DEAL_BLOCK_ELEMS = 1 << 17
#: ... except that a table of at least twice this many elements is cut in two or more, so even
#: a small model balances over two shards; a smaller table is one block
MIN_SPLIT_BLOCK_ELEMS = 2048
#: the most elements one table may hold (2**40: 4 TiB of float32); guards size overflow
MAX_TABLE_ELEMS = 1 << 40
INIT_KINDS = ("zeros", "normal", "uniform", "glorot", "constant")
_NAME = re.compile(r"^[A-Za-z0-9_.:/\-]{1,200}$")


@dataclass(frozen=True)
class InitSpec:
    """How a table's initial values are drawn, per block, reproducibly from ``seed``.

    ``scale`` is the standard deviation for ``normal``, the half-width for ``uniform`` and
    the value of every element for ``constant`` (any finite number; e.g. 1.0 for the gain
    of a normalisation layer); ``glorot`` is uniform with half-width sqrt(6 / (fan_in + fan_out)) where fan_in is
    ``shape[0]`` and fan_out is ``shape[-1]``.
    """

    kind: str = "zeros"
    scale: float = 0.0
    seed: int = 0


def balanced_block_elems(size: int) -> int:
    """The automatic block size (elements) of a ``size``-element table: one block under
    2 x :data:`MIN_SPLIT_BLOCK_ELEMS`; else as many blocks of :data:`MIN_DEAL_BLOCK_ELEMS` as fit,
    at least 2 and at most :data:`DEAL_BLOCKS`, none larger than :data:`DEFAULT_BLOCK_ELEMS`.

    A function of the size alone: every creator (any client, any shard count) computes the
    same, so the resolved spec stays equal across workers and across restores onto another
    shard count."""
    size = max(0, size)
    blocks = min(DEAL_BLOCKS, max(2, size // MIN_DEAL_BLOCK_ELEMS)) if size >= 2 * MIN_SPLIT_BLOCK_ELEMS else 1
    return max(1, min(DEFAULT_BLOCK_ELEMS, -(-size // blocks)))


@dataclass(frozen=True)
class TableSpec:
    """``block_elems`` :data:`AUTO_BLOCK_ELEMS` (the default) is replaced at construction by
    :func:`balanced_block_elems` of the table's size, so a spec always holds its real block size."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    block_elems: int = AUTO_BLOCK_ELEMS
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    init: InitSpec = field(default_factory=InitSpec)

    def __post_init__(self) -> None:
        if self.block_elems == AUTO_BLOCK_ELEMS:
            size = math.prod(self.shape) if all(isinstance(d, int) for d in self.shape) else 0
            object.__setattr__(self, "block_elems", balanced_block_elems(size))

    def validate(self) -> None:
        """Raises InvalidArgumentError when any field is out of range."""
        if not _NAME.match(self.name):
            raise InvalidArgumentError(
                f"table name {self.name!r} must be 1-200 characters of letters, digits and _ . : / -"
            )
        if any(d < 0 for d in self.shape):
            raise InvalidArgumentError(f"table {self.name!r}: negative dimension in shape {self.shape}")
        if len(self.shape) > 32:
            raise InvalidArgumentError(f"table {self.name!r}: more than 32 dimensions")
        if math.prod(self.shape) > MAX_TABLE_ELEMS:
            raise InvalidArgumentError(f"table {self.name!r}: {math.prod(self.shape)} elements exceeds {MAX_TABLE_ELEMS}")
        if not 1 <= self.block_elems <= 1 << 26:
            raise InvalidArgumentError(f"table {self.name!r}: block_elems must be in [1, 2**26], got {self.block_elems}")
        wire_dtype(self.dtype)
        self.optimizer.validate()
        if self.init.kind not in INIT_KINDS:
            raise InvalidArgumentError(f"unknown init {self.init.kind!r}; choose from {', '.join(INIT_KINDS)}")
        if not math.isfinite(self.init.scale) or (self.init.scale < 0 and self.init.kind != "constant"):
            raise InvalidArgumentError(f"init scale must be finite and >= 0, got {self.init.scale}")

    @functools.cached_property
    def size(self) -> int:
        """Number of elements (computed once: the hot path asks on every call)."""
        return math.prod(self.shape)

    @functools.cached_property
    def num_blocks(self) -> int:
        return -(-self.size // self.block_elems)

    def block_range(self, block: int) -> tuple[int, int]:
        """``[start, stop)`` of block ``block`` in the flattened table."""
        start = block * self.block_elems
        return start, min(start + self.block_elems, self.size)

    def initial_block(self, block: int) -> np.ndarray:
        """The initial values of one block: the same on any shard count and process."""
        start, stop = self.block_range(block)
        n = stop - start
        dtype = np.dtype(self.dtype)
        kind = self.init.kind
        if kind == "zeros":
            return np.zeros(n, dtype=dtype)
        if kind == "constant":
            return np.full(n, self.init.scale, dtype=dtype)
        rng = np.random.default_rng([self.init.seed, table_hash(self.name) & 0xFFFFFFFF, block])
        if kind == "normal":
            return (rng.standard_normal(n) * self.init.scale).astype(dtype)
        if kind == "uniform":
            limit = self.init.scale
        else:  # glorot
            fan_in = self.shape[0] if self.shape else 1
            fan_out = self.shape[-1] if self.shape else 1
            limit = math.sqrt(6.0 / max(1, fan_in + fan_out))
        return rng.uniform(-limit, limit, n).astype(dtype)

    def to_proto(self) -> ps_pb2.TableSpec:
        return ps_pb2.TableSpec(
            name=self.name,
            shape=list(self.shape),
            dtype=wire_dtype(self.dtype),
            block_elems=self.block_elems,
            optimizer=self.optimizer.to_proto(),
            init=ps_pb2.InitSpec(kind=self.init.kind, scale=self.init.scale, seed=self.init.seed),
        )

    @classmethod
    def from_proto(cls, msg: ps_pb2.TableSpec) -> TableSpec:
        """Decode and validate. Raises InvalidArgumentError for any bad field."""
        spec = cls(
            name=msg.name,
            shape=tuple(int(d) for d in msg.shape),
            dtype=np_dtype(msg.dtype).name,
            block_elems=int(msg.block_elems),
            optimizer=OptimizerSpec.from_proto(msg.optimizer),
            init=InitSpec(kind=msg.init.kind, scale=msg.init.scale, seed=msg.init.seed),
        )
        spec.validate()
        return spec


def exists_alike(spec, mine: Mapping, others: Mapping, other_kind: str) -> bool:
    """Whether ``mine`` already holds a table with exactly ``spec`` (create is then a no-op).

    False when the name is free. Raises AlreadyExistsError when ``mine`` holds the name
    with another spec, or ``others`` (the tables of ``other_kind``) holds it at all.
    """
    if spec.name in others:
        raise AlreadyExistsError(f"table {spec.name!r} exists as a {other_kind} table")
    existing = mine.get(spec.name)
    if existing is None:
        return False
    if existing.spec != spec:
        raise AlreadyExistsError(
            f"table {spec.name!r} exists with a different spec: {'; '.join(spec_differences(existing.spec, spec))}. "
            "Create it as it was created (start this worker with the same flags as the others), or restart the "
            "servers (without --restore) to start over with the new settings")
    return True


def spec_differences(have, asked, prefix: str = "") -> list[str]:
    """``["optimizer.lr is 0.1 on the servers, 0.01 asked", ...]``: only the fields in which
    two specs (frozen dataclasses, nested ones field by field) differ."""
    out = []
    for f in fields(have):
        mine, theirs = getattr(have, f.name), getattr(asked, f.name, None)
        if mine == theirs:
            continue
        if is_dataclass(mine) and type(mine) is type(theirs):
            out += spec_differences(mine, theirs, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name} is {mine!r} on the servers, {theirs!r} asked")
    return out
