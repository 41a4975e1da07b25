"""Sparse table specifications: rows of fixed width keyed by any int64 id.

A :class:`SparseTableSpec` fixes a sparse table's row width ``dim``, dtype, optimizer,
row initialiser and memory bounds (``max_rows`` per shard with ``lru``/``lfu`` eviction,
or an ``admit_after`` admission filter). Two creates of the same name must carry equal
specs, which makes ``create_sparse`` idempotent across workers.

Initial rows are a pure function of ``(init.seed, table name, id, column)`` — a
counter-based hash (SplitMix64), not a random stream — so the same id gets the same
initial row on any shard, any shard count and in any process, and a row that was never
stored (never pushed, evicted, not yet admitted) reads as its initial row.

Pure values; thread-safe.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.tables.optim import OptimizerSpec
from ps.tables.placement import table_hash
from ps.tables.spec import InitSpec
from ps.protocol.wire import np_dtype, wire_dtype

#: initialisers a sparse table accepts (glorot needs fan-in/out, which a row table has not)
SPARSE_INIT_KINDS = ("zeros", "normal", "uniform")
EVICTIONS = ("lru", "lfu")
#: the widest row a sparse table may have (elements)
MAX_DIM = 1 << 16
_NAME = re.compile(r"^[A-Za-z0-9_.:/\-]{1,200}$")  # the same rule as dense tables (ps.tables.spec)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _unit(bits: np.ndarray) -> np.ndarray:
    """uint64 -> float64 uniform on [0, 1) from the top 53 bits."""
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class SparseTableSpec:
    """What a sparse table is, independent of where its rows live.

    ``dim`` elements per row; ``init.kind`` is zeros | normal (std ``init.scale``) |
    uniform (on [-scale, scale]). ``max_rows`` bounds the rows one shard stores (0: no
    bound); past it the least recently (``lru``) or least frequently (``lfu``) used rows are
    evicted. ``admit_after`` > 1 stores a row only once pushes touched it that many times.
    ``num_rows`` > 0 declares the ids to lie in ``[0, num_rows)`` (an embedding of that many
    rows): other ids are refused, and an export writes the table as one dense
    ``(num_rows, dim)`` array; 0: any int64 id.
    """

    name: str
    dim: int
    dtype: str = "float32"
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    init: InitSpec = field(default_factory=InitSpec)
    max_rows: int = 0
    eviction: str = "lru"
    admit_after: int = 0
    num_rows: int = 0

    def validate(self) -> None:
        """Raises InvalidArgumentError when any field is out of range."""
        if not _NAME.match(self.name):
            raise InvalidArgumentError(
                f"table name {self.name!r} must be 1-200 characters of letters, digits and _ . : / -"
            )
        if not 1 <= self.dim <= MAX_DIM:
            raise InvalidArgumentError(f"sparse table {self.name!r}: dim must be in [1, {MAX_DIM}], got {self.dim}")
        wire_dtype(self.dtype)
        self.optimizer.validate()
        if self.init.kind not in SPARSE_INIT_KINDS:
            raise InvalidArgumentError(
                f"unknown sparse init {self.init.kind!r}; choose from {', '.join(SPARSE_INIT_KINDS)}"
            )
        if not math.isfinite(self.init.scale) or self.init.scale < 0:
            raise InvalidArgumentError(f"init scale must be finite and >= 0, got {self.init.scale}")
        if not 0 <= self.init.seed < 1 << 64:
            raise InvalidArgumentError(f"init seed must be in [0, 2**64), got {self.init.seed}")
        if self.max_rows < 0 or self.max_rows >= 1 << 31:
            raise InvalidArgumentError(f"max_rows must be in [0, 2**31), got {self.max_rows}")
        if self.eviction not in EVICTIONS:
            raise InvalidArgumentError(f"unknown eviction {self.eviction!r}; choose from {', '.join(EVICTIONS)}")
        if self.admit_after < 0:
            raise InvalidArgumentError(f"admit_after must be >= 0, got {self.admit_after}")
        if self.num_rows < 0:
            raise InvalidArgumentError(f"num_rows must be >= 0 (0: any id), got {self.num_rows}")

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's values."""
        return self.dim * np.dtype(self.dtype).itemsize

    def initial_rows(self, ids: np.ndarray) -> np.ndarray:
        """The initial values of rows ``ids`` (any int64 ids), shape ``(len(ids), dim)``.

        A pure function of ``(init.seed, name, id, column)``; vectorised; allocates the result.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        dtype = np.dtype(self.dtype)
        n, dim = len(ids), self.dim
        if self.init.kind == "zeros" or n == 0:
            return np.zeros((n, dim), dtype=dtype)
        with np.errstate(over="ignore"):
            key = _mix(np.uint64(self.init.seed) ^ np.array(table_hash(self.name), dtype=np.uint64))
            base = _mix(ids.view(np.uint64) ^ key)[:, None]
            cols = np.arange(dim, dtype=np.uint64)[None, :]
            if self.init.kind == "uniform":
                u = _unit(_mix(base + cols * _GOLDEN))
                out = (2.0 * u - 1.0) * self.init.scale
            else:  # normal, Box-Muller on two independent streams
                u1 = _unit(_mix(base + (cols * np.uint64(2)) * _GOLDEN))
                u2 = _unit(_mix(base + (cols * np.uint64(2) + np.uint64(1)) * _GOLDEN))
                out = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * math.pi * u2) * self.init.scale
        return out.astype(dtype)

    def to_proto(self) -> ps_pb2.TableSpec:
        return ps_pb2.TableSpec(
            name=self.name,
            kind=ps_pb2.SPARSE,
            dim=self.dim,
            dtype=wire_dtype(self.dtype),
            optimizer=self.optimizer.to_proto(),
            init=ps_pb2.InitSpec(kind=self.init.kind, scale=self.init.scale, seed=self.init.seed),
            max_rows=self.max_rows,
            eviction=self.eviction,
            admit_after=self.admit_after,
            num_rows=self.num_rows,
        )

    @classmethod
    def from_proto(cls, msg: ps_pb2.TableSpec) -> SparseTableSpec:
        """Decode and validate. Raises InvalidArgumentError for any bad field or a dense spec."""
        if msg.kind != ps_pb2.SPARSE:
            raise InvalidArgumentError(f"table {msg.name!r}: not a sparse table spec")
        spec = cls(
            name=msg.name,
            dim=int(msg.dim),
            dtype=np_dtype(msg.dtype).name,
            optimizer=OptimizerSpec.from_proto(msg.optimizer),
            init=InitSpec(kind=msg.init.kind, scale=msg.init.scale, seed=msg.init.seed),
            max_rows=int(msg.max_rows),
            eviction=msg.eviction or "lru",
            admit_after=int(msg.admit_after),
            num_rows=int(msg.num_rows),
        )
        spec.validate()
        return spec
