"""What a step record reports beside the loss: the rows per second (:class:`StepRate`) and
how far this worker runs ahead of the slowest (:func:`staleness_of`). Shared by the NumPy
loop (:mod:`worker.training.loop`) and the torch loop (:mod:`worker.torch.training`)."""

from __future__ import annotations

from collections import deque
from typing import Any


class StepRate:
    """Rows per second over the last ``window`` steps."""

    def __init__(self, start: float, window: int = 20) -> None:
        self._marks: deque[tuple[float, int]] = deque([(start, 0)], maxlen=window + 1)
        self._rows = 0

    def add(self, now: float, rows: int) -> float:
        self._rows += rows
        self._marks.append((now, self._rows))
        (t0, r0), (t1, r1) = self._marks[0], self._marks[-1]
        return (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0


def staleness_of(client: Any) -> int | None:
    """This worker's clock minus the slowest live worker's, from every shard's status."""
    clocks = [w["clock"] for shard in client.status() for w in shard["workers"] if w["live"]]
    return max(0, client.clock - min(clocks)) if clocks else None
