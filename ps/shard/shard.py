"""``Shard``: one shard's state and logic, without any networking.

A shard is composed of parts that each own their state: a
:class:`~ps.shard.sequencer.Sequencer` (``steps``: the lock, gate, dedup, counters, the push
flow and the bounded waits), a :class:`~ps.shard.membership.Membership` (worker table,
leases, fences, topology), a :class:`~ps.shard.recovery.Recovery` (checkpoints and
rollbacks), :class:`~ps.shard.sparse_rows.SparseRows` (``rows``), a
:class:`~ps.shard.memory_budget.MemoryBudget` (``budget``: what its tables may hold) and,
here, the dense tables and their verbs. The data handler (``ps.serving.handler``) decodes requests, calls these
methods and encodes. Thread-safe: the sequencer's lock guards the bookkeeping and is never
held while arrays are touched (each block has its own lock). Every wait is bounded and,
when it runs out, raises :class:`~ps.errors.DeadlineExceededError` naming whom it waited for.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ps.config import ServerConfig
from ps.errors import (
    AbortedError,
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Reason,
    ResourceExhaustedError,
)
from ps.shard.consistency import Mode, Wait
from ps.shard.membership import Membership
from ps.shard.memory_budget import MemoryBudget, dense_footprint
from ps.shard.recovery import Recovery
from ps.shard.sequencer import PushResult, Sequencer
from ps.shard.sparse_rows import SparseRows
from ps.tables.clipping import clip_by_norm
from ps.tables.dense_table import Block, DenseTable
from ps.tables.placement_map import PlacementMap, Unit
from ps.tables.spec import TableSpec, exists_alike

__all__ = ["PulledBlock", "PushResult", "Shard"]

_all_true = np.logical_and.reduce  # ndarray.all() without its Python wrapper (numpy._core._methods)

#: a dense create of more blocks than this is first checked against the budget at an even
#: share of its size (cheap), before its placement is computed (a Python loop per block)
PLACEMENT_CHECK_BLOCKS = 1 << 14


class PulledBlock(NamedTuple):  # a tuple: built per block of every pull
    table: str
    block: int
    data: bytes | np.ndarray     # a copy of the values, or their slot in a pull's ``into``
    version: int
    count: int                   # elements in the block
    wire_dtype: int              # its dtype on the wire (ps.protocol.wire)


class _PendingBlocks:
    """Sync: the dense blocks that hold a sum for the open step (a sequencer StepPart)."""

    def __init__(self, steps: Sequencer) -> None:
        self._steps = steps
        self.blocks: set[tuple[DenseTable, Block]] = set()

    def apply_step(self, scale: float) -> None:
        with self._steps.lock:
            pending, self.blocks = self.blocks, set()
        for table, block in pending:
            table.apply_accumulated(block)  # the mean of the gradients this block received

    def discard_step(self) -> None:
        with self._steps.lock:
            self.blocks = set()


class Shard:
    """One shard (see the module docstring). The constructor does no I/O; ``clock`` gives seconds."""

    def __init__(self, config: ServerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.server_id = uuid.uuid4().hex
        self._token = (-1, "")  # (epoch, state_token): see state_token
        self.steps = Sequencer(config, clock)
        topology = (config.shard_index, config.num_shards) if config.num_shards is not None else None
        self.membership = Membership(self.steps, topology)
        self.steps.guard = self.membership
        self.recovery = Recovery(self.steps, self.membership)
        self.tables: dict[str, DenseTable] = {}
        self._create_lock = threading.Lock()
        self.budget = MemoryBudget(config.max_memory_bytes, self._held_bytes)
        self.rows = SparseRows(self.steps, self.membership, self.tables, self.budget)
        self.rows.placer = self  # row pushes and pulls follow the map, and moves wait for row pushes
        self._pending = _PendingBlocks(self.steps)
        self.steps.step_parts = (self._pending, self.rows)
        self.gate, self.counters = self.steps.gate, self.steps.counters
        self._placement: PlacementMap | None = None  # None: the default map of the topology (version 1)
        self._arriving: set[str] | None = None  # tables with blocks placed here not held yet (None: unknown)
        #: a resize removed this shard from the map: it owns nothing and redirects every data call
        self.retired = False
        #: pushes admitted under each placement version and not yet finished (a move waits for them)
        self.admitted: dict[int, int] = {}
        #: units this shard gave away in a move and keeps until the move releases them (a rerun
        #: gives them again): unit -> a dense ``Block``, or a row bucket's arrays
        #: (``SparseTable.take_buckets``). Part of the shard's state: checkpoints save them
        #: (marked kept) and a restore puts them back (``ps.shard.moves``, docs/placement.md).
        #: Guarded by the sequencer's lock.
        self.kept: dict[Unit, Block | dict[str, np.ndarray]] = {}

    @property
    def epoch(self) -> int:
        """Bumps each time the state is restored from a checkpoint."""
        return self.steps.epoch

    @property
    def topology(self) -> tuple[int, int] | None:
        return self.membership.topology

    @property
    def metrics(self):
        """Observes pushes and waits (``ps.metrics.shard_metrics.ShardMetrics``); None: off."""
        return self.steps.metrics

    @metrics.setter
    def metrics(self, metrics) -> None:
        self.steps.metrics = metrics

    # the parts' state and verbs, as the shard's callers knew them (see the parts for their docs)
    dedup = property(lambda self: self.steps.dedup)
    fenced = property(lambda self: self.membership.fenced)
    unheard = property(lambda self: self.membership.unheard)
    last_contact = property(lambda self: self.membership.last_contact)
    awaiting_rollback = property(lambda self: self.membership.awaiting_rollback)
    restored_from = property(lambda self: self.recovery.restored_from)
    rollback_id = property(lambda self: self.recovery.rollback_id)

    def register(self, worker: int, session: int = 0) -> tuple[int, int, int]:
        return self.membership.register(worker, session)

    def adopt_topology(self, shard_index: int, num_shards: int) -> None:
        self.membership.adopt_topology(shard_index, num_shards)

    def unfence(self, worker: int) -> bool:
        return self.membership.unfence(worker)

    def leave(self, worker: int, session: int = 0) -> None:
        self.membership.leave(worker, session)

    def heartbeat(self, worker: int, session: int = 0) -> int:
        return self.membership.heartbeat(worker, session)

    def expire_leases(self) -> list[int]:
        return self.membership.expire_leases()

    # -- placement ----------------------------------------------------------------------

    @property
    def placement(self) -> PlacementMap | None:
        """The shard's placement map (``docs/placement.md``); None before it knows its topology."""
        with self.steps.lock:
            return self.current_placement()

    def current_placement(self) -> PlacementMap | None:
        """:attr:`placement`, the lock held by the caller. Does not block."""
        topology = self.membership.topology
        if topology is None:
            return None
        if self._placement is None:
            self._placement = PlacementMap.initial(topology[1])
        return self._placement

    def set_placement(self, placement: PlacementMap) -> None:
        """Make ``placement`` the shard's map (lock held by the caller; a restore, a move). Does
        not move data: ``ps.shard.moves`` does that first. Raises FailedPreconditionError for a
        map of another shard count than the topology's."""
        topology = self.membership.topology
        if topology is not None and placement.num_shards != topology[1] and not self.retired:
            raise FailedPreconditionError(f"placement map {placement.describe()} does not fit this shard's "
                                          f"topology ({topology[1]} shards)")
        self._placement = placement
        self.blocks_changed()
        self.steps.wake()

    def reshard(self, index: int, placement: PlacementMap) -> None:
        """Lock held: a resize gives this shard place ``index`` in ``placement`` (its topology
        becomes ``(index, placement.num_shards)``), or none (``index`` -1: it leaves the
        cluster, owns nothing and redirects every data call). Installs ``placement``. Raises
        InvalidArgumentError for an index out of range."""
        if not -1 <= index < placement.num_shards:
            raise InvalidArgumentError(f"shard index {index} is not in a map of {placement.num_shards} shards")
        if index < 0:
            self.retired = True
        else:
            self.retired = False
            self.membership.topology = (index, placement.num_shards)
        self._placement = placement
        self.blocks_changed()
        self.steps.wake()

    def blocks_changed(self) -> None:
        """Lock held: the map or the blocks held changed (a move); :meth:`arriving` recomputes."""
        self._arriving = None

    def arriving(self) -> set[str]:
        """Lock held: the dense tables with blocks the map places here that this shard does not
        hold yet (a move under way): it holds fewer than the map gives it (a shard never holds
        a block it does not own: a settle gives those away). Recomputed only after a change,
        in O(tables + moved blocks); does not block."""
        if self._arriving is None:
            placement, topology = self.current_placement(), self.membership.topology
            self._arriving = set()
            if placement is not None and not self.retired:
                for name, table in self.tables.items():  # a shard holds no block it does not own (moves)
                    if placement.count_of(name, table.spec.num_blocks, topology[0]) != len(table.blocks):
                        self._arriving.add(name)
        return self._arriving

    def moved_error(self, version: int, what: str = "") -> FailedPreconditionError | None:
        """The MOVED refusal of a call planned with map ``version`` (0: unchecked) that names
        units elsewhere (``what``: which, "" for none), or None when it may go on here. Lock held."""
        current = self.current_placement()
        if self.retired:
            what = what or "this shard left the cluster in a resize"
        if current is None or ((not version or version == current.version) and not what):
            return None
        why = what or f"the call was planned with placement map v{version}"
        self.counters["moved"] += 1
        return FailedPreconditionError(f"{why}; this shard has placement map {current.describe()}: "
                                       "refresh the map and plan again", reason=Reason.MOVED)

    # -- tables -------------------------------------------------------------------------

    def create_table(self, spec: TableSpec) -> bool:
        """Create the table (its blocks placed here), or accept an identical spec.

        Returns True if created. Raises AlreadyExistsError for a different spec under the
        same name, FailedPreconditionError before the topology is known (or, reason MOVED,
        on a shard a resize removed), and
        ResourceExhaustedError, before anything is allocated, when the blocks it would hold
        here (with optimizer state and update buffers: ``ps.shard.memory_budget``) do not
        fit in what is left of the memory budget; a table of more than
        ``PLACEMENT_CHECK_BLOCKS`` blocks is first checked at 7/8 of an even share, so that
        a huge one is refused at once, without computing its placement. A refused create
        changes nothing. Blocks while it allocates; creates on one shard run one at a time
        (identical creates from many workers then reserve memory once).
        """
        spec.validate()
        with self._create_lock:
            return self._create_table(spec)

    def _create_table(self, spec: TableSpec) -> bool:
        with self.steps.lock:
            if self.membership.topology is None:
                raise FailedPreconditionError("shard topology unknown: register or give it with the request")
            if exists_alike(spec, self.tables, self.rows.tables, "sparse"):
                return False
            if self.retired:
                raise self.moved_error(0)
            index, count = self.membership.topology
            placement = self.current_placement()
        what = f"dense table {spec.name!r} ({spec.size} elements of {spec.dtype}, {spec.optimizer.name})"
        itemsize, sync = np.dtype(spec.dtype).itemsize, self.config.mode is Mode.SYNC
        try:
            if spec.num_blocks > PLACEMENT_CHECK_BLOCKS:
                self.budget.check(dense_footprint(itemsize, spec.optimizer.name, spec.size * 7 // (8 * count), sync),
                                  what)
            owned = placement.blocks_of(spec.name, spec.num_blocks, index)
            elements = sum(min(spec.block_elems, spec.size - b * spec.block_elems) for b in owned)
            nbytes = dense_footprint(itemsize, spec.optimizer.name, elements, sync)
            self.budget.reserve(nbytes, what)
        except ResourceExhaustedError:
            with self.steps.lock:
                self.counters["memory_refused"] += 1
            raise
        try:
            table = DenseTable.create(spec, owned)  # outside the lock: may allocate a lot
        except MemoryError:
            self.budget.release(nbytes)
            with self.steps.lock:
                self.counters["memory_refused"] += 1
            raise ResourceExhaustedError(f"{what}: the machine ran out of memory before the budget did: "
                                         "lower ps-server --max-memory") from None
        try:
            with self.steps.lock:
                existing = self.tables.setdefault(spec.name, table)
                if existing is not table and existing.spec != spec:
                    raise AlreadyExistsError(f"table {spec.name!r} exists with a different spec")
                return existing is table
        finally:
            self.budget.release(nbytes)  # now held by the table (or dropped with it)

    def _held_bytes(self) -> int:
        """Bytes the tables hold (``ps.shard.memory_budget``). Takes no lock; does not block."""
        sync = self.config.mode is Mode.SYNC
        dense = sum(dense_footprint(t.itemsize, t.spec.optimizer.name, t.elements, sync)
                    for t in list(self.tables.values()))
        return dense + sum(t.nbytes for t in list(self.rows.tables.values()))

    def table(self, name: str) -> DenseTable:
        """Raises NotFoundError for an unknown table, FailedPreconditionError for a sparse one."""
        try:
            return self.tables[name]
        except KeyError:
            if name in self.rows.tables:
                raise FailedPreconditionError(f"table {name!r} is sparse: use pull_rows/push_rows") from None
            raise NotFoundError(f"unknown table {name!r}", reason=Reason.UNKNOWN_TABLE) from None

    # -- push and pull ------------------------------------------------------------------

    def push(
        self,
        worker: int,
        seq: int,
        step: int,
        part: int,
        num_parts: int,
        blocks: Sequence[tuple[str, int]],
        grads: Sequence[np.ndarray],
        timeout_s: float,
        session: int = 0,
        placement_version: int = 0,
        caller_checked: bool = False,
    ) -> PushResult:
        """Apply, aggregate or drop one push message. Blocks up to ``timeout_s`` in sync mode.

        ``session`` is the pushing Client's (see :meth:`Membership.admit_push`; 0: not checked);
        ``placement_version`` the map version it was planned with (0: not checked);
        ``caller_checked``: the caller checked who pushes under the lock just before (a
        push-pull's :meth:`pull_tables` with ``pushes``). A push that was not applied here
        before and was planned with another map, or names a block this shard does not own, is
        refused unapplied (FailedPreconditionError, reason MOVED).

        Raises InvalidArgumentError (bad shape, dtype, length, block, non-finite values),
        NotFoundError (unknown table), FailedPreconditionError (unregistered worker, block
        not on this shard, second contribution to a step, a session fenced by another client
        holding the worker id) and DeadlineExceededError when
        a sync wait runs out. A refused push changes nothing.
        """
        deadline = self.steps.clock() + min(timeout_s, self.config.sync_timeout_s)
        if seq < 1:
            raise InvalidArgumentError(f"sequence numbers start at 1, got {seq}")
        try:
            if not caller_checked:  # by pull_tables(pushes=True), for a push-pull
                with self.steps.lock:  # who before what: a restarted shard says "not registered" first
                    self._check_caller(worker, pushes=True)
            named = self._validate(blocks, grads)
        except Exception:
            with self.steps.lock:
                self.counters["refused"] += 1
            raise
        admitted: list[int] = []
        targets: list[tuple[DenseTable, Block]] = []

        def admit() -> Wait | None:  # lock held: after the duplicate check, before anything is applied
            # which blocks are here is asked now, not on arrival: a push held while a sync move
            # settles is decided after its blocks arrived (or left)
            here = [table.blocks.get(index) for table, index in named]
            held = self.admit_push(step, placement_version, _first_missing(named, here), admitted)
            if held is None:
                targets[:] = [(table, block) for (table, _), block in zip(named, here)]
            return held
        skip = self.config.nonfinite == "skip" and not all(np.isfinite(g).all() for g in grads)
        if self.config.clip_norm and not skip:
            grads = clip_by_norm(grads, self.config.clip_norm)

        def update(accumulate: bool) -> None:
            for (table, block), grad in zip(targets, grads):
                if accumulate:
                    table.accumulate(block, grad)
                else:
                    table.apply(block, grad)

        def done(outcome: str) -> None:  # lock held: the push is recorded (run_push wakes the waiters after)
            if admitted and outcome == "applied":  # accumulated: held until the step it may complete is applied
                self._release_admitted(admitted.pop())

        try:
            return self.steps.run_push(worker, seq, step, part, num_parts, deadline, skip=skip, update=update,
                                       remember=lambda: self._pending.blocks.update(targets), session=session,
                                       admit=admit, done=done)
        finally:
            if admitted:  # accumulated (after its step's apply), duplicate, stale, skipped or failed: released here
                self.done_admitted(admitted[0])

    def admit_push(self, step: int, placement_version: int, elsewhere: str, admitted: list[int]) -> Wait | None:
        """Lock held: the placement side of admitting a push not seen before (dense or rows; the
        sequencer's ``admit``), asked each time the push is decided. A sync move settling at a
        step boundary holds it (returns the :class:`Wait`), before its map is checked; else a
        push planned with another map than ``placement_version``, or naming units elsewhere
        (``elsewhere``: which, "" for none), is refused: raises FailedPreconditionError,
        reason MOVED. An admitted push is counted once under the map's version (appended to
        ``admitted``, which the caller releases with :meth:`done_admitted` when the push is
        done), so a give waits for it; one held after it was counted (it waited in the gate)
        is uncounted, so a give never waits for a held push. Does not block."""
        held = self.gate.move_held(step)
        if held is not None:
            if admitted:
                self._release_admitted(admitted.pop())
                self.steps.wake()
            return held
        refusal = self.moved_error(placement_version, elsewhere)
        if refusal is not None:
            raise refusal
        if not admitted:
            admitted.append(self._placement.version if self._placement is not None else 0)
            self.admitted[admitted[0]] = self.admitted.get(admitted[0], 0) + 1
        return None

    def done_admitted(self, version: int) -> None:
        """A push admitted under placement ``version`` finished (applied or not). Takes the lock."""
        with self.steps.lock:
            self._release_admitted(version)
            self.steps.wake()

    def _release_admitted(self, version: int) -> None:
        """Lock held: one push admitted under placement ``version`` less in flight (the caller wakes waiters)."""
        self.admitted[version] -= 1
        if self.admitted[version] <= 0:
            del self.admitted[version]

    def pull(self, worker: int, step: int, tables: Sequence[str], part: int, num_parts: int,
             timeout_s: float, known: Mapping[tuple[str, int], int] | None = None,
             into: Callable[[str, Block], np.ndarray] | None = None, placement_version: int = 0,
             pushed: bool = False) -> tuple[int, list[PulledBlock]]:
        """This shard's blocks of ``tables`` (those with ``block % num_parts == part``).

        Waits (bounded) in sync mode for version >= ``step`` and in ssp mode for the
        staleness bound. ``known`` maps ``(table, block)`` to the version the worker
        already holds: such a block is not copied again while its version is unchanged.
        Without ``into`` each block is copied into new bytes and unchanged known blocks
        are left out of the result. With ``into`` (``into(table, block)`` gives the
        block's writable slot, e.g. in a worker's shared-memory region) every selected
        block is in the result and is copied straight into its slot unless unchanged;
        ``data`` is then the slot. ``placement_version``: the map the pull was planned with (0:
        not checked); another one is refused with FailedPreconditionError, reason MOVED (or,
        ``pushed``, after a push-pull's push went through: PULL_MOVED). Raises NotFoundError,
        FailedPreconditionError, DeadlineExceededError, and whatever ``into`` raises (nothing
        is copied then).
        """
        deadline = self.steps.clock() + min(timeout_s, self.config.sync_timeout_s)
        num_parts = max(1, num_parts)
        with self.steps.lock:
            selected = self._pull_tables(worker, tables, part, num_parts, False)  # before it waits (or abstains)
            version = self.steps.await_pull(  # a map installed while the pull waits redirects it at once
                worker, step, deadline, lambda: self._check_pull_placement(placement_version, pushed, selected))
            generation = self.steps.generation
        known = known or {}
        picked = [(t, b) for t in selected for b in t.part_blocks(part, num_parts)]
        slots = [into(t.spec.name, b) for t, b in picked] if into is not None else None
        out = []
        for i, (table, block) in enumerate(picked):
            name = table.spec.name
            have = known.get((name, block.index))
            if slots is None:
                data, block_version = table.read_if_newer(block, have)
                if data is not None:
                    out.append(PulledBlock(name, block.index, data, block_version, block.values.size,
                                           table.wire_dtype))
                continue
            _, block_version = table.read_if_newer(block, have, slots[i])
            out.append(PulledBlock(name, block.index, slots[i], block_version, block.values.size, table.wire_dtype))
        with self.steps.lock:
            if self.steps.generation != generation:
                raise AbortedError("the cluster rolled back while this pull was copied: retry from a fresh pull",
                                   reason=Reason.ROLLED_BACK)
            self._check_pull_placement(placement_version, pushed, selected)  # a block may have moved meanwhile
            self.counters["pulls"] += 1
        return version, out

    def _check_pull_placement(self, placement_version: int, pushed: bool, tables: Sequence[DenseTable]) -> None:
        """Lock held: raise MOVED (PULL_MOVED after a push-pull's push) for a pull planned with
        another map version than this shard's, or of a table with blocks still moving here."""
        moving = self.arriving() if placement_version else ()  # asked twice per pull: nothing built when empty
        arriving = [t.spec.name for t in tables if t.spec.name in moving] if moving else []
        refusal = self.moved_error(placement_version, f"{arriving[0]}: blocks moving to this shard have not "
                                                      "arrived yet" if arriving else "")
        if refusal is not None:
            if pushed:
                refusal.reason = Reason.PULL_MOVED
            raise refusal

    def _check_caller(self, worker: int, pushes: bool) -> None:
        """Lock held. Who before what: raises AbortedError (a rollback to adopt) or
        FailedPreconditionError (not registered, left) unless ``worker`` may push or pull now."""
        self.membership.check_current(worker)
        (self.gate.check_live if pushes else self.gate.check_reader)(worker)

    def pull_tables(self, worker: int, tables: Sequence[str], part: int, num_parts: int,
                    pushes: bool = False) -> list[DenseTable]:
        """Check a pull (of a push-pull: ``pushes``) before it waits or anything of its request
        is applied: the part, the caller (who before what), then the tables. Returns the
        tables it reads, each once (naming one table many times must not multiply the copies).
        Does not block. Raises InvalidArgumentError (part), AbortedError,
        FailedPreconditionError (caller, sparse table), NotFoundError."""
        with self.steps.lock:
            return self._pull_tables(worker, tables, part, num_parts, pushes)

    def _pull_tables(self, worker, tables, part, num_parts, pushes) -> list[DenseTable]:
        if not 0 <= part < num_parts:
            raise InvalidArgumentError(f"part {part} of {num_parts} is not a valid part number")
        self._check_caller(worker, pushes)
        return [self.table(name) for name in dict.fromkeys(tables)]

    @property
    def state_token(self) -> str:
        """Names the server process and state epoch that block versions belong to: a pull's
        ``known`` versions count only under the token they were read at. Built once per epoch."""
        epoch = self.steps.epoch
        if self._token[0] != epoch:
            self._token = (epoch, f"{self.server_id}:{epoch}")
        return self._token[1]

    # -- internals ----------------------------------------------------------------------

    def _validate(self, blocks: Sequence[tuple[str, int]],
                  grads: Sequence[np.ndarray]) -> list[tuple[DenseTable, int]]:
        """The push's ``(table, block index)`` pairs, each gradient checked against its block's
        size and dtype (whether this shard holds the block is asked when the push is decided:
        a block held elsewhere is refused as MOVED only after the duplicate check). Raises
        InvalidArgumentError, NotFoundError."""
        if len(blocks) != len(grads):
            raise InvalidArgumentError(f"{len(blocks)} block references but {len(grads)} gradients")
        named = []
        seen: set[tuple[str, int]] = set()
        for (name, index), grad in zip(blocks, grads):
            if (name, index) in seen:
                raise InvalidArgumentError(f"{name}: block {index} appears twice in one push")
            seen.add((name, index))
            table = self.table(name)
            table.check_grad(index, grad)
            if self.config.nonfinite == "refuse" and not _all_true(np.isfinite(grad), axis=None):
                raise InvalidArgumentError(f"{name}: block {index} has NaN or Inf gradients (refused)")
            named.append((table, index))
        return named

    # -- status -------------------------------------------------------------------------

    def loads(self) -> tuple[list[tuple[str, bool, int, int, int]], list[tuple[str, bool, int, int]]]:
        """``(held, kept)``. ``held``: ``(table, rows, unit, bytes, accesses)`` of every dense
        block (``rows`` False) held here: bytes of its values and optimizer state, pushes and
        pulls that touched it here; and of every sparse row bucket held here with rows or
        accesses (``rows`` True: its rows' bytes, rows pushed and pulled). ``kept``: ``(table,
        rows, unit, bytes)`` of every copy kept of a unit given away (:attr:`kept`). Does not
        block long."""
        with self.steps.lock:
            held = [(name, b) for name, t in self.tables.items() for b in t.blocks.values()]
            dense = [(name, False, b.index, _block_bytes(b), b.accesses) for name, b in held]
            sparse = list(self.rows.tables.items())
            kept = [(table, rows, k, _block_bytes(c) if isinstance(c, Block) else sum(a.nbytes for a in c.values()))
                    for (table, rows, k), c in self.kept.items()]
        return dense + [(name, True, k, nbytes, accesses) for name, t in sparse
                        for k, nbytes, accesses in t.bucket_loads()], kept

    def snapshot(self) -> dict:
        """Mode, version, workers, tables and counters, for the Status call."""
        now = self.steps.clock()
        with self.steps.lock:
            return {
                "version": self.gate.version,
                "topology": self.topology,
                "placement": self.current_placement(),
                "workers": [
                    (i, w.clock, w.live, now - self.membership.last_contact.get(i, now))
                    for i, w in sorted(self.gate.workers.items())
                ],
                "tables": [(t.spec, len(t.blocks), t.nbytes) for t in self.tables.values()],
                "waiting_for": self.gate.waiting_for(),
                "counters": dict(self.counters),
            }


def _block_bytes(block: Block) -> int:
    """Bytes of a dense block's values and optimizer state."""
    return block.values.nbytes + sum(a.nbytes for a in block.state.values())


def _first_missing(named: Sequence[tuple[DenseTable, int]], here: Sequence[Block | None]) -> str:
    """"" or the first of a push's blocks (``named``) that this shard does not hold (``here``: None)."""
    if None not in here:  # the common push: one scan in C, no generator
        return ""
    table, index = next(name for name, block in zip(named, here) if block is None)
    return f"{table.spec.name}: block {index} is not on this shard"
