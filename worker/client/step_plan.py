"""How one dense step is cut into calls: the :class:`Part` plan and each part's headers.

Parts are formed the way the server selects pull parts (block index modulo the number
of parts), so part *k* of a fused step pulls exactly the blocks it pushed: a worker
always reads its own update. Over gRPC the number of parts grows until every part fits
``client.part_bytes``; on the same-host data plane parts are ``client.local_part_bytes``
big. :func:`cached_plan` returns None when a fused part cannot fit one message (the
engine in :mod:`worker.client.dense_step` then pushes and pulls separately).

Pure: no I/O, nothing blocks. Not thread-safe (a Client is one worker).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ps._proto import ps_pb2
from ps.protocol.wire import wire_dtype

if TYPE_CHECKING:
    from worker.client.client import Client

#: most concurrent calls (connections, so shard threads) per shard on the data plane:
#: enough to use every core and to overlap the worker's copies with the shard's work
LOCAL_MAX_PARTS = int(os.environ.get("PS_LOCAL_MAX_PARTS", "0")) or max(2, min(8, os.cpu_count() or 2))


@dataclass
class Part:
    """One call of a step: part ``part`` of ``num_parts`` of one shard's blocks; ``seq`` is set by the engine."""

    shard: int
    part: int
    num_parts: int
    push: list[tuple[str, int]] | None      # blocks pushed (None: no push in this call)
    pull: list[str] | None                  # tables pulled (None: no pull in this call)
    pull_blocks: list[tuple[str, int]] = field(default_factory=list)
    seq: int = 0


def block_bytes(client: Client, name: str, b: int) -> int:
    """Bytes of block ``b`` of table ``name``."""
    spec = client._specs[name]
    start, stop = spec.block_range(b)
    return (stop - start) * np.dtype(spec.dtype).itemsize


def _num_parts(client: Client, shard: int, tables: list[str], part_bytes: int) -> int | None:
    """Smallest n with every modulo-n group of the shard's blocks within ``part_bytes``.

    None when even one block per table per part does not fit.
    """
    blocks = [(name, b) for name in tables for b in client._placement[name][shard]]
    total = sum(block_bytes(client, name, b) for name, b in blocks)
    most = max((client._specs[name].num_blocks for name in tables), default=1)
    n = max(1, -(-total // part_bytes))
    while True:
        sizes = [0] * n
        for name, b in blocks:
            sizes[b % n] += block_bytes(client, name, b)
        if max(sizes) <= part_bytes:
            return n
        if n >= most:
            return None
        n = min(most, max(n + 1, int(n * 1.25)))


def _plan(client: Client, push: list[str] | None, pull: list[str] | None,
          local: list[bool]) -> list[Part] | None:
    """The calls of one step, or None when a fused part cannot fit a message."""
    parts: list[Part] = []
    for shard in range(len(client._channels)):
        tables = sorted(set(push or ()) | set(pull or ()))
        if local[shard]:
            # no message limit here: parts of local_part_bytes keep each part's gradient
            # and weights in cache between the shard's check, apply and copy; in async mode
            # they queue on LOCAL_MAX_PARTS connections (shard threads). Where a pull may
            # wait for other workers (sync, ssp) a queued part could wait on the one
            # before it, so there every part gets its own connection, as many as allowed.
            total = sum(block_bytes(client, name, b) for name in tables for b in client._placement[name][shard])
            n = max(1, -(-total // client.local_part_bytes))
            if client.mode != "async":
                n = min(n, LOCAL_MAX_PARTS)
        else:
            n = _num_parts(client, shard, tables, client.part_bytes)
        if n is None:
            if push is not None and pull is not None:
                return None
            n = max(1, client._specs[tables[0]].num_blocks) if tables else 1
        shard_pushes = [(name, b) for name in (push or ()) for b in client._placement[name][shard]]
        for k in range(n):
            mine = [(name, b) for name, b in shard_pushes if b % n == k] if push is not None else None
            pulled = ([(name, b) for name in pull for b in client._placement[name][shard] if b % n == k]
                      if pull is not None else [])
            if mine is not None and not mine and client.mode == "async":
                mine = None  # nothing to apply here; sync and ssp need every part every step
            if mine is None and not pulled:
                continue
            parts.append(Part(shard, k, n, mine, pull if pulled else None, pulled))
    return parts


def cached_plan(client: Client, push, pull, local: list[bool]) -> list[Part] | None:
    """:func:`_plan`, remembered per (tables, paths, mode): a training loop plans once.

    Parts come interleaved across shards (part 0 of every shard, then part 1, ...) so
    that every shard gets work as early as possible.
    """
    cache = client.__dict__.setdefault("_plan_cache", {})
    key = (tuple(push) if push is not None else None, tuple(pull) if pull is not None else None, tuple(local),
           client.mode, len(client._specs))
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        planned = _plan(client, push, pull, local)
        if planned is not None:
            planned.sort(key=lambda p: (p.part, p.shard))
        cache[key] = planned
    planned = cache[key]
    if planned is None:
        return None
    return [Part(p.shard, p.part, p.num_parts, p.push, p.pull, p.pull_blocks) for p in planned]  # fresh seq each


def headers(client: Client, p: Part, pull_step: int):
    """(PushHeader or None, PullHeader or None) of one part; blocks without payload."""
    pull_header = None
    if p.pull is not None:
        pull_header = ps_pb2.PullHeader(worker_id=client.worker_id, step=pull_step, tables=p.pull,
                                        part=p.part, num_parts=p.num_parts)
    push_header = None
    if p.push is not None:
        push_header = ps_pb2.PushHeader(worker_id=client.worker_id, seq=p.seq, step=client.clock, part=p.part,
                                        num_parts=p.num_parts, session=client.session)
        for name, b in p.push:
            spec = client._specs[name]
            start, stop = spec.block_range(b)
            push_header.blocks.add(table=name, block=b, dtype=wire_dtype(spec.dtype), count=stop - start)
        if pull_header is not None:
            push_header.then_pull.CopyFrom(pull_header)
    return push_header, pull_header
