"""``PlacementMap``: which shard owns each dense block and each sparse row bucket, with a version.

A map is the default rule of :mod:`ps.tables.placement` on ``num_shards`` shards (blocks
dealt round-robin from the table's hash offset; row ids hashed into
:data:`~ps.tables.placement.ROW_BUCKETS` buckets dealt the same way) plus the units that
moved away from where the rule puts them. Every change is a new map with a higher
version; the shards hold it (and keep it in checkpoints), clients learn it from them and
stamp every data call with the version they planned it with (``docs/placement.md``).

An immutable value: thread-safe, no I/O. Encoded as the ``PlacementMap`` protobuf message
on the wire and as a JSON-able dict in checkpoints (never pickle).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.tables.placement import ROW_BUCKETS, block_shard, bucket_owners, row_buckets, table_offset

__all__ = ["PlacementMap", "Unit"]

#: a unit of placement: (table, rows?, index): a dense block (rows False) or a sparse row bucket
Unit = tuple[str, bool, int]


class PlacementMap:
    """See the module docstring. ``moved`` maps units to their shard where that differs from
    the default rule (entries equal to the rule are dropped). Raises InvalidArgumentError for a
    version < 1, a shard count < 1, a unit on a shard out of range or a bucket out of range."""

    __slots__ = ("version", "num_shards", "addresses", "_moved", "_buckets", "_by_table")

    def __init__(self, version: int, num_shards: int, moved: Mapping[Unit, int] | None = None,
                 addresses: Sequence[str] = ()) -> None:
        if version < 1:
            raise InvalidArgumentError(f"placement map version must be >= 1, got {version}")
        if num_shards < 1:
            raise InvalidArgumentError(f"placement map needs >= 1 shard, got {num_shards}")
        if addresses and len(addresses) != num_shards:
            raise InvalidArgumentError(f"placement map of {num_shards} shards lists {len(addresses)} addresses")
        kept: dict[Unit, int] = {}
        rule: dict[str, np.ndarray] = {}  # table -> its buckets' owners by the rule, computed once
        for (table, rows, index), shard in (moved or {}).items():
            if not 0 <= shard < num_shards:
                raise InvalidArgumentError(f"placement map: {table!r} unit {index} on shard {shard} of {num_shards}")
            if index < 0 or (rows and index >= ROW_BUCKETS):
                raise InvalidArgumentError(f"placement map: {table!r} has no {'bucket' if rows else 'block'} {index}")
            if rows and table not in rule:
                rule[table] = bucket_owners(table, num_shards)
            if shard != (int(rule[table][index]) if rows else block_shard(table, int(index), num_shards)):
                kept[(table, bool(rows), int(index))] = int(shard)
        self.version = int(version)
        self.num_shards = int(num_shards)
        self.addresses: tuple[str, ...] = tuple(addresses)
        self._moved = dict(sorted(kept.items()))
        self._buckets: dict[str, np.ndarray] = {}  # table -> owner of each bucket (a cache; the value never changes)
        self._by_table: dict[str, list[tuple[int, int]]] | None = None  # table -> moved (block, shard): a cache

    @classmethod
    def initial(cls, num_shards: int, addresses: Sequence[str] = (), version: int = 1) -> PlacementMap:
        """The default rule on ``num_shards`` shards, nothing moved."""
        return cls(version, num_shards, None, addresses)

    # -- lookups ---------------------------------------------------------------------------------

    @property
    def moved(self) -> Mapping[Unit, int]:
        """The units away from the default rule, and their shards."""
        return dict(self._moved)

    def block_owner(self, table: str, block: int) -> int:
        """The shard that owns dense block ``block`` of ``table``."""
        return self._moved.get((table, False, block), block_shard(table, block, self.num_shards))

    def owners(self, table: str, num_blocks: int) -> list[list[int]]:
        """Per shard, the blocks of ``table`` (``num_blocks`` of them) it owns, ascending."""
        offset = table_offset(table, self.num_shards)
        out = [list(range((s - offset) % self.num_shards, num_blocks, self.num_shards)) for s in range(self.num_shards)]
        moved = [(index, owner) for (name, rows, index), owner in self._moved.items()
                 if name == table and not rows and index < num_blocks]
        if moved:
            gone = {index for index, _ in moved}
            out = [[b for b in blocks if b not in gone] for blocks in out]
            for index, owner in moved:
                out[owner].append(index)
            for blocks in out:
                blocks.sort()
        return out

    def blocks_of(self, table: str, num_blocks: int, shard: int) -> list[int]:
        """The blocks of ``table`` that ``shard`` owns, ascending."""
        return self.owners(table, num_blocks)[shard] if 0 <= shard < self.num_shards else []

    def count_of(self, table: str, num_blocks: int, shard: int) -> int:
        """How many blocks of ``table`` (``num_blocks``) ``shard`` owns; O(blocks moved of it)."""
        if self._by_table is None:
            by_table: dict[str, list[tuple[int, int]]] = {}
            for (name, rows, index), owner in self._moved.items():
                if not rows:
                    by_table.setdefault(name, []).append((index, owner))
            self._by_table = by_table
        first = (shard - table_offset(table, self.num_shards)) % self.num_shards
        count = len(range(first, num_blocks, self.num_shards))
        for index, owner in self._by_table.get(table, ()):
            if index < num_blocks:
                count += (owner == shard) - (block_shard(table, index, self.num_shards) == shard)
        return count

    def bucket_owners(self, table: str) -> np.ndarray:
        """The shard of every row bucket of sparse table ``table`` (read-only int64 array)."""
        owners = self._buckets.get(table)
        if owners is None:
            owners = bucket_owners(table, self.num_shards)
            for (name, rows, index), shard in self._moved.items():
                if rows and name == table:
                    owners[index] = shard
            owners.setflags(write=False)
            self._buckets[table] = owners
        return owners

    def row_shards(self, table: str, ids: np.ndarray) -> np.ndarray:
        """The shard of each int64 row id of sparse table ``table`` (int64 array), vectorised."""
        if self.num_shards == 1:
            return np.zeros(np.shape(ids), dtype=np.int64)
        return self.bucket_owners(table)[row_buckets(table, ids)]

    # -- changes ---------------------------------------------------------------------------------

    def with_moves(self, moves: Mapping[Unit, int], version: int | None = None) -> PlacementMap:
        """A new map (version + 1 unless given) with ``moves`` applied on top of this one."""
        merged = dict(self._moved)
        merged.update(moves)
        return PlacementMap(self.version + 1 if version is None else version, self.num_shards, merged, self.addresses)

    def describe(self) -> str:
        """One line for people: ``v3 on 2 shards, 1 block and 0 row buckets moved``."""
        blocks = sum(1 for (_, rows, _) in self._moved if not rows)
        return (f"v{self.version} on {self.num_shards} shards, {blocks} block{'s' * (blocks != 1)} and "
                f"{len(self._moved) - blocks} row bucket{'s' * (len(self._moved) - blocks != 1)} moved")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PlacementMap) and (self.version, self.num_shards, self.addresses, self._moved)
                == (other.version, other.num_shards, other.addresses, other._moved))

    def __hash__(self) -> int:
        return hash((self.version, self.num_shards))

    def __repr__(self) -> str:
        return f"PlacementMap({self.describe()})"

    # -- encodings -------------------------------------------------------------------------------

    def to_proto(self) -> ps_pb2.PlacementMap:
        msg = ps_pb2.PlacementMap(version=self.version, num_shards=self.num_shards, addresses=list(self.addresses))
        for (table, rows, index), shard in self._moved.items():
            msg.moved.add(table=table, rows=rows, index=index, shard=shard)
        return msg

    @classmethod
    def from_proto(cls, msg: ps_pb2.PlacementMap) -> PlacementMap:
        """Decode and validate. Raises InvalidArgumentError."""
        return cls(int(msg.version), int(msg.num_shards), _units((u.table, u.rows, u.index, u.shard) for u in msg.moved),
                   list(msg.addresses))

    def to_json(self) -> dict:
        """A JSON-able dict (checkpoint headers)."""
        return {"version": self.version, "num_shards": self.num_shards, "addresses": list(self.addresses),
                "moved": [[table, rows, index, shard] for (table, rows, index), shard in self._moved.items()]}

    @classmethod
    def from_json(cls, data: Mapping) -> PlacementMap:
        """Decode :meth:`to_json`'s dict. Raises InvalidArgumentError (also for a malformed dict)."""
        try:
            return cls(int(data["version"]), int(data["num_shards"]), _units(data.get("moved", ())),
                       [str(a) for a in data.get("addresses", ())])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"malformed placement map: {exc}") from None


def _units(rows: Iterable) -> dict[Unit, int]:
    out: dict[Unit, int] = {}
    for table, rows_, index, shard in rows:
        unit = (str(table), bool(rows_), int(index))
        if unit in out:
            raise InvalidArgumentError(f"placement map names {unit} twice")
        out[unit] = int(shard)
    return out
