"""``UnitMoves``: dense blocks and sparse row buckets moving into and out of one shard, and the placement maps that say so.

A move of units from shard A to shard B under a new map version v (driven by
``launcher.placement_moves``, ``docs/placement.md``):

1. A :meth:`UnitMoves.give`: installs v, so every push planned with an older map, or naming
   a unit A no longer owns, is refused unapplied (reason MOVED) after its duplicate check;
   waits (bounded) until no push admitted under an older map is still being applied; stops
   holding the units and answers their values, optimizer state and versions. A keeps a
   copy until :meth:`release` (``Shard.kept``: checkpoints save it, a restore puts it back),
   so a rerun of an interrupted move can give them again, even after A restarted.
2. B :meth:`UnitMoves.take`: holds the units (a repeat is a no-op) and installs v.
3. Every other shard installs v (:meth:`UnitMoves.install`); then A releases its copies.

A push that A applied before the move and whose reply was lost is retried to A and
acknowledged as a duplicate there (A keeps its dedup table); a push A refused was applied
nowhere, and the client sends it, re-planned, to B. So every push is applied once.

A unit is a dense block (its values, optimizer state, version and access count) or a
sparse table's row bucket (``ps.tables.placement``: its rows with their optimizer state and
eviction data, its access count; each page also carries the table's use clock and, once,
its admission sketch: ``SparseTable.take_buckets``).

In sync mode a move settles between two steps: :meth:`UnitMoves.hold` holds the pushes of
a step boundary on every shard and waits until every earlier step is applied, so no sum is
pending when units move; :meth:`UnitMoves.unhold` lets them go on. Thread-safe.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ps.errors import FailedPreconditionError, InvalidArgumentError
from ps.shard.consistency import Mode, Proceed, Wait
from ps.shard.shard import Shard
from ps.tables.dense_table import Block, DenseTable
from ps.tables.placement import ROW_BUCKETS
from ps.tables.placement_map import PlacementMap, Unit
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.sparse_table import SparseTable
from ps.tables.spec import TableSpec, exists_alike

#: one unit's state as it travels: the unit, its version (updates applied), its arrays by name
UnitState = tuple[Unit, int, dict[str, np.ndarray]]


class UnitMoves:
    """The moves of one :class:`Shard`'s units. The constructor does no I/O."""

    def __init__(self, shard: Shard) -> None:
        self._shard = shard

    @property
    def _given(self) -> dict[Unit, Block | dict[str, np.ndarray]]:
        """Units given away, kept until released (a rerun gives them again): the shard's
        :attr:`Shard.kept`, so checkpoints save them and a restore puts them back. Lock held."""
        return self._shard.kept

    def reshard(self, placement: PlacementMap, index: int, tables: Sequence[TableSpec | SparseTableSpec] = (),
                step: int = 0, workers: Sequence[int] = ()) -> None:
        """A resize: take place ``index`` in ``placement`` (-1: leave) and create ``tables`` (dense
        holding no blocks, sparse holding no row buckets) where missing, unless the shard
        already has ``placement`` or a newer map. In sync mode a shard new to the cluster (no
        map yet) starts its step clock at ``step`` (the move's step boundary) expecting
        ``workers`` (live, each at that clock), its pushes held from it as on the other
        shards; in ssp mode it knows ``workers`` (live) at clock ``step`` (at most their
        clocks on the other shards), so that its pulls keep the staleness bound from the start
        (unknown workers would not be waited for). Does not block. Raises FailedPreconditionError (an older map),
        AlreadyExistsError (a table of another spec), InvalidArgumentError."""
        shard = self._shard
        with shard.steps.lock:
            current = shard.current_placement()
            if current is not None and placement.version < current.version:
                raise FailedPreconditionError(f"resize to placement {placement.describe()}: this shard already "
                                              f"has {current.describe()}")
            if current is not None and placement.version == current.version:
                return  # done before: a rerun
            if current is None and shard.config.mode is Mode.SYNC:
                shard.gate.load(step, {int(w): step for w in workers})
                shard.gate.hold_for_move(step)
            elif current is None and shard.config.mode is Mode.SSP:  # pulls here wait for them from the start
                shard.gate.load(0, {int(w): step for w in workers})
            for spec in tables:
                if isinstance(spec, SparseTableSpec):
                    if not exists_alike(spec, shard.rows.tables, shard.tables, "dense"):
                        table = SparseTable(spec, max(index, 0), placement.num_shards, shard.rows.budget)
                        table.held[:] = False  # its buckets arrive by moves
                        shard.rows.tables[spec.name] = table
                elif not exists_alike(spec, shard.tables, shard.rows.tables, "sparse"):
                    shard.tables[spec.name] = DenseTable.create(spec, [])
            shard.reshard(index, placement)

    def hold(self, from_step: int, timeout_s: float) -> tuple[int, list[int]]:
        """Sync: hold pushes for steps >= the boundary ``max(from_step, first step not started
        here)``; with ``from_step`` > 0 then wait (bounded by ``timeout_s``) until every step
        before it is applied here, so that no sum is pending while blocks move. Returns the
        boundary and the live workers. Other modes, or a shard a resize dropped: nothing to hold, ``(0, [])``. Blocks with
        ``from_step`` > 0. Raises FailedPreconditionError (the shard is past ``from_step``: a
        later step started), DeadlineExceededError naming the workers a step waits for."""
        shard = self._shard
        steps, gate = shard.steps, shard.gate
        if shard.config.mode is not Mode.SYNC or shard.retired:  # a retired shard gets no pushes
            return 0, []
        deadline = steps.clock() + timeout_s
        with steps.lock:
            boundary = max(from_step, gate.first_open_step())
            if from_step and boundary > from_step:
                raise FailedPreconditionError(f"a move at step {from_step}: step {boundary - 1} already started here")
            gate.hold_for_move(boundary)
            steps.wake()
            if from_step:
                steps.wait(lambda: Proceed() if gate.version >= boundary and not gate.step_started() else Wait(
                    f"a move at step {boundary} waits for step {gate.version} to be applied", gate.waiting_for()),
                    deadline)
            return boundary, gate.live_workers()

    def unhold(self) -> None:
        """Sync: release :meth:`hold`: held pushes go on (planned with an older map: refused as
        MOVED, and planned again by their client). Does not block."""
        with self._shard.steps.lock:
            self._shard.gate.release_move()
            self._shard.steps.wake()

    def install(self, placement: PlacementMap) -> PlacementMap:
        """Install ``placement`` if it is newer than the shard's map; returns the shard's map.
        Does not block. Raises FailedPreconditionError (another shard count, no topology)."""
        shard = self._shard
        with shard.steps.lock:
            current = self._current()
            if placement.version > current.version:
                shard.set_placement(placement)
            return shard.current_placement()

    def give(self, placement: PlacementMap, units: Sequence[Unit] | None, timeout_s: float, skip: int = 0,
             max_bytes: int = 0) -> tuple[list[UnitState], int | None]:
        """Install ``placement``, wait for pushes admitted under older maps, and hand over
        ``units`` (each this shard owned under its previous map, and ``placement`` puts
        elsewhere; None: every unit this shard holds or kept that ``placement`` puts
        elsewhere, which is how an interrupted move is finished). A repeat with the same map
        gives the kept copies again. Answers one page: the units (in order) from ``skip`` on,
        up to about ``max_bytes`` (at least one; 0: all), and the ``skip`` of the next page
        (None: none). Blocks up to ``timeout_s``. Raises
        FailedPreconditionError (an older map, a unit not here), InvalidArgumentError (a
        unit ``placement`` leaves here, a bucket out of range), NotFoundError, DeadlineExceededError."""
        shard = self._shard
        steps = shard.steps
        deadline = steps.clock() + timeout_s
        index = self._index()
        with steps.lock:
            current = self._current()
            if placement.version < current.version or (placement.version == current.version
                                                       and placement != current):
                raise FailedPreconditionError(f"move under placement {placement.describe()}: this shard already "
                                              f"has {current.describe()}")
            if units is None:
                for unit in [u for u in self._given if _owner(placement, u) == index]:
                    self._move_in(unit, self._given.pop(unit))  # given, never taken, now back here
                units = self._settled(placement, index)
            for unit in units:
                table, rows, k = unit
                what = "row bucket" if rows else "block"
                if _owner(placement, unit) == index:
                    raise InvalidArgumentError(f"{table!r} {what} {k}: the new map keeps it on this shard")
                held = (shard.rows.table(table).held[k] if 0 <= k < ROW_BUCKETS else False) if rows else \
                    k in shard.table(table).blocks
                if not held and unit not in self._given:
                    raise FailedPreconditionError(f"{table!r} {what} {k} is not on this shard")
            if placement.version > current.version:
                shard.set_placement(placement)
            steps.wait(lambda: Proceed() if not any(v < placement.version for v in shard.admitted) else Wait(
                f"a move waits for pushes admitted under placement maps before v{placement.version}"), deadline)
            by_table: dict[str, list[int]] = {}
            for unit in units:
                table, rows, k = unit
                if rows:
                    by_table.setdefault(table, []).append(k)
                    continue
                given = shard.tables[table].move_out(k)
                if given is not None:
                    self._given[unit] = given
            extras = {}
            for table, buckets in by_table.items():
                rows_table = shard.rows.tables[table]
                for k, arrays in rows_table.take_buckets(buckets).items():
                    self._given[(table, True, k)] = arrays
                extras[table] = rows_table.table_extras()
            shard.blocks_changed()
            picked = [(unit, self._given[unit]) for unit in units[skip:]]
        out = []
        size = 0
        seen: set[str] = set()
        for unit, kept in picked:
            if isinstance(kept, dict):  # a row bucket: its rows, plus the table's clock and (once a page) sketch
                arrays = dict(kept)
                table_extras = extras.get(unit[0], {})
                if "tick" in table_extras:
                    arrays["tick"] = table_extras["tick"]
                if "sketch" in table_extras and unit[0] not in seen:
                    arrays["sketch"] = table_extras["sketch"]
                nbytes = sum(a.nbytes for a in arrays.values())
                if out and max_bytes and size + nbytes > max_bytes:
                    return out, skip + len(out)
                seen.add(unit[0])
                out.append((unit, int(np.asarray(arrays.get("tick", 0))), arrays))
                size += nbytes
                continue
            block = kept
            if out and max_bytes and size + block.values.nbytes * (1 + len(block.state)) > max_bytes:
                return out, skip + len(out)
            with block.lock:  # no push holds it now, but be exact
                arrays = {"values": block.values.copy(), **{f"state.{k}": v.copy() for k, v in block.state.items()},
                          "accesses": np.array(block.accesses, dtype=np.int64)}  # its load moves with it
                out.append((unit, block.version, arrays))
            size += sum(a.nbytes for a in arrays.values())
        return out, None

    def _move_in(self, unit: Unit, kept: Block | dict[str, np.ndarray]) -> bool:
        """Lock held: hold ``unit`` again (a block or a row bucket's arrays); False if held already."""
        table, rows, _ = unit
        if rows:
            return self._shard.rows.tables[table].put_buckets(unit[2], kept)
        return self._shard.tables[table].move_in(kept)

    def _settled(self, placement: PlacementMap, index: int) -> list[Unit]:
        """Lock held: every unit held or kept that ``placement`` puts elsewhere, in order."""
        shard = self._shard
        rows = {(name, True, int(k)) for name, t in shard.rows.tables.items()
                for k in np.flatnonzero(t.held & (placement.bucket_owners(name) != index))}
        return sorted({u for u in self._given if _owner(placement, u) != index}
                      | {(name, False, b) for name, t in shard.tables.items() for b in t.blocks
                         if placement.block_owner(name, b) != index} | rows)

    def take(self, placement: PlacementMap, states: Sequence[UnitState]) -> PlacementMap:
        """Hold the units in ``states`` (those already held are left as they are) and install
        ``placement``, which must put them here. Does not block. Raises InvalidArgumentError
        (arrays that do not fit, a unit placed elsewhere), NotFoundError (unknown table),
        FailedPreconditionError."""
        shard = self._shard
        index = self._index()
        built = []
        for unit, version, arrays in states:
            table_name, rows, block = unit
            if rows and not 0 <= block < ROW_BUCKETS:
                raise InvalidArgumentError(f"{table_name!r}: no row bucket {block}")
            if _owner(placement, unit) != index:
                raise InvalidArgumentError(f"{table_name!r} {'row bucket' if rows else 'block'} {block}: the map "
                                           "puts it on another shard")
            if rows:
                built.append((unit, shard.rows.table(table_name), arrays))  # checked as it is put
                continue
            table = shard.table(table_name)
            built.append((unit, table, _block(table, block, version, arrays)))
        with shard.steps.lock:
            current = self._current()
            if placement.version < current.version:
                raise FailedPreconditionError(f"move under placement {placement.describe()}: this shard already "
                                              f"has {current.describe()}")
            for (unit, table, block), (_, _, arrays) in zip(built, states):
                if unit[1]:
                    table.put_buckets(unit[2], arrays)
                else:
                    table.move_in(block)
                self._given.pop(unit, None)
            shard.blocks_changed()
            if placement.version > current.version:
                shard.set_placement(placement)
            return shard.current_placement()

    def release(self) -> int:
        """Drop the kept copies of units the shard's map puts elsewhere; returns how many. Does not block."""
        shard = self._shard
        with shard.steps.lock:
            placement, index = self._current(), self._index()
            gone = [u for u in self._given if _owner(placement, u) != index]
            for unit in gone:
                del self._given[unit]
            return len(gone)

    def _current(self) -> PlacementMap:
        placement = self._shard.current_placement()
        if placement is None:
            raise FailedPreconditionError("shard topology unknown: nothing to move yet")
        return placement

    def _index(self) -> int:
        if self._shard.retired:
            return -1
        topology = self._shard.topology
        if topology is None:
            raise FailedPreconditionError("shard topology unknown: nothing to move yet")
        return topology[0]


