"""How each kind of table goes into a checkpoint and comes back, possibly on another shard count.

A :class:`TableCodec` per table kind (``"dense"``, ``"sparse"``, keyed like the proto's
``TableKind``) turns one table of a shard into JSON-able metadata plus named NumPy
arrays, and rebuilds a shard's table from the pieces saved by *any* number of shards:
dense tables are stored per block, keyed by ``(table, block index)``, and a restoring
shard keeps the blocks it owns under the new topology; sparse tables are stored as rows
keyed by id and filtered by row placement. A new kind of table slots in with
:func:`register`.

Units in the middle of a move (``docs/placement.md``) are saved too: a shard's *kept*
copies (``Shard.kept``: given away, not yet released) go into a second piece per table,
marked ``meta["kept"]``, and a sparse table's piece says which row buckets it holds
(``held``), so "held with no rows" differs from "not held". A restore takes each unit from
one copy (:func:`best_copies`): the newest, a held copy before a kept one; a kept copy thus
fills a unit no file holds, and two held copies (a checkpoint written across a move) no
longer clash. The restoring shard's own kept copies that the map puts elsewhere come back
as kept copies (:meth:`TableCodec.restore_kept`), so a rerun of the move finishes it.

Codecs are stateless; ``export`` copies under the table's own locks, so it is safe while
the shard serves (the checkpoint holds pushes meanwhile, see ``Recovery.capture``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ps.errors import InvalidArgumentError
from ps.tables.optim import OptimizerSpec, make_optimizer
from ps.tables.placement import ROW_BUCKETS, row_buckets
from ps.tables.placement_map import PlacementMap, Unit
from ps.tables.spec import InitSpec, TableSpec
from ps.tables.dense_table import Block, DenseTable


class CheckpointError(Exception):
    """A checkpoint (or a part of one) that cannot be used: corrupt, incomplete, inconsistent."""


@dataclass(frozen=True)
class Piece:
    """One saved piece of a table: its metadata, its arrays by name (they may load lazily),
    and the file it came from: the saving shard's index, its saved placement map (None:
    none saved) and whether it is the restoring shard's own file (same shard count)."""

    meta: dict
    arrays: Mapping[str, np.ndarray]
    shard: int = 0
    saved: PlacementMap | None = None
    own: bool = False

    @property
    def kept(self) -> bool:
        """Copies the saving shard had given away in a move and kept (not units it held)."""
        return bool(self.meta.get("kept", False))


class TableCodec(Protocol):
    kind: str

    def tables(self, shard) -> list:
        """The tables of this kind the shard holds (called with the shard's lock held)."""

    def export(self, table) -> tuple[dict, dict[str, np.ndarray]]:
        """``(metadata, arrays)``: a consistent copy of one table's state on this shard."""

    def export_kept(self, table, kept: Mapping[Unit, Any]) -> tuple[dict, dict[str, np.ndarray]] | None:
        """``(metadata with "kept": True, arrays)``: copies of the units of ``table`` in the
        shard's ``kept`` (its lock held); None when it keeps none."""

    def restore(self, pieces: Sequence[Piece], shard_index: int, placement: PlacementMap):
        """The table as shard ``shard_index`` holds it under ``placement``, from the pieces
        every saving shard wrote (each unit from its best copy: :func:`best_copies`). Raises
        CheckpointError when they do not fit together."""

    def restore_kept(self, pieces: Sequence[Piece], shard_index: int, placement: PlacementMap) -> dict[Unit, Any]:
        """The kept copies of the restoring shard's own file that ``placement`` puts on another
        shard, as ``Shard.kept`` holds them. Raises CheckpointError."""

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
    texts = {json.dumps(p.meta.get("spec"), sort_keys=True) for p in pieces}
    if len(texts) != 1:
        raise CheckpointError(f"the shards' files disagree on a table's spec: {sorted(texts)}")
    return spec_from_json(cls, pieces[0].meta["spec"])


