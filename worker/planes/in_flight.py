"""``InFlight``: the parts of a step a plane has sent and not read yet, at most a few in async mode.

A plane that sent every part of a step before reading any reply made a shard receive and
answer the whole step at once: for a 256 MiB step in 16 MiB parts, 16 requests' and 16
replies' buffers side by side. In async mode (:attr:`Step.independent`: no pull waits
for a push of the same step) sending a part to a shard first reads that shard's oldest
reply once :data:`MAX_IN_FLIGHT` are outstanding there; in sync and ssp mode nothing is
read early (a part's pull may wait for the step's other parts). Each shard's replies are
read in the order its parts were sent. Not thread-safe (one plane).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ps.errors import PSError
from worker.planes.part import Part
from worker.planes.step import Step

#: parts of an async step to one shard whose replies are awaited at once. Measured (bench.step_cost
#: and bench.memory, 128 MiB steps in 16 MiB parts on 2 cores, one shard): 2 is slower, 3 and 4 as fast as
#: all at once; a shard's peak RSS / state on the TCP plane was 1.16 with 2, 1.21 with 3,
#: 1.25 with 4 and 2.10 with all.
MAX_IN_FLIGHT = 3


class Sent:
    """A part a plane sent (its ``ticket``: what the plane needs to read the reply); once
    read, the reply's result or the error reading it raised."""

    __slots__ = ("ticket", "part", "step", "done", "result", "error")

    def __init__(self, ticket: Any, part: Part, step: Step) -> None:
        self.ticket, self.part, self.step = ticket, part, step
        self.done = False
        self.result: Any = None
        self.error: PSError | None = None


class InFlight:
    """A plane's sent parts not read yet, a queue per shard. ``read(sent)`` reads one reply
    into its step and returns the result (raising PSError); ``discard(sent)`` lets go of one
    that a call interrupted left behind (None: nothing to do). No I/O of its own."""

    def __init__(self, read: Callable[[Sent], Any], discard: Callable[[Sent], None] | None = None) -> None:
        self._read = read
        self._discard = discard
        self._queues: dict[int, collections.deque[Sent]] = {}
        self._queued = 0     # parts in the queues, all of them parts of ...
        self._step: Step | None = None  # ... this step (None once none is queued)

    def before_send(self, part: Part, step: Step) -> None:
        """Make room for one more part of ``step`` to ``part.shard``: read that shard's oldest
        replies while MAX_IN_FLIGHT are outstanding. Parts of an earlier step still queued
        (left by a call that was interrupted) are let go first. Blocks (each read is bounded
        by the plane). Never raises: a read's error is kept for :meth:`finish`."""
        if self._queued and (self._step is not step or not step.independent):
            for queue in self._queues.values():
                while queue:
                    stale = queue.popleft()
                    if self._discard is not None:
                        self._discard(stale)
            self._emptied()
        queue = self._queues.get(part.shard)
        while queue is not None and len(queue) >= MAX_IN_FLIGHT:
            self._take(self._pop(queue))

    def sent(self, ticket: Any, part: Part, step: Step) -> Sent:
        """Record a part just sent; returns the ticket for :meth:`finish`."""
        sent = Sent(ticket, part, step)
        if step.independent:
            queue = self._queues.get(part.shard)
            if queue is None:
                queue = self._queues[part.shard] = collections.deque()
            queue.append(sent)
            self._queued += 1
            self._step = step
        return sent

    def finish(self, sent: Sent) -> Any:
        """``sent``'s result, reading the replies of the parts sent to its shard before it
        first. Blocks. Raises the PSError its read raised."""
        queue = self._queues.get(sent.part.shard)
        while not sent.done and queue:
            self._take(self._pop(queue))
        if not sent.done:
            self._take(sent)
        if sent.error is not None:
            raise sent.error
        return sent.result

    def forget(self, shard: int | None = None) -> None:
        """Stop tracking the parts of ``shard`` (None: all); their :meth:`finish` still reads them."""
        if shard is None:
            self._queues.clear()
            self._emptied()
        elif shard in self._queues:
            self._queued -= len(self._queues.pop(shard))
            if not self._queued:
                self._emptied()

    def _pop(self, queue: collections.deque[Sent]) -> Sent:
        sent = queue.popleft()
        self._queued -= 1
        if not self._queued:
            self._step = None  # the step's arrays are not kept beyond its last part
        return sent

    def _emptied(self) -> None:
        self._queued = 0
        self._step = None

    def _take(self, sent: Sent) -> None:
        sent.done = True
        try:
            sent.result = self._read(sent)
        except PSError as exc:
            sent.error = exc
