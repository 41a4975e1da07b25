"""``InProcessPlane``: a step's parts as direct calls of ``Shard`` objects in this process.

No sockets, no encoding: the step engine runs against real shards in milliseconds, so
its planning, numbering, fallback and rollback retries are unit-tested without a
network. The shards are duck-typed (the worker never imports server modules): anything
with ``push(worker, seq, step, part, num_parts, blocks, grads, timeout_s, session)``,
``pull(worker, step, tables, part, num_parts, timeout_s)`` returning ``(version, blocks
with .table .block .data)``, and ``rows.push``/``rows.pull`` like
:class:`ps.shard.shard.Shard`. Not thread-safe (one engine).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ps._proto import ps_pb2
from ps.protocol.wire import wire_dtype
from worker.planes.part import Part
from worker.planes.plane import DataPlane
from worker.planes.step import Step


class InProcessPlane(DataPlane):
    """Every shard of ``shards`` (in server order) through its own methods.

    A part's push runs in :meth:`send` and its pull in :meth:`finish`, so that every push
    of a step is in before any of its pulls waits (as the network planes' concurrent
    calls would be). Errors are the shards' own.
    """

    name = "in-process"
    rows = True

    def __init__(self, shards: Sequence[Any]) -> None:
        self._shards = list(shards)

    def send(self, part: Part, seq: int, step: Step) -> tuple[int, int] | None:
        shard = self._shards[part.shard]
        if part.values is not None:
            result = shard.rows.push(step.worker_id, seq, step.clock, part.part, part.num_parts, part.table,
                                     part.ids, part.values, step.timeout_s, step.session)
        elif part.push is not None:
            result = shard.push(step.worker_id, seq, step.clock, part.part, part.num_parts, list(part.push),
                                step.payload(part), step.timeout_s, step.session)
        else:
            return None
        return ps_pb2.Outcome.Value(result.outcome.upper()), result.version

    def finish(self, sent: tuple[int, int] | None, part: Part, step: Step) -> tuple[int, int] | None:
        shard = self._shards[part.shard]
        if part.table and part.values is None:
            step.pulled_rows(part, shard.rows.pull(step.worker_id, step.pull_step, part.table, part.ids,
                                                   step.timeout_s)[1])
        elif part.pull is not None:
            _, blocks = shard.pull(step.worker_id, step.pull_step, list(part.pull), part.part, part.num_parts,
                                   step.timeout_s)
            for b in blocks:
                dtype = np.dtype(step.specs[b.table].dtype)
                values = np.frombuffer(b.data, dtype=dtype) if isinstance(b.data, bytes) else b.data
                start, stop = step.block(part, b.table, b.block, values.size, wire_dtype(values.dtype))
                step.dest[b.table][start:stop] = values
        return sent
