"""``Sequencer``: the one lock of a shard and the order it puts pushes and pulls in.

It owns what every push and pull, dense or sparse, goes through: the lock, the
:class:`~ps.shard.consistency.ConsistencyGate`, the :class:`~ps.shard.dedup.DedupTable`, the
Status counters, the state epoch and the rollback generation. :meth:`~Sequencer.run_push` is
the one push flow, :meth:`~Sequencer.await_pull` the one pull wait, :meth:`~Sequencer.apply_step`
applies a completed sync step through its step parts. Thread-safe; the lock is never held
while arrays are touched; every wait is bounded (DeadlineExceededError names whom it waited for)
and ends at once, with UnavailableError, when the server stops (:meth:`~Sequencer.stop_waits`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from ps.config import ServerConfig
from ps.errors import AbortedError, DeadlineExceededError, Reason, UnavailableError
from ps.shard.consistency import Accumulate, ConsistencyGate, Stale, StepReady, Wait
from ps.shard.dedup import DedupTable, Seen

log = logging.getLogger("ps.shard.shard")  # the shard's logger: operators filter on it


class PushResult(NamedTuple):  # a tuple: built on every push, where a frozen dataclass costs a setattr per field
    outcome: str      # "applied" | "accumulated" | "duplicate" | "stale"
    version: int


class Sequencer:
    """See the module docstring. The constructor does no I/O; ``clock`` gives seconds."""

    def __init__(self, config: ServerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        #: the shard's one lock (re-entrant). Waits and wakes on it go through :meth:`wait` and
        #: :meth:`wake` (its condition is theirs alone); entered directly, a section costs no
        #: Python frame (a ``with`` on a Condition costs two).
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self.gate = ConsistencyGate(config.mode, staleness=config.staleness, num_workers=config.num_workers,
                                    replicas_to_aggregate=config.replicas_to_aggregate)
        self.dedup = DedupTable()
        self.counters: Counter[str] = Counter()
        self.epoch = 0       # bumps each time the state is restored from a checkpoint
        self.generation = 0  # bumps on every rollback: waits in flight end with ABORTED
        self.stopping = False  # the server stops: waits on other workers end with UNAVAILABLE (stop_waits)
        self.step_seqs: list[tuple[int, int]] = []  # sync: (worker, seq) summed into the open step
        self.guard = None  # admit_push(worker, session, seq), admit_pull(worker), fenced_refusal(worker) (Membership)
        self.step_parts: tuple = ()  # apply_step(scale), discard_step(): keep sums for the open sync step
        self.metrics = None  # observes pushes and waits (ps.metrics.shard_metrics.ShardMetrics)
        self._waiting = 0  # calls inside wait(), asleep on the condition: wake() has someone to wake

    def run_push(self, worker: int, seq: int, step: int, part: int, num_parts: int, deadline: float, *,
                 skip: bool, update: Callable[[bool], None], remember: Callable[[], None],
                 session: int = 0, admit: Callable[[], None] | None = None,
                 done: Callable[[str], None] | None = None) -> PushResult:
        """The one push flow, for dense blocks and sparse rows alike, after validation.

        Under the lock: the guard admits the worker, a duplicate ``(worker, seq)`` is
        dropped (waiting, bounded by ``deadline``, while an earlier delivery is still being
        applied), the gate decides (waiting while it says so), a stale or skipped push is
        dropped. Then, outside the lock, ``update(accumulate)`` applies the gradient
        (``accumulate`` in sync mode); if it raises, nothing is recorded and a retry may
        apply it. Finally, under the lock, the sequence number is recorded, ``remember()``
        notes what a sync step must apply, and the step is applied if this push completed
        it. Returns the outcome and the shard's version.

        ``admit()`` (lock held) is asked each time a push not seen before is decided, after
        the duplicate check and before the gate: it raises to refuse the push unapplied (a
        unit this shard does not own: ``Reason.MOVED``), so that a retry of a push applied
        here is acknowledged as a duplicate even after its blocks moved away; it returns a
        :class:`Wait` to hold the push (a sync move settling at a step boundary), else None.

        ``done(outcome)`` (lock held; must not raise) runs in that final section, once an
        applied or accumulated push is recorded and before waiters are woken: the caller's
        own bookkeeping of the push, without taking the lock again.
        """

        def decide():
            seen = self._seen(worker, seq)
            if seen is not Seen.NEW:
                return seen
            if admit is not None:
                held = admit()
                if held is not None:
                    return held
            return self.gate.on_push(worker, step, part, num_parts)

        with self.lock:
            if self.guard.admit_push(worker, session, seq):  # a fenced session's push from before the takeover
                return self._replay(worker, seq, deadline)
            decision = self.wait(decide, deadline)
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
            with self.lock:
                self.dedup.abort(worker, seq)
                if accumulate:
                    self.gate.on_part_failed(worker, step, part)
                self.wake()
            raise
        ready = None
        with self.lock:
            self.dedup.finish(worker, seq)
            if accumulate:
                remember()
                self.step_seqs.append((worker, seq))  # a checkpoint of the open step forgets it
                self.counters["accumulated"] += 1
                ready = self.gate.on_part_done(worker, step)
                outcome = "accumulated"
            else:
                self.gate.on_applied(worker, step)
                self.counters["applied"] += 1
                outcome = "applied"
            if done is not None:
                done(outcome)
            self.wake()
        if ready:
            self.apply_step(ready)
        return PushResult(outcome, self.gate.version)

    def await_pull(self, worker: int, step: int, deadline: float, check: Callable[[], None] | None = None) -> int:
        """Call with the lock held, before a pull of blocks or rows: the shard's version once
        ``worker`` may read ``step`` (sync and ssp wait, bounded by ``deadline``). ``check()``
        (lock held) runs before each look at the gate and raises to end the wait: a pull
        planned with a map the shard no longer has is redirected (MOVED) as soon as the new
        map is installed, never left waiting for workers whose pushes now follow the new map
        (ssp: they may be waiting themselves, on a new shard, for this very reader). A reader
        whose clock the pull raises (ssp) wakes the other waiting pulls. Raises
        AbortedError, FailedPreconditionError, DeadlineExceededError, what ``check`` raises."""
        self.guard.admit_pull(worker)
        if self.gate.raises_clock(worker, step):  # pulls waiting for this reader may go on once it reads
            self.wake()

        def decide():
            if check is not None:
                check()
            return self.gate.on_pull(worker, step)

        self.wait(decide, deadline)
        return self.gate.version

    def apply_step(self, ready: StepReady) -> None:
        """Apply a completed sync step: every step part's sums, scaled by 1 / contributors."""
        with self.lock:
            self.step_seqs = []
        for part in self.step_parts:
            part.apply_step(1.0 / ready.contributors)
        with self.lock:
            self.gate.on_step_applied(ready)
            self.counters["steps"] += 1
            self.wake()

    def discard_step(self) -> None:
        """Forget every sum kept for the open sync step (a rollback replaces the state)."""
        for part in self.step_parts:
            part.discard_step()

    def stop_waits(self) -> None:
        """The server stops: every wait of :meth:`wait` in progress, and every one to come,
        ends with UnavailableError ("server stopping") instead of waiting, so that no call
        stays inside the shard and its client fails over as from a dead server. A call that
        ends so changed nothing. Waits only for in-flight applies (``stoppable=False``: the
        final checkpoint's) are not ended. Does not block beyond the lock; irreversible."""
        with self.lock:
            self.stopping = True
            self.wake()

    def wait(self, decide: Callable[[], object], deadline: float, stoppable: bool = True):
        """Re-evaluate ``decide()`` (lock held) until it is not a :class:`Wait`; bounded.

        A :class:`StepReady` (a sync reader abstained and so completed the step) is
        applied right here, the (re-entrant) lock held, and ``decide()`` asked again.
        Raises AbortedError when a rollback happens meanwhile, DeadlineExceededError,
        and UnavailableError when it would wait while the server stops (``stoppable``,
        see :meth:`stop_waits`).
        """
        waited_since = None  # when the first Wait came, for the metrics
        generation = self.generation
        while True:
            if self.generation != generation:
                raise AbortedError("the cluster rolled back to a checkpoint while this call waited: "
                                   "resync and retry the step from a fresh pull", reason=Reason.ROLLED_BACK)
            result = decide()
            if isinstance(result, StepReady):
                self.apply_step(result)
                continue
            if not isinstance(result, Wait):
                if waited_since is not None and self.metrics is not None:
                    self.metrics.observe_wait(self.clock() - waited_since)
                return result
            if self.stopping and stoppable:
                self.counters["stop_woken"] += 1
                raise UnavailableError(f"server stopping: it ended this call's wait ({result.describe()}); "
                                       "nothing of the call was applied")
            if waited_since is None:
                waited_since = self.clock()
                self.counters["waits"] += 1  # calls that had to wait (Status, ps_shard_events_total)
            remaining = deadline - self.clock()
            if remaining <= 0:
                self.counters["wait_timeouts"] += 1
                raise DeadlineExceededError(f"timed out: {result.describe()}", reason=Reason.WAIT_EXPIRED)
            self._waiting += 1
            try:
                self._cond.wait(remaining)
            finally:
                self._waiting -= 1

    def wake(self) -> None:
        """Lock held: something a wait of :meth:`wait` may be waiting for changed; every such
        wait asks its ``decide()`` again. Free when none waits (the common push). Does not block."""
        if self._waiting:
            self._cond.notify_all()

    def _replay(self, worker: int, seq: int, deadline: float) -> PushResult:
        """Lock held. The fenced session's push ``seq``, numbered before the takeover: a
        duplicate of one this shard applied (or is applying: waits, bounded) is acknowledged
        again; anything else is refused (FENCED) and never applied. Raises
        FailedPreconditionError, DeadlineExceededError, UnavailableError."""

        if self.wait(lambda: self._seen(worker, seq), deadline) is Seen.DUPLICATE:
            self.counters["duplicate"] += 1
            return PushResult("duplicate", self.gate.version)
        raise self.guard.fenced_refusal(worker)

    def _seen(self, worker: int, seq: int):
        """Lock held: the dedup table's :class:`Seen` for ``(worker, seq)``, or a :class:`Wait`
        while an earlier delivery of it is still being applied."""
        seen = self.dedup.check(worker, seq)
        if seen is Seen.IN_PROGRESS:
            return Wait(f"push {seq} of worker {worker} is still being applied from an earlier delivery")
        return seen

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
        self.wake()
        if ready:
            self.apply_step(ready)  # re-entrant lock; nothing else was summed by this push
        return PushResult("stale", self.gate.version)
