"""``Recovery``: a shard's state out to a checkpoint and back in, and sync rollbacks.

It owns what a shard knows of its checkpoints (the one it holds, the rollbacks it handled)
and works on the :class:`~ps.shard.sequencer.Sequencer`'s bookkeeping, fencing workers in
the :class:`~ps.shard.membership.Membership`; tables come and go through callbacks (the
format is :mod:`ps.checkpoint`'s). Rollback rules: docs/failure-semantics.md section 3.
Thread-safe: it takes the sequencer's lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ps.errors import AbortedError
from ps.shard.consistency import Mode, Proceed, Wait
from ps.shard.dedup import DedupTable
from ps.shard.membership import Membership
from ps.shard.sequencer import Sequencer


class Recovery:
    """A consistent copy of the state out (:meth:`capture`), a checkpoint's state in
    (:meth:`install`, :meth:`rollback`). The constructor does no I/O."""

    def __init__(self, steps: Sequencer, membership: Membership) -> None:
        self._steps = steps
        self._members = membership
        self.restored_from: tuple[str, int] | None = None  # (tag, version) of the checkpoint now held
        self.rollback_id = ""                               # the last Restore handled
        self._rollbacks: list[str] = []                     # recent Restore ids handled (a repeat is a no-op)

    def handled(self, rollback_id: str) -> bool:
        """Whether the Restore ``rollback_id`` was handled already (a repeat changes nothing)."""
        return rollback_id in self._rollbacks

    def restored(self, tag: str, version: int, await_decision: bool) -> None:
        """Note the checkpoint restored at start; ``await_decision``: refuse every push and pull
        until the cluster decides whether it rolls back (:meth:`rollback`)."""
        with self._steps.lock:
            self.restored_from = (tag, version)
            self._members.held_state = f"checkpoint {tag} at version {version} (epoch {self._steps.epoch})"
            self._members.awaiting_rollback = await_decision

    def capture(self, at_version: int, timeout_s: float, export: Callable[[], object]) -> tuple[dict, object]:
        """A consistent copy of the state, for a checkpoint: ``(bookkeeping, export())``.

        Holds new pushes, waits (bounded) until none is being applied and no sync step is
        being applied, then calls ``export`` with the lock held (it copies the tables) and
        releases the pushes. In sync mode with ``at_version`` > 0 it first waits for the
        shard to reach that version, holding pushes for later steps, so every shard of a
        cluster checkpoint captures the same step. The bookkeeping (version, worker
        clocks, dedup table, epoch, topology) leaves out contributions to a sync step
        still open: a checkpoint holds applied steps only.

        Raises AbortedError when the shard is already past ``at_version``,
        DeadlineExceededError when a wait runs out.
        """
        steps = self._steps
        gate = steps.gate
        deadline = steps.clock() + timeout_s
        sync = gate.mode is Mode.SYNC
        with steps.lock:
            try:
                if sync and at_version > 0:
                    if gate.version > at_version:
                        raise AbortedError(f"shard is at version {gate.version}, past {at_version}")
                    gate.hold(from_step=at_version)
                    steps.wait(lambda: Proceed() if gate.version >= at_version else Wait(
                        f"checkpoint at version {at_version} waits for step {gate.version}",
                        gate.waiting_for()), deadline)
                    if gate.version > at_version:
                        raise AbortedError(f"shard is at version {gate.version}, past {at_version}")
                gate.hold()
                self._quiesce("checkpoint", deadline)
                version, clocks = gate.export()
                meta = {
                    "version": version, "clocks": clocks, "epoch": steps.epoch, "topology": self._members.topology,
                    "dedup": steps.dedup.export(without=steps.step_seqs if sync else ()),
                    "mode": steps.config.mode.value, "left": steps.gate.departed(),
                }
                return meta, export()
            finally:
                gate.release()
                steps.wake()

    def install(self, version: int, clocks: dict[int, int], dedup: dict | None, epoch: int,
                install_tables: Callable[[], None], left: Iterable[int] = ()) -> None:
        """Replace the state with a restored checkpoint's (before serving, or in a rollback).

        Workers come back live with a fresh lease, except those in ``left``, which had left
        the quorum (``ConsistencyGate.load``: when all had, the next run forms its quorum
        anew and automatic ids start again at 0). Until a restored worker is heard from
        again (``unheard``), an automatic registration may take its id. The gate adopts the
        cluster's step if workers turn out to be ahead (``ConsistencyGate.resyncing``).
        ``dedup`` None starts an empty dedup table (restoring onto another shard count).
        """
        steps = self._steps
        with steps.lock:
            steps.gate.load(version, clocks, left)
            steps.dedup = DedupTable.restore(dedup) if dedup is not None else DedupTable()
            steps.epoch = epoch
            now = steps.clock()
            self._members.last_contact = {w: now for w in clocks}
            self._members.unheard = set(steps.gate.workers)
            steps.step_seqs = []
            install_tables()
            steps.wake()

    def rollback(self, rollback_id: str, timeout_s: float, state=None,
                 install_tables: Callable[[], None] | None = None) -> bool:
        """Sync rollback while serving: replace the state with a checkpoint's, once per
        ``rollback_id`` (a repeat returns False and changes nothing).

        ``state`` (a ``ps.checkpoint.state.ShardState``; None: no rollback, only stop awaiting
        one) is installed with the next epoch. Pushes are held until none is being
        applied; waits in flight end with AbortedError; every worker known before or
        restored is fenced until it registers with ``resync``; the gate does not
        fast-forward. Blocks (bounded by ``timeout_s``); raises DeadlineExceededError.
        """
        steps = self._steps
        deadline = steps.clock() + timeout_s
        with steps.lock:
            if rollback_id in self._rollbacks:
                return False
            try:
                steps.gate.hold()
                self._quiesce("rollback", deadline)
                if state is not None:
                    fenced = set(steps.gate.workers) | {int(w) for w in state.clocks}
                    steps.discard_step()
                    self.install(state.version, state.clocks, state.dedup, steps.epoch + 1, install_tables,
                                 state.left)
                    steps.gate.resyncing = False
                    self.restored_from = (state.tag, state.version)
                    self._members.fenced = fenced
                    held = f"checkpoint {state.tag} at version {state.version} (epoch {steps.epoch})"
                    self._members.held_state = held
                    steps.generation += 1
                    steps.counters["rollbacks"] += 1
                self._members.awaiting_rollback = False
                self.rollback_id = rollback_id
                self._rollbacks = [*self._rollbacks[-63:], rollback_id]
                return state is not None
            finally:
                steps.gate.release()
                steps.wake()

    def _quiesce(self, what: str, deadline: float) -> None:
        """With pushes held and the lock held: wait (bounded) until none is being applied."""
        steps = self._steps
        steps.wait(lambda: Wait(f"{what} waits for pushes being applied")
                   if steps.dedup.busy() or steps.gate.applying else Proceed(), deadline,
                   stoppable=False)  # applies end by themselves; a stop's final checkpoint waits for them
