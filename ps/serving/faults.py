"""Injected faults, for tests only: lost replies and a crash in the middle of a checkpoint.

A :class:`FaultPlan` is parsed from a short string (``ServerConfig.faults``, the hidden
``ps-server --faults`` flag), e.g. ``"drop_push_reply_every=3,kill_in_checkpoint=2"``:

- ``drop_push_reply_every=N``: every N-th Push (or PushPull) call, on any plane, is handled
  as usual (its gradient applied or counted) and then its reply is lost (:class:`ReplyDropper`,
  asked by :class:`~ps.serving.handler.ShardHandler`): a gRPC caller gets UNAVAILABLE, a
  data-plane connection closes, exactly what a network drop after the server acted looks
  like. The client's retry with the same sequence number must be acknowledged and not
  applied again.
- ``kill_in_checkpoint=N``: the N-th checkpoint this process writes is interrupted by
  SIGKILL after half of its data file reached the disk (the previous one must survive).

Nothing here is active unless asked for. Thread-safe.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, fields

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultPlan:
    drop_push_reply_every: int = 0
    kill_in_checkpoint: int = 0

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """``"key=int,key=int"`` -> plan. Raises ValueError naming a bad entry."""
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in known:
                raise ValueError(f"unknown fault {item!r}; known: {', '.join(sorted(known))} (as key=N)")
            try:
                values[key] = int(value)
            except ValueError:
                raise ValueError(f"fault {key} needs an integer, got {value!r}") from None
            if values[key] < 0:
                raise ValueError(f"fault {key} must be >= 0")
        return cls(**values)

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


class ReplyDropper:
    """Says which handled pushes lose their reply: every ``every``-th. Thread-safe."""

    def __init__(self, every: int) -> None:
        self._every = every
        self._count = 0
        self._lock = threading.Lock()
        self.dropped = 0

    def drop_now(self) -> bool:
        """Count one handled push; True when its reply is to be lost. Does not block."""
        with self._lock:
            self._count += 1
            if self._count % self._every:
                return False
            self.dropped += 1
            return True


class CheckpointKiller:
    """Calls SIGKILL on this process halfway through writing the ``n``-th checkpoint."""

    def __init__(self, n: int) -> None:
        self._n = n
        self._count = 0
        self._lock = threading.Lock()

    def __call__(self, stage: str, path: str) -> None:
        """The checkpoint writer's hook: ``stage`` "data" means ``path`` is the data file
        just written (under its temporary name, not yet renamed)."""
        if stage != "data":
            return
        with self._lock:
            self._count += 1
            if self._count != self._n:
                return
        size = os.path.getsize(path)
        with open(path, "r+b") as f:  # what a crash mid-write leaves: a torn temporary file
            f.truncate(size // 2)
            f.flush()
            os.fsync(f.fileno())
        log.warning("fault injection: killing this process in the middle of checkpoint %d", self._n)
        os.kill(os.getpid(), signal.SIGKILL)
