"""One shard's state and logic, without any networking.

:class:`Shard` owns the shard's tables, its :class:`~ps.shard.consistency.ConsistencyGate`
and its :class:`~ps.shard.dedup.DedupTable`, and turns decoded requests into effects. The gRPC
servicer (``ps.serving.service``) only decodes, calls these methods and encodes.

Thread-safe. One condition variable guards the small bookkeeping (gate, dedup, table
directory, counters) and is never held while arrays are touched; each block has its own
lock for that. Every wait is bounded and, when it runs out, raises
:class:`~ps.errors.DeadlineExceededError` saying which workers it waited for.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ps.tables.clipping import clip_by_norm
from ps.config import ServerConfig
from ps.shard.consistency import Accumulate, ConsistencyGate, Stale, StepReady, Wait
from ps.shard.dedup import DedupTable, Seen
from ps.errors import (
    AbortedError,
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Reason,
)
from ps.tables.placement import blocks_of_shard
from ps.shard.membership import ShardMembership
from ps.shard.recovery import ShardRecovery
from ps.tables.spec import TableSpec, exists_alike
from ps.shard.sparse_rows import SparseRows
from ps.tables.dense_table import Block, DenseTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    outcome: str      # "applied" | "accumulated" | "duplicate" | "stale"
    version: int


@dataclass(frozen=True)
class PulledBlock:
    table: str
    block: int
    data: bytes | np.ndarray     # a copy of the values, or their slot in a pull's ``into``
    version: int


class Shard(ShardMembership, ShardRecovery):
    """One shard: membership (:mod:`ps.shard.membership`), checkpoints and rollbacks
    (:mod:`ps.shard.recovery`), dense tables, push and pull, sync steps, status."""

    def __init__(self, config: ServerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.server_id = uuid.uuid4().hex
        self.gate = ConsistencyGate(config.mode, staleness=config.staleness, num_workers=config.num_workers,
                                    replicas_to_aggregate=config.replicas_to_aggregate)
        self.dedup = DedupTable()
        self.epoch = 0  # bumps each time the state is restored from a checkpoint (ps.checkpoint)
        self._step_seqs: list[tuple[int, int]] = []  # sync: (worker, seq) summed into the open step
        self.tables: dict[str, DenseTable] = {}
        self.topology: tuple[int, int] | None = (
            (config.shard_index, config.num_shards) if config.num_shards is not None else None
        )
        self.counters: Counter[str] = Counter()
        self.last_contact: dict[int, float] = {}
        self._cond = threading.Condition()
        self._clock = clock
        self._next_worker = 0
        self._pending_blocks: set[tuple[DenseTable, Block]] = set()  # sync: blocks with a sum
        self.rows = SparseRows(self)  # sparse tables and the row verbs (ps.shard.sparse_rows)
        self.metrics = None  # ps.metrics.shard_metrics.ShardMetrics once serving metrics: observes pushes and waits
        # sync rollbacks (docs/failure-semantics.md section 3): see rollback()
        self.generation = 0               # bumps on every rollback: waits in flight end with ABORTED
        self.fenced: set[int] = set()     # workers that must resync (Register resync=True) after a rollback
        self.sessions: dict[int, int] = {}  # worker -> the session (Client) that holds its id
        self.awaiting_rollback = False    # sync, restored at start: refuse pushes and pulls until a Restore
        self.restored_from: tuple[str, int] | None = None  # (tag, version) of the checkpoint now held
        self.rollback_id = ""             # the last Restore handled
        self._rollbacks: list[str] = []   # recent Restore ids handled (a repeat is a no-op)

    # -- tables -------------------------------------------------------------------------

    def create_table(self, spec: TableSpec) -> bool:
        """Create the table (its blocks placed here), or accept an identical spec.

        Returns True if created. Raises AlreadyExistsError for a different spec under the
        same name, FailedPreconditionError before the topology is known.
        """
        spec.validate()
        with self._cond:
            if self.topology is None:
                raise FailedPreconditionError("shard topology unknown: register or give it with the request")
            if exists_alike(spec, self.tables, self.rows.tables, "sparse"):
                return False
            index, count = self.topology
        owned = blocks_of_shard(spec.name, spec.num_blocks, index, count)
        table = DenseTable.create(spec, owned)  # outside the lock: may allocate a lot
        with self._cond:
            existing = self.tables.setdefault(spec.name, table)
            if existing is not table and existing.spec != spec:
                raise AlreadyExistsError(f"table {spec.name!r} exists with a different spec")
            return existing is table

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
    ) -> PushResult:
        """Apply, aggregate or drop one push message. Blocks up to ``timeout_s`` in sync mode.

        ``session`` is the pushing Client's (see :meth:`claim`; 0: not checked).

        Raises InvalidArgumentError (bad shape, dtype, length, block, non-finite values),
        NotFoundError (unknown table), FailedPreconditionError (unregistered worker, block
        not on this shard, second contribution to a step, a session fenced by another client
        holding the worker id) and DeadlineExceededError when
        a sync wait runs out. A refused push changes nothing.
        """
        deadline = self._clock() + min(timeout_s, self.config.sync_timeout_s)
        if seq < 1:
            raise InvalidArgumentError(f"sequence numbers start at 1, got {seq}")
        try:
            with self._cond:  # who before what: a restarted shard says "not registered" first
                self.check_current(worker)
                self.gate.check_live(worker)
            targets = self._validate(blocks, grads)
        except Exception:
            with self._cond:
                self.counters["refused"] += 1
            raise
        skip = self.config.nonfinite == "skip" and not all(np.isfinite(g).all() for g in grads)
        if self.config.clip_norm and not skip:
            grads = clip_by_norm(grads, self.config.clip_norm)

        def update(accumulate: bool) -> None:
            for (table, block), grad in zip(targets, grads):
                if accumulate:
                    table.accumulate(block, grad)
                else:
                    table.apply(block, grad)

        return self.run_push(worker, seq, step, part, num_parts, deadline, skip=skip, update=update,
                             remember=lambda: self._pending_blocks.update(targets), session=session)

    def run_push(self, worker: int, seq: int, step: int, part: int, num_parts: int, deadline: float, *,
                 skip: bool, update: Callable[[bool], None], remember: Callable[[], None],
                 session: int = 0) -> PushResult:
        """The one push flow, for dense blocks and sparse rows alike, after validation.

        Under the lock: drop a duplicate ``(worker, seq)`` (waiting, bounded by
        ``deadline``, while an earlier delivery is still being applied), ask the gate
        (waiting while it says so), drop a stale or skipped push. Then, outside the lock,
        ``update(accumulate)`` applies the gradient (``accumulate`` in sync mode); if it
        raises, nothing is recorded and a retry may apply it. Finally, under the lock,
        record the sequence number, ``remember()`` what a sync step must apply, and apply
        the step if this push completed it. Returns the outcome and the shard's version.
        """

        def decide():
            seen = self.dedup.check(worker, seq)
            if seen is Seen.IN_PROGRESS:
                return Wait(f"push {seq} of worker {worker} is still being applied from an earlier delivery")
            if seen is Seen.DUPLICATE:
                return seen
            return self.gate.on_push(worker, step, part, num_parts)

        with self._cond:
            self.check_current(worker)
            self.gate.check_live(worker)
            self.claim(worker, session)
            self.last_contact[worker] = self._clock()  # after the check: unknown ids leave no trace
            decision = self._wait(decide, deadline)
            if decision is Seen.DUPLICATE:
                self.counters["duplicate"] += 1
                return PushResult("duplicate", self.gate.version)
            if isinstance(decision, Stale):
                self.dedup.finish(worker, seq)
                self.counters["stale"] += 1
                log.info("dropped worker %d's gradient for step %d: step already applied", worker, step)
                return PushResult("stale", self.gate.version)
            if skip:
                return self._skip(worker, seq, step, decision)
            self.dedup.begin(worker, seq)
            if self.metrics is not None:
                self.metrics.observe_push(self.gate, step)
        accumulate = isinstance(decision, Accumulate)
        try:
            update(accumulate)
        except BaseException:
            with self._cond:
                self.dedup.abort(worker, seq)
                if accumulate:
                    self.gate.on_part_failed(worker, step, part)
                self._cond.notify_all()
            raise
        ready = None
        with self._cond:
            self.dedup.finish(worker, seq)
            if accumulate:
                remember()
                self._step_seqs.append((worker, seq))  # a checkpoint of the open step forgets it
                self.counters["accumulated"] += 1
                ready = self.gate.on_part_done(worker, step)
                outcome = "accumulated"
            else:
                self.gate.on_applied(worker, step)
                self.counters["applied"] += 1
                outcome = "applied"
            self._cond.notify_all()
        if ready:
            self._apply_step(ready)
        return PushResult(outcome, self.gate.version)

    def pull(self, worker: int, step: int, tables: Sequence[str], part: int, num_parts: int,
             timeout_s: float, known: Mapping[tuple[str, int], int] | None = None,
             into: Callable[[str, Block], np.ndarray] | None = None) -> tuple[int, list[PulledBlock]]:
        """This shard's blocks of ``tables`` (those with ``block % num_parts == part``).

        Waits (bounded) in sync mode for version >= ``step`` and in ssp mode for the
        staleness bound. ``known`` maps ``(table, block)`` to the version the worker
        already holds: such a block is not copied again while its version is unchanged.
        Without ``into`` each block is copied into new bytes and unchanged known blocks
        are left out of the result. With ``into`` (``into(table, block)`` gives the
        block's writable slot, e.g. in a worker's shared-memory region) every selected
        block is in the result and is copied straight into its slot unless unchanged;
        ``data`` is then the slot. Raises NotFoundError, FailedPreconditionError,
        DeadlineExceededError, and whatever ``into`` raises (nothing is copied then).
        """
        deadline = self._clock() + min(timeout_s, self.config.sync_timeout_s)
        num_parts = max(1, num_parts)
        self.pull_tables(worker, tables, part, num_parts)  # refused before it waits (or abstains)
        with self._cond:
            version = self.await_pull(worker, step, deadline)
            generation = self.generation
            selected = self._tables(tables)
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
                    out.append(PulledBlock(name, block.index, data, block_version))
                continue
            _, block_version = table.read_if_newer(block, have, slots[i])
            out.append(PulledBlock(name, block.index, slots[i], block_version))
        with self._cond:
            if self.generation != generation:
                raise AbortedError("the cluster rolled back while this pull was copied: retry from a fresh pull",
                                   reason=Reason.ROLLED_BACK)
            self.counters["pulls"] += 1
        return version, out

    def check_caller(self, worker: int, pushes: bool) -> None:
        """Who before what: raises AbortedError (a rollback to adopt) or FailedPreconditionError
        (not registered, left) unless ``worker`` may push (``pushes``) or pull now. Does not block."""
        with self._cond:
            self.check_current(worker)
            if pushes:
                self.gate.check_live(worker)
            else:
                self.gate.check_reader(worker)

    def pull_tables(self, worker: int, tables: Sequence[str], part: int, num_parts: int) -> list[DenseTable]:
        """Check a pull before it waits or anything of its request is applied: the part, the
        caller (:meth:`check_caller`), then the tables. Returns the tables it reads, each once
        (a request naming one table many times must not multiply the copies). Does not block.
        Raises InvalidArgumentError (part), AbortedError, FailedPreconditionError (caller,
        sparse table), NotFoundError."""
        if not 0 <= part < num_parts:
            raise InvalidArgumentError(f"part {part} of {num_parts} is not a valid part number")
        self.check_caller(worker, pushes=False)
        return self._tables(tables)

    def _tables(self, names: Sequence[str]) -> list[DenseTable]:
        return [self.table(name) for name in dict.fromkeys(names)]

    @property
    def state_token(self) -> str:
        """Names the server process and state epoch that block versions belong to: a pull's
        ``known`` versions count only under the token they were read at."""
        return f"{self.server_id}:{self.epoch}"

    def await_pull(self, worker: int, step: int, deadline: float) -> int:
        """Call with the lock held, before a pull of blocks or rows: the shard's version once
        ``worker`` may read ``step`` (sync and ssp wait, bounded by ``deadline``). Raises
        AbortedError, DeadlineExceededError."""
        self.check_current(worker)
        if worker in self.gate.workers:  # unknown ids leave no trace
            self.last_contact[worker] = self._clock()
        self._wait(lambda: self.gate.on_pull(worker, step), deadline)
        return self.gate.version

    # -- internals ----------------------------------------------------------------------

    def _validate(self, blocks: Sequence[tuple[str, int]], grads: Sequence[np.ndarray]) -> list[tuple[DenseTable, Block]]:
        if len(blocks) != len(grads):
            raise InvalidArgumentError(f"{len(blocks)} block references but {len(grads)} gradients")
        targets = []
        seen: set[tuple[str, int]] = set()
        for (name, index), grad in zip(blocks, grads):
            if (name, index) in seen:
                raise InvalidArgumentError(f"{name}: block {index} appears twice in one push")
            seen.add((name, index))
            table = self.table(name)
            block = table.block_for(index, grad)
            if self.config.nonfinite == "refuse" and not np.isfinite(grad).all():
                raise InvalidArgumentError(f"{name}: block {index} has NaN or Inf gradients (refused)")
            targets.append((table, block))
        return targets

    def _skip(self, worker: int, seq: int, step: int, decision) -> PushResult:
        """``nonfinite=skip``: acknowledge a push with NaN/Inf values without applying it.

        Call with the lock held, after the gate accepted the push. The pusher's step
        counts as done (sync) or its clock advances (async/ssp); the reply says STALE
        (dropped), the counter ``nonfinite_skipped`` and a warning say why.
        """
        self.dedup.finish(worker, seq)
        self.counters["nonfinite_skipped"] += 1
        log.warning("skipped worker %d's push %d for step %d: NaN or Inf gradients (nonfinite=skip; %d skipped)",
                    worker, seq, step, self.counters["nonfinite_skipped"])
        ready = None
        if isinstance(decision, Accumulate):
            ready = self.gate.on_part_done(worker, step)
        else:
            self.gate.on_applied(worker, step, applied=False)
        self._cond.notify_all()
        if ready:
            self._apply_step(ready)  # re-entrant lock; nothing else was summed by this push
        return PushResult("stale", self.gate.version)

    def _apply_step(self, ready: StepReady) -> None:
        with self._cond:
            pending, self._pending_blocks = self._pending_blocks, set()
            self._step_seqs = []
        scale = 1.0 / ready.contributors
        for table, block in pending:
            table.apply_accumulated(block)  # the mean of the gradients this block received
        self.rows.apply_step(scale)  # sparse rows kept for this step
        with self._cond:
            self.gate.on_step_applied(ready)
            self.counters["steps"] += 1
            self._cond.notify_all()

    def _wait(self, decide: Callable[[], object], deadline: float):
        """Re-evaluate ``decide()`` (lock held) until it is not a :class:`Wait`; bounded.

        A :class:`StepReady` (a sync reader abstained and so completed the step) is
        applied right here, the (re-entrant) lock held, and ``decide()`` asked again.
        """
        waited_since = None  # when the first Wait came, for the metrics
        generation = self.generation
        while True:
            if self.generation != generation:
                raise AbortedError("the cluster rolled back to a checkpoint while this call waited: "
                                   "resync and retry the step from a fresh pull", reason=Reason.ROLLED_BACK)
            result = decide()
            if isinstance(result, StepReady):
                self._apply_step(result)
                continue
            if not isinstance(result, Wait):
                if waited_since is not None and self.metrics is not None:
                    self.metrics.observe_wait(self._clock() - waited_since)
                return result
            waited_since = self._clock() if waited_since is None else waited_since
            remaining = deadline - self._clock()
            if remaining <= 0:
                self.counters["wait_timeouts"] += 1
                raise DeadlineExceededError(f"timed out: {result.describe()}")
            self._cond.wait(remaining)

    # -- status -------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Mode, version, workers, tables and counters, for the Status call."""
        now = self._clock()
        with self._cond:
            return {
                "version": self.gate.version,
                "topology": self.topology,
                "workers": [
                    (i, w.clock, w.live, now - self.last_contact.get(i, now))
                    for i, w in sorted(self.gate.workers.items())
                ],
                "tables": [(t.spec, len(t.blocks), t.nbytes) for t in self.tables.values()],
                "waiting_for": self.gate.waiting_for(),
                "counters": dict(self.counters),
            }
