"""``InFlight``: the parts of a step a plane has sent and not read yet, at most a few in async mode.

A plane that sent every part of a step before reading any reply made a shard receive and
answer the whole step at once: for a 256 MiB step in 16 MiB parts, 16 requests' and 16
replies' buffers side by side. In async mode (:attr:`Step.independent`: no pull waits
for a push of the same step) sending a part first reads the oldest reply once
:data:`MAX_IN_FLIGHT` are outstanding; in sync and ssp mode nothing is read early (a
part's pull may wait for the step's other parts). Replies are read in the order the parts
were sent. Not thread-safe (one plane).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ps.errors import PSError
from worker.planes.part import Part
from worker.planes.step import Step

#: parts of an async step whose replies are awaited at once. Measured (bench.step_cost and
#: bench.memory, 128 MiB steps in 16 MiB parts on 2 cores): 2 is slower, 3 and 4 as fast as
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
    """A plane's sent parts not read yet. ``read(sent)`` reads one reply into its step and
    returns the result (raising PSError); ``discard(sent)`` lets go of one that a call
    interrupted left behind (None: nothing to do). No I/O of its own."""

    def __init__(self, read: Callable[[Sent], Any], discard: Callable[[Sent], None] | None = None) -> None:
        self._read = read
        self._discard = discard
        self._queue: collections.deque[Sent] = collections.deque()

    def before_send(self, step: Step) -> None:
        """Make room for one more part of ``step``: read the oldest replies while
        MAX_IN_FLIGHT are outstanding. Blocks (each read is bounded by the plane). Never
        raises: a read's error is kept for :meth:`finish`."""
        queue = self._queue
        while queue and (queue[0].step is not step or not step.independent):
            stale = queue.popleft()  # left by a call that was interrupted
            if self._discard is not None:
                self._discard(stale)
        while len(queue) >= MAX_IN_FLIGHT:
            self._take(queue.popleft())

    def sent(self, ticket: Any, part: Part, step: Step) -> Sent:
        """Record a part just sent; returns the ticket for :meth:`finish`."""
        sent = Sent(ticket, part, step)
        if step.independent:
            self._queue.append(sent)
        return sent

    def finish(self, sent: Sent) -> Any:
        """``sent``'s result, reading the replies of the parts sent before it first. Blocks.
        Raises the PSError its read raised."""
        while not sent.done and self._queue:
            self._take(self._queue.popleft())
        if not sent.done:
            self._take(sent)
        if sent.error is not None:
            raise sent.error
        return sent.result

    def forget(self, shard: int | None = None) -> None:
        """Stop tracking the parts of ``shard`` (None: all); their :meth:`finish` still reads them."""
        self._queue = collections.deque(s for s in self._queue if shard is not None and s.part.shard != shard)

    def _take(self, sent: Sent) -> None:
        sent.done = True
        try:
            sent.result = self._read(sent)
        except PSError as exc:
            sent.error = exc
