"""The consistency policy of one shard, as a pure state machine.

Events go in (a worker registers, leaves, pushes a part of its gradient for a step,
finishes applying, asks to pull) and decisions come out (:class:`Proceed`,
:class:`Accumulate`, :class:`Stale`, :class:`Wait`, :class:`StepReady`). No sockets,
threads, locks or clock reads: the gRPC servicer holds a lock around it, waits on a
condition when told to, and does the array work. Not thread-safe on its own.

Modes:

- ``async``: every push applies on arrival; pulls never wait.
- ``sync`` (BSP): the pushes of step t are summed; once every live worker contributed
  (and the expected cluster formed), the mean is applied once and the version becomes
  t + 1. A pull for step t waits for version >= t; a push for an old step is stale.
  With ``replicas_to_aggregate`` K > 0 the step is applied as soon as K workers
  contributed (backup workers: the late ones' gradients for that step are then stale).
  A live worker that reads step t > version has not contributed to the current step and
  never will (its gradient was lost with a restarted shard): it *abstains*, which may
  complete the step (:meth:`ConsistencyGate.on_pull` then returns :class:`StepReady`).
  A gate that has not applied a step since it started or was loaded (``resyncing``)
  adopts the step of the first worker that is ahead of it: a restored or restarted
  shard catches up with the cluster instead of waiting for steps nobody will send.
- ``ssp`` with staleness s: pushes apply on arrival and advance the pusher's clock; a pull
  at clock c waits until every live worker's clock is >= c - s. Workers expected but not
  yet registered count as clock 0. With s = 0 every pull is a barrier. A reader's clock
  is at least the clock it reads at.

In every mode :meth:`ConsistencyGate.hold` makes pushes wait (all of them, or those for
steps from a given one) until :meth:`ConsistencyGate.release`: checkpoints use it to
capture a state no push is changing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from ps.errors import FailedPreconditionError, InvalidArgumentError, Reason


class Mode(enum.Enum):
    ASYNC = "async"
    SYNC = "sync"
    SSP = "ssp"


@dataclass(frozen=True)
class Proceed:
    """Go ahead: apply the push now, or answer the pull now."""


@dataclass(frozen=True)
class Accumulate:
    """Sync: add this part to step ``step``'s sum."""

    step: int


@dataclass(frozen=True)
class Stale:
    """Sync: step ``step`` was already applied; drop the gradient."""

    step: int
    version: int


@dataclass(frozen=True)
class Wait:
    """Not yet: wait until the gate changes, then ask again. ``waiting_for`` says on whom."""

    reason: str
    waiting_for: tuple[int, ...] = ()
    unregistered: int = 0  # expected workers that have not registered yet
    never_registered: tuple[int, ...] = ()  # ... their likely ids (ConsistencyGate.never_registered)

    def describe(self) -> str:
        who = [f"worker {w}" for w in self.waiting_for if w not in self.never_registered]
        who += [f"worker {w} (never registered)" for w in self.never_registered]
        if self.unregistered > len(self.never_registered):
            who.append(f"{self.unregistered - len(self.never_registered)} worker(s) not yet registered")
        return f"{self.reason}; waiting for {', '.join(who) or 'nobody'}"


@dataclass(frozen=True)
class StepReady:
    """Sync: step ``step`` is complete; apply sum / ``contributors`` to every pending block."""

    step: int
    contributors: int


@dataclass
class _Worker:
    clock: int = 0
    live: bool = True


@dataclass
class _Step:
    """Sync bookkeeping for the step being aggregated."""

    parts: dict[int, set[int]] = field(default_factory=dict)   # worker -> parts received
    num_parts: dict[int, int] = field(default_factory=dict)    # worker -> parts announced
    done: set[int] = field(default_factory=set)                # workers fully contributed
    abstained: set[int] = field(default_factory=set)           # done without a gradient
    inflight: int = 0                                           # parts accepted, not yet summed
    applying: bool = False


