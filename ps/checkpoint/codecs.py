"""How each kind of table goes into a checkpoint and comes back, possibly on another shard count.

A :class:`TableCodec` per table kind (``"dense"``, ``"sparse"``, keyed like the proto's
``TableKind``) turns one table of a shard into JSON-able metadata plus named NumPy
arrays, and rebuilds a shard's table from the pieces saved by *any* number of shards:
dense tables are stored per block, keyed by ``(table, block index)``, and a restoring
shard keeps the blocks it owns under the new topology; sparse tables are stored as rows
keyed by id and filtered by row placement. A new kind of table slots in with
:func:`register`.

Codecs are stateless; ``export`` copies under the table's own locks, so it is safe while
the shard serves (the checkpoint holds pushes meanwhile, see ``Recovery.capture``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ps.errors import InvalidArgumentError
from ps.tables.optim import OptimizerSpec, make_optimizer
from ps.tables.placement_map import PlacementMap
from ps.tables.spec import InitSpec, TableSpec
from ps.tables.dense_table import Block, DenseTable


class CheckpointError(Exception):
    """A checkpoint (or a part of one) that cannot be used: corrupt, incomplete, inconsistent."""


#: one saved piece of a table: (metadata, arrays by name); arrays may load lazily
Piece = tuple[dict, Mapping[str, np.ndarray]]


class TableCodec(Protocol):
    kind: str

    def tables(self, shard) -> list:
        """The tables of this kind the shard holds (called with the shard's lock held)."""

    def export(self, table) -> tuple[dict, dict[str, np.ndarray]]:
        """``(metadata, arrays)``: a consistent copy of one table's state on this shard."""

    def restore(self, pieces: Sequence[Piece], shard_index: int, placement: PlacementMap):
        """The table as shard ``shard_index`` holds it under ``placement``, from the pieces
        every saving shard wrote. Raises CheckpointError when they do not fit together."""

    def install(self, shard, tables: list) -> None:
        """Make ``tables`` the shard's tables of this kind (shard lock held, before serving)."""


CODECS: dict[str, TableCodec] = {}


def register(codec: TableCodec) -> TableCodec:
    """Add (or replace) the codec for ``codec.kind``; returns it."""
    CODECS[codec.kind] = codec
    return codec


def spec_to_json(spec: Any) -> dict:
    """A table spec dataclass as plain JSON values."""
    return dataclasses.asdict(spec)


def spec_from_json(cls: type, data: Any):
    """Rebuild and validate a spec of dataclass ``cls``. Raises CheckpointError."""
    try:
        kwargs = dict(data)
        kwargs["optimizer"] = OptimizerSpec(**kwargs["optimizer"])
        kwargs["init"] = InitSpec(**kwargs["init"])
        if "shape" in kwargs:
            kwargs["shape"] = tuple(int(d) for d in kwargs["shape"])
        spec = cls(**kwargs)
        spec.validate()
        return spec
    except (TypeError, KeyError, ValueError, InvalidArgumentError) as exc:
        raise CheckpointError(f"bad table spec {data!r}: {exc}") from None


def _one_spec(cls: type, pieces: Sequence[Piece]):
    texts = {json.dumps(meta.get("spec"), sort_keys=True) for meta, _ in pieces}
    if len(texts) != 1:
        raise CheckpointError(f"the shards' files disagree on a table's spec: {sorted(texts)}")
    return spec_from_json(cls, pieces[0][0]["spec"])


def _array(arrays: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...], dtype: np.dtype,
           table: str) -> np.ndarray:
    try:
        arr = np.asarray(arrays[key])
    except KeyError:
        raise CheckpointError(f"{table}: array {key!r} is missing") from None
    if arr.shape != shape or arr.dtype != dtype:
        raise CheckpointError(f"{table}: {key} is {arr.dtype.name}{list(arr.shape)}, "
                              f"expected {dtype.name}{list(shape)}")
    return arr if arr.flags.writeable and arr.flags.c_contiguous else arr.copy()


class DenseCodec:
    """Dense tables, block by block: ``<b>.values`` and ``<b>.state.<name>`` per block."""

    kind = "dense"

    def tables(self, shard) -> list:
        return list(shard.tables.values())

    def export(self, table: DenseTable) -> tuple[dict, dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        blocks = []
        for index in sorted(table.blocks):
            block = table.blocks[index]
            with block.lock:
                arrays[f"{index}.values"] = block.values.copy()
                for name, arr in block.state.items():
                    arrays[f"{index}.state.{name}"] = arr.copy()
                blocks.append([index, block.version])
        return {"spec": spec_to_json(table.spec), "blocks": blocks}, arrays

    def restore(self, pieces: Sequence[Piece], shard_index: int, placement: PlacementMap) -> DenseTable:
        spec: TableSpec = _one_spec(TableSpec, pieces)
        where: dict[int, tuple[int, Mapping[str, np.ndarray]]] = {}
        for meta, arrays in pieces:
            for index, version in meta.get("blocks", ()):
                if index in where:
                    raise CheckpointError(f"{spec.name}: block {index} is saved twice")
                where[int(index)] = (int(version), arrays)
        optimizer = make_optimizer(spec.optimizer)
        dtype = np.dtype(spec.dtype)
        blocks = {}
        for b in placement.blocks_of(spec.name, spec.num_blocks, shard_index):
            if b not in where:
                raise CheckpointError(f"{spec.name}: block {b} is in none of the checkpoint's files")
            version, arrays = where[b]
            start, stop = spec.block_range(b)
            values = _array(arrays, f"{b}.values", (stop - start,), dtype, spec.name)
            state = {
                name: _array(arrays, f"{b}.state.{name}", like.shape, like.dtype, spec.name)
                for name, like in optimizer.init_state(values).items()
            }
            block = Block(b, values, state)
            block.version = version
            blocks[b] = block
        return DenseTable(spec, blocks, optimizer)

    def install(self, shard, tables: list) -> None:
        shard.tables.clear()
        shard.tables.update((t.spec.name, t) for t in tables)


class SparseCodec:
    """Sparse tables, as rows keyed by id (``SparseTable.export_state``/``restore``)."""

    kind = "sparse"

    def tables(self, shard) -> list:
        rows = getattr(shard, "rows", None)
        return list(rows.tables.values()) if rows is not None else []

    def export(self, table) -> tuple[dict, dict[str, np.ndarray]]:
        return {"spec": spec_to_json(table.spec)}, table.export_state()

    def restore(self, pieces: Sequence[Piece], shard_index: int, placement: PlacementMap):
        from ps.tables.sparse_spec import SparseTableSpec
        from ps.tables.sparse_table import SparseTable

        spec = _one_spec(SparseTableSpec, pieces)
        try:
            return SparseTable.restore(spec, [arrays for _, arrays in pieces], shard_index, placement.num_shards,
                                       placement.bucket_owners(spec.name))
        except (InvalidArgumentError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{spec.name}: {exc}") from None

    def install(self, shard, tables: list) -> None:
        shard.rows.tables.clear()
        for table in tables:
            shard.rows.adopt(table)


register(DenseCodec())
register(SparseCodec())
