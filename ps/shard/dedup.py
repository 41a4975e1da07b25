"""Exactly-once bookkeeping: which ``(worker id, sequence number)`` pushes a shard has seen.

Per worker, every sequence number up to ``floor`` has been seen, plus the set ``above``
of seen numbers past it (pushes may overtake each other, and one push can be split in
several messages). The table is compact (the set shrinks as the floor rises) and is part
of a checkpoint, so a retried push is recognised across a server restart too.

A gap (a number never delivered, because its sender gave up) would hold the floor back
for ever; once ``MAX_ABOVE`` numbers wait above a gap, the floor jumps over it, so a
push retried after more than ``MAX_ABOVE`` later ones is treated as seen.

Pure; not thread-safe (the shard holds its lock around it).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


MAX_ABOVE = 4096


class Seen(enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    IN_PROGRESS = "in_progress"


@dataclass
class _Window:
    floor: int = 0                                   # every seq <= floor was seen
    above: set[int] = field(default_factory=set)     # seen seqs > floor
    inflight: set[int] = field(default_factory=set)  # being applied right now


class DedupTable:
    def __init__(self) -> None:
        self._windows: dict[int, _Window] = {}

    def check(self, worker: int, seq: int) -> Seen:
        """Has this push been seen (or is it being applied)? Sequence numbers start at 1."""
        w = self._windows.get(worker)
        if w is None:
            return Seen.NEW
        if seq in w.inflight:
            return Seen.IN_PROGRESS
        if seq <= w.floor or seq in w.above:
            return Seen.DUPLICATE
        return Seen.NEW

    def begin(self, worker: int, seq: int) -> None:
        """Mark ``seq`` as being applied; a retry arriving meanwhile waits for it."""
        (self._windows.get(worker) or self._windows.setdefault(worker, _Window())).inflight.add(seq)

    def finish(self, worker: int, seq: int) -> None:
        """``seq`` was applied (or deliberately dropped): record it as seen for good."""
        w = self._windows.get(worker) or self._windows.setdefault(worker, _Window())  # a window built only if missing
        w.inflight.discard(seq)
        if seq <= w.floor:
            return
        if seq == w.floor + 1 and not w.above:  # in order, nothing pending above: the common case
            w.floor = seq
            return
        w.above.add(seq)
        if len(w.above) > MAX_ABOVE:
            w.floor = min(w.above) - 1
        while w.floor + 1 in w.above:
            w.floor += 1
            w.above.remove(w.floor)

    def abort(self, worker: int, seq: int) -> None:
        """``seq`` failed before it changed anything; a retry may apply it."""
        w = self._windows.get(worker)
        if w is not None:
            w.inflight.discard(seq)

    def next_seq(self, worker: int) -> int:
        """The smallest sequence number above everything seen from ``worker``."""
        w = self._windows.get(worker)
        if w is None:
            return 1
        return max([w.floor, *w.above, *w.inflight]) + 1

    def busy(self) -> bool:
        """Is any push being applied right now (between :meth:`begin` and finish/abort)?"""
        return any(w.inflight for w in self._windows.values())

    def export(self, without: Iterable[tuple[int, int]] = ()) -> dict[int, tuple[int, list[int]]]:
        """``worker -> (floor, sorted seen seqs above it)``, for checkpoints.

        ``without`` lists ``(worker, seq)`` pairs to leave out as if never seen (pushes
        whose effect the checkpoint does not hold, e.g. a sync step still open).
        """
        out = {k: (w.floor, set(w.above)) for k, w in self._windows.items()}
        for worker, seq in without:
            if worker not in out:
                continue
            floor, above = out[worker]
            if seq <= floor - MAX_ABOVE:
                continue  # too far below the floor to reopen: stays seen
            if seq <= floor:  # reopen the window below the floor: everything in (seq, floor] stays seen
                above |= set(range(seq + 1, floor + 1))
                floor = seq - 1
            above.discard(seq)
            out[worker] = (floor, above)
        return {k: (floor, sorted(above)) for k, (floor, above) in out.items()}

    @classmethod
    def restore(cls, data: dict[int, tuple[int, list[int]]]) -> DedupTable:
        table = cls()
        for worker, (floor, above) in data.items():
            table._windows[int(worker)] = _Window(floor=int(floor), above={int(s) for s in above})
        return table
