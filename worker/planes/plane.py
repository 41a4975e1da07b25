"""``DataPlane``: how the parts of a step travel to the shards, whatever carries the bytes.

Planes: gRPC (every shard; the fallback of the others), same-host shared memory, raw TCP,
and in-process calls of ``Shard`` objects (tests). :mod:`worker.client.step_engine` drives them.
"""

from __future__ import annotations

import abc
from typing import Any

from worker.planes.part import Part
from worker.planes.step import Step


class DataPlane(abc.ABC):
    """Sends parts to shards and collects their replies. Not thread-safe (one Client).

    The engine calls :meth:`send` for every part of a step (a part that pushes with its
    sequence number), then :meth:`finish` for every part that was sent, in the same
    order; between the two a plane may keep many parts in flight. A part that fails
    with a :class:`~ps.errors.TransientError` on a plane other than the engine's
    fallback is sent again over the fallback with the same sequence number (so it is
    applied once), after :meth:`drop`.
    """

    #: how this plane moves tensors, as ``Client.data_planes()`` says it
    name = ""
    #: whether it carries rows parts (sparse tables); the engine sends others' over the fallback
    rows = False
    #: parts need not fit a message: they are ``local_part_bytes`` big, to pipeline copies and work
    pipelined = False

    @abc.abstractmethod
    def send(self, part: Part, seq: int, step: Step) -> Any:
        """Hand ``part`` to its shard; returns what :meth:`finish` needs. Blocks until the
        request is handed over (bounded by ``step.timeout_s``), not for the reply. Raises
        PSError (TransientError when the shard cannot be reached)."""

    @abc.abstractmethod
    def finish(self, sent: Any, part: Part, step: Step) -> tuple[int, int] | None:
        """Wait for ``part``'s reply and write what it pulled into ``step``; returns the push's
        ``(outcome, shard version)``, None for a part that does not push. Blocks, bounded by
        ``step.timeout_s`` (and the plane's retries). Raises PSError: the shard's error,
        InvalidArgumentError for a malformed reply, TransientError."""

    def drop(self, shard: int) -> None:
        """A call to ``shard`` failed half-way: stop serving it (the engine sends its parts over
        the fallback from now on). Does not block or raise."""

    def close(self) -> None:
        """Release the plane's connections and memory. Idempotent; does not block or raise."""
