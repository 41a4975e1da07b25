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
- ``ssp`` with staleness s: pushes apply on arrival and advance the pusher's clock; a pull
  at clock c waits until every live worker's clock is >= c - s. Workers expected but not
  yet registered count as clock 0. With s = 0 every pull is a barrier.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ps.errors import FailedPreconditionError, InvalidArgumentError


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

    def describe(self) -> str:
        who = [f"worker {w}" for w in self.waiting_for]
        if self.unregistered:
            who.append(f"{self.unregistered} worker(s) not yet registered")
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
    inflight: int = 0                                           # parts accepted, not yet summed
    applying: bool = False


class ConsistencyGate:
    def __init__(self, mode: Mode, *, staleness: int = 0, num_workers: int = 0) -> None:
        if staleness < 0 or num_workers < 0:
            raise ValueError("staleness and num_workers must be >= 0")
        self.mode = mode
        self.staleness = staleness
        self.num_workers = num_workers
        self.version = 0
        self.workers: dict[int, _Worker] = {}
        self._step = _Step()

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

    def live_workers(self) -> list[int]:
        return sorted(i for i, w in self.workers.items() if w.live)

    def check_live(self, worker: int) -> None:
        """Raises FailedPreconditionError unless ``worker`` is registered and live."""
        w = self.workers.get(worker)
        if w is None:
            raise FailedPreconditionError(f"worker {worker} is not registered with this shard")
        if not w.live:
            raise FailedPreconditionError(f"worker {worker} left the cluster; register again to rejoin")

    def _unregistered(self) -> int:
        return max(0, self.num_workers - len(self.workers))

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
        if self.mode is not Mode.SYNC:
            return Proceed()
        if step < self.version:
            return Stale(step=step, version=self.version)
        s = self._step
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

    def on_applied(self, worker: int, step: int) -> None:
        """Async/ssp: a push was applied; the pusher's clock moves past ``step``."""
        self.version += 1
        w = self.workers[worker]
        w.clock = max(w.clock, step + 1)

    def on_step_applied(self, ready: StepReady) -> None:
        """Sync: the step's mean was applied; start aggregating the next one."""
        self.version = ready.step + 1
        self._step = _Step()

    def _step_ready(self) -> StepReady | None:
        if self.mode is not Mode.SYNC:
            return None
        s = self._step
        if s.applying or s.inflight or self._unregistered():
            return None
        live = set(self.live_workers())
        if not live <= s.done:
            return None
        if not s.done and not live:
            return None  # nobody contributed and nobody is left: nothing to apply
        s.applying = True
        return StepReady(step=self.version, contributors=max(1, len(s.done)))

    def _sync_waiting(self) -> tuple[tuple[int, ...], int]:
        pending = tuple(w for w in self.live_workers() if w not in self._step.done)
        return pending, self._unregistered()

    # -- pulls ------------------------------------------------------------------------

    def on_pull(self, worker: int, step: int) -> Proceed | Wait:
        """May ``worker`` at clock ``step`` read now? Readers with ``worker < 0`` never wait."""
        if worker < 0 or self.mode is Mode.ASYNC:
            return Proceed()
        self.check_live(worker)
        if self.mode is Mode.SYNC:
            if self.version >= step:
                return Proceed()
            return Wait(f"pull for step {step} waits for step {self.version} to be applied", *self._sync_waiting())
        bound = step - self.staleness
        if self._min_clock() >= bound:
            return Proceed()
        slow = tuple(i for i in self.live_workers() if self.workers[i].clock < bound)
        return Wait(f"pull at clock {step} waits for every worker to reach clock {bound}", slow, self._unregistered())

    def waiting_for(self) -> tuple[int, ...]:
        """Sync: live workers the current step still needs (empty in other modes)."""
        return self._sync_waiting()[0] if self.mode is Mode.SYNC else ()