def best_copies(units: Sequence[tuple[int, int, int]], pieces: Sequence[Piece],
                owner: Callable[[PlacementMap, int], int]) -> dict[int, int]:
    """Which piece each unit is restored from: ``{unit index: piece index}`` for ``units``
    (``(piece index, unit index, newness)`` per saved copy), the copy with the highest
    ``(newness, held before kept, the version of its file's saved map, whether that map puts
    the unit on the saving shard, the lower shard index)``. Newness: a dense block's version
    (the updates applied to it: a copy saved later in a move's history never has fewer); for
    a row bucket 0, so the saved map decides: a give installs the new map as it drops the
    bucket and a take as it adds it, so the file with the newer map saved the later state.
    ``owner(map, unit)``: the unit's shard in a map. Pure."""
    best: dict[int, tuple] = {}
    chosen: dict[int, int] = {}
    for i, unit, newness in units:
        piece = pieces[i]
        version = piece.saved.version if piece.saved is not None else 0
        placed = piece.saved is not None and owner(piece.saved, unit) == piece.shard
        key = (newness, not piece.kept, version, placed, -piece.shard)
        if unit not in best or key > best[unit]:
            best[unit], chosen[unit] = key, i
    return chosen


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
        return self._export(table.spec, [table.blocks[index] for index in sorted(table.blocks)])

    def export_kept(self, table: DenseTable, kept: Mapping[Unit, Any]) -> tuple[dict, dict[str, np.ndarray]] | None:
        name = table.spec.name
        blocks = [block for (t, rows, _), block in sorted(kept.items()) if t == name and not rows]
        if not blocks:
            return None
        meta, arrays = self._export(table.spec, blocks)
        return dict(meta, kept=True), arrays

    @staticmethod
    def _export(spec: TableSpec, blocks: Sequence[Block]) -> tuple[dict, dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        saved = []
        for block in blocks:
            index = block.index
            with block.lock:
                arrays[f"{index}.values"] = block.values.copy()
                for name, arr in block.state.items():
                    arrays[f"{index}.state.{name}"] = arr.copy()
                saved.append([index, block.version])
        return {"spec": spec_to_json(spec), "blocks": saved}, arrays

    def restore(self, pieces: Sequence[Piece], shard_index: int, placement: PlacementMap) -> DenseTable:
        spec: TableSpec = _one_spec(TableSpec, pieces)
        copies = [(i, int(index), int(version)) for i, p in enumerate(pieces) for index, version in
                  p.meta.get("blocks", ())]
        versions = {(i, index): version for i, index, version in copies}
        chosen = best_copies(copies, pieces, lambda m, b: m.block_owner(spec.name, b))
        optimizer = make_optimizer(spec.optimizer)
        blocks = {}
        for b in placement.blocks_of(spec.name, spec.num_blocks, shard_index):
            if b not in chosen:
                raise CheckpointError(f"{spec.name}: block {b} is in none of the checkpoint's files")
            i = chosen[b]
            blocks[b] = self._block(spec, optimizer, b, versions[(i, b)], pieces[i].arrays)
        return DenseTable(spec, blocks, optimizer)

    def restore_kept(self, pieces: Sequence[Piece], shard_index: int, placement: PlacementMap) -> dict[Unit, Any]:
        spec: TableSpec = _one_spec(TableSpec, pieces)
        optimizer = make_optimizer(spec.optimizer)
        return {(spec.name, False, int(b)): self._block(spec, optimizer, int(b), int(version), p.arrays)
                for p in pieces if p.own and p.kept for b, version in p.meta.get("blocks", ())
                if placement.block_owner(spec.name, int(b)) != shard_index}

    @staticmethod
    def _block(spec: TableSpec, optimizer, b: int, version: int, arrays: Mapping[str, np.ndarray]) -> Block:
        if not 0 <= b < spec.num_blocks:
            raise CheckpointError(f"{spec.name}: block {b} out of range [0, {spec.num_blocks})")
        start, stop = spec.block_range(b)
        values = _array(arrays, f"{b}.values", (stop - start,), np.dtype(spec.dtype), spec.name)
        state = {
            name: _array(arrays, f"{b}.state.{name}", like.shape, like.dtype, spec.name)
            for name, like in optimizer.init_state(values).items()
        }
        block = Block(b, values, state)
        block.version = version
        return block

    def install(self, shard, tables: list) -> None:
        shard.tables.clear()
        shard.tables.update((t.spec.name, t) for t in tables)


class SparseCodec:
    """Sparse tables, as rows keyed by id (``SparseTable.export_state``/``restore``), with the
    bitmap of the row buckets the shard holds (``held``: a bucket held with no rows is not a
    bucket elsewhere)."""

    kind = "sparse"

    def tables(self, shard) -> list:
        rows = getattr(shard, "rows", None)
        return list(rows.tables.values()) if rows is not None else []

    def export(self, table) -> tuple[dict, dict[str, np.ndarray]]:
        arrays = table.export_state()
        arrays["held"] = table.held.copy()  # the buckets held here, with rows or not (moves change it)
        return {"spec": spec_to_json(table.spec)}, arrays

    def export_kept(self, table, kept: Mapping[Unit, Any]) -> tuple[dict, dict[str, np.ndarray]] | None:
        """The kept buckets' rows, concatenated in bucket order (``meta["buckets"]``), with
        each bucket's access count (``accesses``, one per bucket)."""
        name = table.spec.name
        buckets = sorted((k, arrays) for (t, rows, k), arrays in kept.items() if t == name and rows)
        if not buckets:
            return None
        keys = [k for k in buckets[0][1] if _row_key(k)]
        out = {key: np.concatenate([np.asarray(arrays[key]) for _, arrays in buckets]) for key in keys}
        out["accesses"] = np.array([int(np.asarray(arrays.get("accesses", 0))) for _, arrays in buckets],
                                   dtype=np.int64)
        return {"spec": spec_to_json(table.spec), "kept": True, "buckets": [int(k) for k, _ in buckets]}, out

    def restore(self, pieces: Sequence[Piece], shard_index: int, placement: PlacementMap):
        from ps.tables.sparse_spec import SparseTableSpec
        from ps.tables.sparse_table import SparseTable

        spec = _one_spec(SparseTableSpec, pieces)
        try:
            if any(p.kept or "held" in p.arrays for p in pieces):
                sources = self._best_rows(spec.name, pieces)
            else:  # written before checkpoints said which buckets a file holds: every row as saved
                sources = [p.arrays for p in pieces]
            return SparseTable.restore(spec, sources, shard_index, placement.num_shards,
                                       placement.bucket_owners(spec.name))
        except (InvalidArgumentError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{spec.name}: {exc}") from None

    @staticmethod
    def _best_rows(name: str, pieces: Sequence[Piece]) -> list[Mapping[str, np.ndarray]]:
        """Each piece's arrays with only the rows of the buckets it is the best copy of
        (:func:`best_copies`); a kept piece adds only rows. Raises KeyError, ValueError."""
        copies = []
        ids_of = []
        for i, p in enumerate(pieces):
            ids = np.asarray(p.arrays["ids"])
            if ids.ndim != 1 or ids.dtype != np.int64:
                raise ValueError(f"checkpoint ids must be 1-D int64, got {ids.dtype}")
            ids_of.append(ids)
            if p.kept:
                buckets = [int(k) for k in p.meta.get("buckets", ())]
                if any(not 0 <= k < ROW_BUCKETS for k in buckets):
                    raise ValueError("a kept row bucket out of range")
            elif "held" in p.arrays:
                held = np.asarray(p.arrays["held"])
                if held.shape != (ROW_BUCKETS,) or held.dtype != np.bool_:
                    raise ValueError(f"held buckets saved as {held.dtype.name}{list(held.shape)}")
                buckets = np.flatnonzero(held).tolist()
            else:  # an older file among newer ones: the buckets of its rows
                buckets = np.unique(row_buckets(name, ids)).tolist()
            copies += [(i, k, 0) for k in buckets]
        chosen = best_copies(copies, pieces, lambda m, k: int(m.bucket_owners(name)[k]))
        source = np.full(ROW_BUCKETS, -1, dtype=np.int64)
        for k, i in chosen.items():
            source[k] = i
        out = []
        for i, (p, ids) in enumerate(zip(pieces, ids_of)):
            mine = source[row_buckets(name, ids)] == i
            view = {key: np.asarray(p.arrays[key])[mine] for key in p.arrays if _row_key(key)}
            if not p.kept:  # the table's clock, sketch and counters
                view.update((key, p.arrays[key]) for key in p.arrays if not _row_key(key) and key != "held")
            out.append(view)
        return out

    def restore_kept(self, pieces: Sequence[Piece], shard_index: int, placement: PlacementMap) -> dict[Unit, Any]:
        from ps.tables.sparse_optim import RowOptimizer
        from ps.tables.sparse_spec import SparseTableSpec
        from ps.tables.sparse_table import check_rows

        spec = _one_spec(SparseTableSpec, pieces)
        owners = placement.bucket_owners(spec.name)
        layout = RowOptimizer(spec.optimizer).state_layout(spec.dim, np.dtype(spec.dtype))
        kept: dict[Unit, Any] = {}
        for p in pieces:
            if not (p.own and p.kept):
                continue
            try:
                buckets = [int(k) for k in p.meta.get("buckets", ())]
                if any(not 0 <= k < ROW_BUCKETS for k in buckets):
                    raise ValueError("a kept row bucket out of range")
                arrays = {key: np.asarray(p.arrays[key]) for key in p.arrays if _row_key(key)}
                check_rows(spec, layout, arrays)
                accesses = np.asarray(p.arrays["accesses"])
                if accesses.shape != (len(buckets),):
                    raise ValueError(f"{len(buckets)} kept buckets with {accesses.shape} access counts")
                of = row_buckets(spec.name, arrays["ids"])
                for j, k in enumerate(buckets):
                    if owners[k] != shard_index:
                        mine = of == k
                        kept[(spec.name, True, k)] = dict({key: arr[mine] for key, arr in arrays.items()},
                                                          accesses=np.array(accesses[j], dtype=np.int64))
            except (InvalidArgumentError, KeyError, ValueError) as exc:
                raise CheckpointError(f"{spec.name}: kept row buckets: {exc}") from None
        return kept

    def install(self, shard, tables: list) -> None:
        shard.rows.tables.clear()
        for table in tables:
            shard.rows.adopt(table)


def _row_key(key: str) -> bool:
    """Whether a sparse table's saved array ``key`` has one entry per row."""
    return key in ("ids", "values", "last_used", "hits") or key.startswith("state.")


register(DenseCodec())
register(SparseCodec())