def _owner(placement: PlacementMap, unit: Unit) -> int:
    """The shard ``placement`` puts ``unit`` (a dense block or a row bucket) on."""
    table, rows, index = unit
    return int(placement.bucket_owners(table)[index]) if rows else placement.block_owner(table, index)


def _block(table, index: int, version: int, arrays: Mapping[str, np.ndarray]) -> Block:
    """A block of ``table`` from moved arrays. Raises InvalidArgumentError when they do not fit."""
    spec = table.spec
    if not 0 <= index < spec.num_blocks:
        raise InvalidArgumentError(f"{spec.name}: block {index} out of range [0, {spec.num_blocks})")
    start, stop = spec.block_range(index)
    values = arrays.get("values")
    if values is None or values.shape != (stop - start,) or values.dtype != np.dtype(spec.dtype):
        raise InvalidArgumentError(f"{spec.name}: block {index} moved with values that do not fit the table")
    state = {}
    for name, like in table.optimizer.init_state(values).items():
        arr = arrays.get(f"state.{name}")
        if arr is None or arr.shape != like.shape or arr.dtype != like.dtype:
            raise InvalidArgumentError(f"{spec.name}: block {index} moved without a fitting optimizer state {name!r}")
        state[name] = arr
    block = Block(index, values, state)  # the arrays are the Move's own copies (unit_wire)
    block.version = int(version)
    block.accesses = int(np.asarray(arrays.get("accesses", 0)))  # its load moved with it
    return block