class ConsistencyGate:
    def __init__(self, mode: Mode, *, staleness: int = 0, num_workers: int = 0,
                 replicas_to_aggregate: int = 0) -> None:
        if staleness < 0 or num_workers < 0 or replicas_to_aggregate < 0:
            raise ValueError("staleness, num_workers and replicas_to_aggregate must be >= 0")
        self.mode = mode
        self.staleness = staleness
        self.num_workers = num_workers
        self.replicas_to_aggregate = replicas_to_aggregate
        self.version = 0
        self.workers: dict[int, _Worker] = {}
        self.resyncing = True          # no step applied since start or load: may adopt a later step
        self._step = _Step()
        self._held = False
        self._held_from: int | None = None
        self._move_from: int | None = None  # a placement move's step boundary (hold_for_move)

    # -- holds and state transfer (checkpoints) -------------------------------------------

    def hold(self, from_step: int | None = None) -> None:
        """Pushes wait from now on: every push, or (``from_step``) sync pushes for steps >= it."""
        if from_step is None:
            self._held = True
        else:
            self._held_from = from_step if self._held_from is None else min(self._held_from, from_step)

    def release(self) -> None:
        """Undo every :meth:`hold`."""
        self._held = False
        self._held_from = None

    def hold_for_move(self, from_step: int) -> None:
        """Sync: pushes for steps >= ``from_step`` wait until :meth:`release_move`, before their
        placement is checked (a placement move settles between two steps); replaces an earlier
        move hold. Independent of :meth:`hold` (a checkpoint's release leaves it)."""
        self._move_from = from_step

    def release_move(self) -> None:
        """Undo :meth:`hold_for_move`."""
        self._move_from = None

    def move_held(self, step: int) -> Wait | None:
        """The :class:`Wait` of a push for ``step`` held by :meth:`hold_for_move`, or None."""
        if self._move_from is None or step < self._move_from:
            return None
        return Wait(f"push for step {step} is held while a placement move settles at step {self._move_from} "
                    "(ps-admin move/resize/rebalance; if that admin died, run it again)")

    def first_open_step(self) -> int:
        """Sync: the first step no part of which was accepted here: the version, or the next one
        when the current step started."""
        return self.version + (1 if self.step_started() else 0)

    @property
    def applying(self) -> bool:
        """Sync: a :class:`StepReady` was handed out and its step is not applied yet."""
        return self._step.applying

    def step_started(self) -> bool:
        """Sync: some part of the current step was accepted (or the step is being applied)."""
        s = self._step
        return bool(s.parts or s.done or s.applying)

    def export(self) -> tuple[int, dict[int, int]]:
        """``(version, {worker: clock})``; in sync mode clocks are capped at the version,
        because a checkpoint holds no contribution to an unfinished step."""
        cap = self.version if self.mode is Mode.SYNC else None
        return self.version, {
            i: (min(w.clock, cap) if cap is not None else w.clock) for i, w in self.workers.items()
        }

    def departed(self) -> list[int]:
        """The workers known here that left the quorum (done, or declared dead), sorted."""
        return sorted(i for i, w in self.workers.items() if not w.live)

    def load(self, version: int, clocks: dict[int, int], left: Iterable[int] = ()) -> None:
        """Replace the state with a checkpoint's: workers at their clocks, no step open.

        Workers come back live, except those in ``left`` (they had left the quorum): no
        step waits for them, and their ids are free for new workers again. When every
        worker had left, the checkpoint is of a finished run: the gate then knows no worker,
        so the next run's quorum forms anew (a sync step waits for ``num_workers``
        registrations, as after a fresh start).
        """
        if version < 0 or any(c < 0 for c in clocks.values()):
            raise ValueError("versions and clocks must be >= 0")
        left = {int(i) for i in left}
        self.version = version
        finished = bool(clocks) and {int(i) for i in clocks} <= left
        self.workers = {} if finished else {
            int(i): _Worker(clock=int(c), live=int(i) not in left) for i, c in clocks.items()}
        self._step = _Step()
        self.resyncing = True

    def _fast_forward(self, step: int) -> None:
        """Adopt ``step`` as the current version (resyncing only, before the step started)."""
        self.version = step
        for w in self.workers.values():
            if w.live:
                w.clock = max(w.clock, step)

    # -- membership -------------------------------------------------------------------

    def register(self, worker: int) -> int:
        """A worker joins or rejoins; returns the clock it resumes at."""
        w = self.workers.get(worker)
        if w is None:
            clock = self.version if self.mode is Mode.SYNC else self._min_clock()
            self.workers[worker] = w = _Worker(clock=clock)
        else:
            w.live = True
            if self.mode is Mode.SYNC:
                w.clock = max(w.clock, self.version)
        return w.clock

    def leave(self, worker: int) -> StepReady | None:
        """A worker leaves the quorum (done, or declared dead). May complete a sync step."""
        w = self.workers.get(worker)
        if w is not None:
            w.live = False
        return self._step_ready()

    def forget(self, workers: Iterable[int]) -> list[int]:
        """Drop departed workers (left, or lease expired) from the worker table, so their
        places count no more; a worker with a part in the open sync step is kept. Returns
        the ids forgotten. A forgotten worker that registers again starts at a new clock."""
        s = self._step
        busy = set(s.parts) | set(s.num_parts) | s.done
        gone = [i for i in workers if i in self.workers and not self.workers[i].live and i not in busy]
        for i in gone:
            del self.workers[i]
        return gone

    def live_workers(self) -> list[int]:
        return sorted(i for i, w in self.workers.items() if w.live)

    def check_live(self, worker: int) -> None:
        """Raises FailedPreconditionError unless ``worker`` is registered and live."""
        w = self.workers.get(worker)
        if w is None:
            raise FailedPreconditionError(f"worker {worker} is not registered with this shard",
                                          reason=Reason.NOT_REGISTERED)
        if not w.live:
            raise FailedPreconditionError(f"worker {worker} left the cluster; register again to rejoin",
                                          reason=Reason.NOT_REGISTERED)

    def check_reader(self, worker: int) -> None:
        """Raises FailedPreconditionError unless ``worker`` may pull: observers (< 0) and
        readers in async mode always may, others must be registered and live."""
        if worker >= 0 and self.mode is not Mode.ASYNC:
            self.check_live(worker)

    def _unregistered(self) -> int:
        return max(0, self.num_workers - len(self.workers))

    def never_registered(self) -> tuple[int, ...]:
        """Ids of the expected workers (``num_workers``) that never registered: the lowest
        ids nobody took, i.e. the missing ranks when workers register as ranks
        0..num_workers-1 (as ``ps-worker --rank`` and ``--rank auto`` do). Empty once
        ``num_workers`` ids are known."""
        missing: list[int] = []
        candidate = 0
        while len(missing) < self._unregistered():
            if candidate not in self.workers:
                missing.append(candidate)
            candidate += 1
        return tuple(missing)

    def _min_clock(self) -> int:
        clocks = [w.clock for w in self.workers.values() if w.live]
        if self._unregistered() or not clocks:
            return 0
        return min(clocks)

    # -- pushes -----------------------------------------------------------------------

    def on_push(self, worker: int, step: int, part: int, num_parts: int) -> Proceed | Accumulate | Stale | Wait:
        """Decide what to do with part ``part`` of ``num_parts`` of a push for ``step``.

        Raises FailedPreconditionError for an unregistered or departed worker or a second
        contribution to one sync step, InvalidArgumentError for inconsistent part numbers.
        """
        self.check_live(worker)
        if num_parts < 1 or not 0 <= part < num_parts:
            raise InvalidArgumentError(f"part {part} of {num_parts} is not a valid part number")
        if step < 0:
            raise InvalidArgumentError(f"step must be >= 0, got {step}")
        if self._held:
            return Wait("pushes are held while a checkpoint is taken")
        if self.mode is not Mode.SYNC:
            return Proceed()
        if step < self.version:
            return Stale(step=step, version=self.version)
        if self._held_from is not None and step >= self._held_from:
            return Wait(f"push for step {step} is held until the checkpoint at version {self._held_from} is taken")
        s = self._step
        if step > self.version and self.resyncing and not self.step_started():
            self._fast_forward(step)
        if step > self.version or s.applying:
            return Wait(f"push for step {step} waits for step {self.version} to be applied", *self._sync_waiting())
        if worker in s.done:
            raise FailedPreconditionError(f"worker {worker} already contributed to step {step}")
        announced = s.num_parts.setdefault(worker, num_parts)
        if announced != num_parts:
            raise InvalidArgumentError(f"worker {worker} announced {announced} parts for step {step}, now {num_parts}")
        got = s.parts.setdefault(worker, set())
        if part in got:
            raise FailedPreconditionError(f"worker {worker} sent part {part} of step {step} twice")
        got.add(part)
        s.inflight += 1
        return Accumulate(step)

    def on_part_done(self, worker: int, step: int) -> StepReady | None:
        """Sync: a part accepted with :class:`Accumulate` is summed. May complete the step."""
        s = self._step
        s.inflight -= 1
        if len(s.parts.get(worker, ())) == s.num_parts.get(worker, -1):
            s.done.add(worker)
            self.workers[worker].clock = step + 1
        return self._step_ready()

    def on_part_failed(self, worker: int, step: int, part: int) -> None:
        """Sync: a part accepted with :class:`Accumulate` could not be summed; forget it."""
        s = self._step
        s.inflight -= 1
        s.parts.get(worker, set()).discard(part)

    def on_applied(self, worker: int, step: int, applied: bool = True) -> None:
        """Async/ssp: a push was applied (or, ``applied=False``, deliberately skipped);
        the pusher's clock moves past ``step``."""
        if applied:
            self.version += 1
        w = self.workers[worker]
        w.clock = max(w.clock, step + 1)

    def on_step_applied(self, ready: StepReady) -> None:
        """Sync: the step's mean was applied; start aggregating the next one."""
        self.version = ready.step + 1
        self._step = _Step()
        self.resyncing = False

    def _step_ready(self) -> StepReady | None:
        if self.mode is not Mode.SYNC:
            return None
        s = self._step
        if s.applying or s.inflight or self._unregistered():
            return None
        live = set(self.live_workers())
        k = self.replicas_to_aggregate
        if not live <= s.done and not (k and len(s.done - s.abstained) >= k):
            return None
        if not s.done and not live:
            return None  # nobody contributed and nobody is left: nothing to apply
        s.applying = True
        return StepReady(step=self.version, contributors=max(1, len(s.done - s.abstained)))

    def _sync_waiting(self) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
        """``(waiting_for, unregistered, never_registered)`` fields of a sync :class:`Wait`."""
        pending = tuple(w for w in self.live_workers() if w not in self._step.done)
        missing = self.never_registered()
        return tuple(sorted(pending + missing)), len(missing), missing

    # -- pulls ------------------------------------------------------------------------

    def on_pull(self, worker: int, step: int) -> Proceed | Wait | StepReady:
        """May ``worker`` at clock ``step`` read now? Readers with ``worker < 0`` never wait.

        Sync: a live reader ahead of the current step that has sent no part of it abstains
        from it; when that completes the step the answer is :class:`StepReady` (apply it,
        then ask again).
        """
        if worker < 0 or self.mode is Mode.ASYNC:
            return Proceed()
        self.check_live(worker)
        if self.mode is Mode.SYNC:
            if step > self.version and self.resyncing and not self.step_started():
                self._fast_forward(step)
            if self.version >= step:
                return Proceed()
            s = self._step
            if not s.applying and worker not in s.done and worker not in s.parts:
                s.done.add(worker)
                s.abstained.add(worker)
                self.workers[worker].clock = max(self.workers[worker].clock, self.version + 1)
                ready = self._step_ready()
                if ready:
                    return ready
            return Wait(f"pull for step {step} waits for step {self.version} to be applied", *self._sync_waiting())
        w = self.workers[worker]
        w.clock = max(w.clock, step)
        bound = step - self.staleness
        if self._min_clock() >= bound:
            return Proceed()
        slow = tuple(i for i in self.live_workers() if self.workers[i].clock < bound)
        missing = self.never_registered()
        return Wait(f"pull at clock {step} waits for every worker to reach clock {bound}",
                    tuple(sorted(slow + missing)), len(missing), missing)

    def raises_clock(self, worker: int, step: int) -> bool:
        """Ssp: whether a pull by live ``worker`` at clock ``step`` raises its clock here
        (:meth:`on_pull` then does). A worker that sent this shard nothing for a while (its
        steps touched only other shards, e.g. before a move gave this shard blocks) shows an
        old clock, and other pulls may be waiting for it: the caller wakes them. Pure."""
        w = self.workers.get(worker)
        return self.mode is Mode.SSP and w is not None and w.live and step > w.clock

    def waiting_for(self) -> tuple[int, ...]:
        """Whom the cluster waits for, in ascending order. Sync: the live workers the
        current step still needs, and the expected workers that never registered
        (:meth:`never_registered`, also in ssp mode, where pulls wait for them at clock
        0). Empty in async mode."""
        if self.mode is Mode.SYNC:
            return self._sync_waiting()[0]
        return self.never_registered() if self.mode is Mode.SSP else ()
