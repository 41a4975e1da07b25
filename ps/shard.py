"""One shard's state and logic, without any networking.

:class:`Shard` owns the shard's tables, its :class:`~ps.consistency.ConsistencyGate`
and its :class:`~ps.dedup.DedupTable`, and turns decoded requests into effects. The gRPC
servicer (``ps.service``) only decodes, calls these methods and encodes.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ps.config import ServerConfig
from ps.consistency import Accumulate, ConsistencyGate, Stale, StepReady, Wait
from ps.dedup import DedupTable, Seen
from ps.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from ps.placement import blocks_of_shard
from ps.spec import TableSpec
from ps.table import Block, DenseTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushResult:
    outcome: str      # "applied" | "accumulated" | "duplicate" | "stale"
    version: int


@dataclass(frozen=True)
class PulledBlock:
    table: str
    block: int
    data: bytes
    version: int


class Shard:
    def __init__(self, config: ServerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.server_id = uuid.uuid4().hex
        self.gate = ConsistencyGate(config.mode, staleness=config.staleness, num_workers=config.num_workers)
        self.dedup = DedupTable()
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

    # -- membership and topology --------------------------------------------------------

    def adopt_topology(self, shard_index: int, num_shards: int) -> None:
        """Take the client's view of where this shard sits, or check it agrees.

        Raises FailedPreconditionError when it disagrees with what this shard already is.
        """
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise InvalidArgumentError(f"topology: shard {shard_index} of {num_shards} is impossible")
        with self._cond:
            if self.topology is None:
                self.topology = (shard_index, num_shards)
            elif self.topology != (shard_index, num_shards):
                have = self.topology
                raise FailedPreconditionError(
                    f"this server is shard {have[0]} of {have[1]}, but the client addressed it as shard "
                    f"{shard_index} of {num_shards}: every worker must list the servers in the same order"
                )

    def register(self, worker: int) -> tuple[int, int, int]:
        """Join (``worker`` >= 0) or get a new id (``worker`` < 0). Returns (id, clock, next_seq)."""
        with self._cond:
            if worker < 0:
                while self._next_worker in self.gate.workers:
                    self._next_worker += 1
                worker = self._next_worker
            if worker > 1 << 40:
                raise InvalidArgumentError(f"worker id {worker} is out of range")
            clock = self.gate.register(worker)
            self.last_contact[worker] = self._clock()
            log.info("worker %d registered at clock %d", worker, clock)
            self._cond.notify_all()
            return worker, clock, self.dedup.next_seq(worker)

    def leave(self, worker: int) -> None:
        """Leave the quorum; a sync step that only waited for this worker is applied."""
        with self._cond:
            if worker not in self.gate.workers:
                raise NotFoundError(f"worker {worker} is not registered with this shard")
            ready = self.gate.leave(worker)
            log.info("worker %d left", worker)
            self._cond.notify_all()
        if ready:
            self._apply_step(ready)

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
            existing = self.tables.get(spec.name)
            if existing is not None:
                if existing.spec != spec:
                    raise AlreadyExistsError(
                        f"table {spec.name!r} exists with a different spec: have {existing.spec}, asked {spec}"
                    )
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
        """Raises NotFoundError for an unknown table."""
        try:
            return self.tables[name]
        except KeyError:
            raise NotFoundError(f"unknown table {name!r}") from None

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
    ) -> PushResult:
        """Apply, aggregate or drop one push message. Blocks up to ``timeout_s`` in sync mode.

        Raises InvalidArgumentError (bad shape, dtype, length, block, non-finite values),
        NotFoundError (unknown table), FailedPreconditionError (unregistered worker, block
        not on this shard, second contribution to a step) and DeadlineExceededError when
        a sync wait runs out. A refused push changes nothing.
        """
        deadline = self._clock() + min(timeout_s, self.config.sync_timeout_s)
        if seq < 1:
            raise InvalidArgumentError(f"sequence numbers start at 1, got {seq}")
        try:
            targets = self._validate(blocks, grads)
        except Exception:
            with self._cond:
                self.counters["refused"] += 1
            raise

        def decide():
            seen = self.dedup.check(worker, seq)
            if seen is Seen.IN_PROGRESS:
                return Wait(f"push {seq} of worker {worker} is still being applied from an earlier delivery")
            if seen is Seen.DUPLICATE:
                return seen
            return self.gate.on_push(worker, step, part, num_parts)

        with self._cond:
            self.last_contact[worker] = self._clock()
            self.gate.check_live(worker)
            decision = self._wait(decide, deadline)
            if decision is Seen.DUPLICATE:
                self.counters["duplicate"] += 1
                return PushResult("duplicate", self.gate.version)
            if isinstance(decision, Stale):
                self.dedup.finish(worker, seq)
                self.counters["stale"] += 1
                log.info("dropped worker %d's gradient for step %d: step already applied", worker, step)
                return PushResult("stale", self.gate.version)
            self.dedup.begin(worker, seq)
        ready = None
        try:
            for (table, block), grad in zip(targets, grads):
                if isinstance(decision, Accumulate):
                    table.accumulate(block, grad)
                else:
                    table.apply(block, grad)
        except BaseException:
            with self._cond:
                self.dedup.abort(worker, seq)
                if isinstance(decision, Accumulate):
                    self.gate.on_part_failed(worker, step, part)
                self._cond.notify_all()
            raise
        with self._cond:
            self.dedup.finish(worker, seq)
            if isinstance(decision, Accumulate):
                self._pending_blocks.update((t, b) for (t, b) in targets)
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
             timeout_s: float) -> tuple[int, list[PulledBlock]]:
        """This shard's blocks of ``tables`` (those with ``block % num_parts == part``).

        Waits (bounded) in sync mode for version >= ``step`` and in ssp mode for the
        staleness bound. Raises NotFoundError, FailedPreconditionError,
        DeadlineExceededError.
        """
        deadline = self._clock() + min(timeout_s, self.config.sync_timeout_s)
        num_parts = max(1, num_parts)
        if not 0 <= part < num_parts:
            raise InvalidArgumentError(f"part {part} of {num_parts} is not a valid part number")
        with self._cond:
            if worker >= 0:
                self.last_contact[worker] = self._clock()
            self._wait(lambda: self.gate.on_pull(worker, step), deadline)
            version = self.gate.version
            selected = [self.table(name) for name in tables]
        out = []
        for table in selected:
            for index in sorted(table.blocks):
                if index % num_parts == part:
                    data, block_version = table.read(table.blocks[index])
                    out.append(PulledBlock(table.spec.name, index, data, block_version))
        with self._cond:
            self.counters["pulls"] += 1
        return version, out

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

    def _apply_step(self, ready: StepReady) -> None:
        with self._cond:
            pending, self._pending_blocks = self._pending_blocks, set()
        scale = 1.0 / ready.contributors
        for table, block in pending:
            table.apply_accumulated(block, scale)
        with self._cond:
            self.gate.on_step_applied(ready)
            self.counters["steps"] += 1
            self._cond.notify_all()

    def _wait(self, decide: Callable[[], object], deadline: float):
        """Re-evaluate ``decide()`` (lock held) until it is not a :class:`Wait`; bounded."""
        while True:
            result = decide()
            if not isinstance(result, Wait):
                return result
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
