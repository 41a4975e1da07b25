"""Checkpoint capture and install, and sync rollbacks, of a :class:`~ps.shard.shard.Shard`.

:class:`ShardRecovery` is a mixin of :class:`~ps.shard.shard.Shard`; its methods use the
shard's state (``gate``, ``dedup``, ``epoch``, the lock ``_cond``) and share its
thread-safety. The file format lives in :mod:`ps.checkpoint`; the rules of a rollback in
docs/failure-semantics.md section 3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ps.shard.consistency import Mode, Proceed, Wait
from ps.shard.dedup import DedupTable
from ps.errors import AbortedError

if TYPE_CHECKING:
    from ps.shard.shard import Shard


class ShardRecovery:
    """A consistent copy of the state out (:meth:`capture`), a checkpoint's state in
    (:meth:`install`, :meth:`rollback`)."""

    def capture(self, at_version: int, timeout_s: float, export: Callable[[Shard], object]) -> tuple[dict, object]:
        """A consistent copy of the state, for a checkpoint: ``(bookkeeping, export(self))``.

        Holds new pushes, waits (bounded) until none is being applied and no sync step is
        being applied, then calls ``export`` with the shard's lock held (it copies the
        tables) and releases the pushes. In sync mode with ``at_version`` > 0 it first
        waits for the shard to reach that version, holding pushes for later steps, so
        every shard of a cluster checkpoint captures the same step. The bookkeeping
        (version, worker clocks, dedup table, epoch, topology) leaves out contributions
        to a sync step still open: a checkpoint holds applied steps only.

        Raises AbortedError when the shard is already past ``at_version``,
        DeadlineExceededError when a wait runs out.
        """
        deadline = self._clock() + timeout_s
        sync = self.gate.mode is Mode.SYNC
        with self._cond:
            try:
                if sync and at_version > 0:
                    if self.gate.version > at_version:
                        raise AbortedError(f"shard is at version {self.gate.version}, past {at_version}")
                    self.gate.hold(from_step=at_version)
                    self._wait(lambda: Proceed() if self.gate.version >= at_version else Wait(
                        f"checkpoint at version {at_version} waits for step {self.gate.version}",
                        self.gate.waiting_for()), deadline)
                    if self.gate.version > at_version:
                        raise AbortedError(f"shard is at version {self.gate.version}, past {at_version}")
                self.gate.hold()
                self._wait(lambda: Wait("checkpoint waits for pushes being applied")
                           if self.dedup.busy() or self.gate.applying else Proceed(), deadline)
                version, clocks = self.gate.export()
                meta = {
                    "version": version, "clocks": clocks, "epoch": self.epoch, "topology": self.topology,
                    "dedup": self.dedup.export(without=self._step_seqs if sync else ()),
                    "mode": self.config.mode.value, "left": self.gate.departed(),
                }
                return meta, export(self)
            finally:
                self.gate.release()
                self._cond.notify_all()

    def install(self, version: int, clocks: dict[int, int], dedup: dict | None, epoch: int,
                install_tables: Callable[[Shard], None], left: Iterable[int] = ()) -> None:
        """Replace the state with a restored checkpoint's (before serving).

        Workers come back live with a fresh lease, except those in ``left``, which had left
        the quorum (``ConsistencyGate.load``: when all had, the next run forms its quorum
        anew and automatic ids start again at 0). Until a restored worker is heard from
        again (``unheard``), an automatic registration may take its id. The gate adopts the
        cluster's step if workers turn out to be ahead (``ConsistencyGate.resyncing``).
        ``dedup`` None starts an empty dedup table (restoring onto another shard count).
        """
        with self._cond:
            self.gate.load(version, clocks, left)
            self.dedup = DedupTable.restore(dedup) if dedup is not None else DedupTable()
            self.epoch = epoch
            now = self._clock()
            self.last_contact = {w: now for w in clocks}
            self.unheard = set(self.gate.workers)
            self._step_seqs = []
            install_tables(self)
            self._cond.notify_all()

    def rollback(self, rollback_id: str, timeout_s: float, state=None,
                 install_tables: Callable[[Shard], None] | None = None) -> bool:
        """Sync rollback while serving: replace the state with a checkpoint's, once per
        ``rollback_id`` (a repeat returns False and changes nothing).

        ``state`` (a ``ps.checkpoint.state.ShardState``; None: no rollback, only stop awaiting
        one) is installed with the next epoch. Pushes are held until none is being
        applied; waits in flight end with AbortedError; every worker known before or
        restored is fenced until it registers with ``resync``; the gate does not
        fast-forward. Blocks (bounded by ``timeout_s``); raises DeadlineExceededError.
        """
        deadline = self._clock() + timeout_s
        with self._cond:
            if rollback_id in self._rollbacks:
                return False
            try:
                self.gate.hold()
                self._wait(lambda: Wait("rollback waits for pushes being applied")
                           if self.dedup.busy() or self.gate.applying else Proceed(), deadline)
                if state is not None:
                    fenced = set(self.gate.workers) | {int(w) for w in state.clocks}
                    self.rows.discard_pending()
                    self._pending_blocks = set()
                    self.install(state.version, state.clocks, state.dedup, self.epoch + 1, install_tables, state.left)
                    self.gate.resyncing = False
                    self.fenced = fenced
                    self.restored_from = (state.tag, state.version)
                    self.generation += 1
                    self.counters["rollbacks"] += 1
                self.awaiting_rollback = False
                self.rollback_id = rollback_id
                self._rollbacks = [*self._rollbacks[-63:], rollback_id]
                return state is not None
            finally:
                self.gate.release()
                self._cond.notify_all()
