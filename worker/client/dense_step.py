"""Dense push, pull and the fused push-then-pull step of a :class:`~worker.client.client.Client`.

One engine serves ``Client.push``, ``Client.pull`` and ``Client.push_pull``. For each
shard it splits the transfer into parts (several calls in flight per shard), and sends
every part either

* through the shard's **same-host data plane** (:mod:`worker.planes.local_plane`) when the
  worker and the shard share a machine: payloads go through shared memory that is reused
  every step, and a pull that asks for the same blocks as last time names the versions
  it already holds, so unchanged blocks are not copied at all; or
* through **gRPC** (``Push``, ``Pull``, ``PushPull``), with ``known`` block versions when
  the client keeps a pull cache (``Client(cache_pulls=True)``).

Parts are formed the way the server selects pull parts (block index modulo the number
of parts), so part *k* of a fused step pulls exactly the blocks it pushed: a worker
always reads its own update. The number of parts grows until every part fits
``part_bytes``; if a fused part still would not, the step falls back to push then pull.

Exactly-once holds on every path: each part push carries its own ``(worker, seq)``, and
a call that fails on the data plane is retried over gRPC with the same sequence number.
The pieces live beside this engine: :mod:`worker.client.step_plan` (parts and headers),
:mod:`worker.client.step_arrays` (gradients in, weights out), :mod:`worker.planes.local_step` (the
data plane) and :mod:`worker.planes.grpc_step` (gRPC and the known-block cache).
Not thread-safe (a Client is one worker).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ps._proto import ps_pb2
from ps.errors import PSError, TransientError
from worker.planes.grpc_step import grpc_finish, grpc_start
from worker.planes.local_step import attach_local, buffers, close_local, drop_local, ensure_region, local_finish, local_send
from worker.client.step_arrays import flatten_grads, outputs
from worker.client.step_plan import Part, cached_plan
from worker.planes.stream_step import drop_stream, stream_finish, stream_send
from worker.client.transport import lost_registration

if TYPE_CHECKING:
    from worker.client.client import Client

# attach_local, close_local and buffers are Client's entry points to the data plane;
# flatten_grads is shared with worker.client.sparse_client
__all__ = ["advance_clock", "attach_local", "buffers", "close_local", "data_planes", "flatten_grads", "run"]

log = logging.getLogger(__name__)


def run(client: Client, grads: Mapping[str, Any] | None, names: Iterable[str] | None,
        out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray] | None:
    """Push ``grads`` (if given), then pull ``names`` (if given); see ``Client.push_pull``."""
    client._require_open()
    if grads is not None and client.observer:
        from ps.errors import FailedPreconditionError

        raise FailedPreconditionError("an observer client cannot push")
    flat = flatten_grads(client, grads) if grads is not None else None
    pull_names = None
    if names is not None:
        pull_names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
        for n in pull_names:
            client.spec(n)
    dest = outputs(client, pull_names, out) if pull_names is not None else {}
    push_tables = list(flat) if flat is not None else None
    # parts for the data plane are smaller than gRPC's: they pipeline copy and apply
    locals_ = getattr(client, "_local", None) or [None] * len(client._channels)
    parts = cached_plan(client, push_tables, pull_names, [x is not None for x in locals_])
    if parts is None:  # a fused part cannot fit one message: two round trips instead
        run(client, grads, None)
        return run(client, None, pull_names, out) if pull_names is not None else None
    pull_step = client.clock + 1 if flat is not None else client.clock
    for p in parts:
        if p.push is not None:
            p.seq = client._next_seq[p.shard]
            client._next_seq[p.shard] += 1
    outcomes = _execute(client, parts, flat, pull_names, dest, pull_step)
    if flat is not None:
        advance_clock(client, outcomes)
    if pull_names is None:
        return None
    given = out or {}
    return {n: given[n] if given.get(n) is not None else dest[n].reshape(client._specs[n].shape) for n in pull_names}


def data_planes(client: Client) -> list[str]:
    """Per shard, how dense tensors travel: ``"shared memory"``, ``"tcp"`` (the TCP data
    plane beside gRPC) or ``"grpc"``. Does not block."""
    n = len(client._channels)
    locals_ = getattr(client, "_local", None) or [None] * n
    streams = getattr(client, "_stream", None) or [None] * n
    return ["shared memory" if lo is not None else "tcp" if st is not None else "grpc"
            for lo, st in zip(locals_, streams)]


_OUTCOME_NAMES = {number: name.lower() for name, number in ps_pb2.Outcome.items()}


def advance_clock(client: Client, outcomes: list[tuple[int, int]]) -> None:
    """Count ``(outcome, version)`` pairs of one step's pushes and move the clock one step
    (or to the cluster's, after a stale push). Does not block."""
    stale_version = None
    for outcome, version in outcomes:
        name = _OUTCOME_NAMES.get(outcome) or ps_pb2.Outcome.Name(outcome).lower()
        client.stats[name] = client.stats.get(name, 0) + 1
        if outcome == ps_pb2.STALE:
            stale_version = max(stale_version or 0, version)
    if stale_version is not None:
        log.warning("worker %d's gradient for step %d was stale; resuming at step %d",
                    client.worker_id, client.clock, stale_version)
        client.clock = max(client.clock + 1, stale_version)
    else:
        client.clock += 1


def _execute(client: Client, parts: list[Part], flat, pull_names, dest, pull_step) -> list[tuple[int, int]]:
    """Send every part (data plane first, then gRPC) and collect the push outcomes.

    Blocks until every part is answered; raises the first PSError after all have finished.
    """
    locals_ = list(getattr(client, "_local", None) or [None] * len(client._channels))  # as planned
    # the TCP data plane (worker.planes.stream_step) for shards not on the same-host one
    streams = [s if locals_[i] is None else None
               for i, s in enumerate(getattr(client, "_stream", None) or [None] * len(client._channels))]
    outcomes: list[tuple[int, int]] = []
    errors: list[PSError] = []
    sent = []
    retry_grpc: list[Part] = []
    # 1. the data plane: write each part's payload and ring the shard, part after part, so
    #    the shard applies part k while the worker still writes part k + 1
    region = None
    same: dict[tuple[str, str], bool] = {}  # per table: is the user's array the region's? (zero copy)
    if any(locals_):
        region = ensure_region(client, list(dict.fromkeys([*(flat or ()), *(pull_names or ())])))
    planes = (  # per data plane: (channels as planned, the client's current ones, drop, send)
        (locals_, client.__dict__.get("_local"), drop_local,
         lambda p, ch: local_send(client, ch, p, flat, pull_step, region, same)),
        # 1b. the TCP plane: each part's request on its own connection
        (streams, client.__dict__.get("_stream"), drop_stream,
         lambda p, ch: stream_send(client, ch, p, flat, pull_step)),
    )
    for planned, current, drop, send in planes:
        for p in parts:
            channel = planned[p.shard]
            if channel is None:
                continue
            if current[p.shard] is None:  # dropped by an earlier part's failure
                retry_grpc.append(p)
                continue
            try:
                sent.append((p, send(p, channel)))
            except TransientError as exc:
                log.info("%s: data plane failed (%s); retrying over gRPC", channel.address, exc)
                drop(client, p.shard)
                retry_grpc.append(p)
    # 2. gRPC parts, all concurrently
    grpc_parts = [p for p in parts if locals_[p.shard] is None and streams[p.shard] is None]
    grpc_results = grpc_start(client, grpc_parts, flat, pull_step)
    # 3. data-plane replies, in order (the shard works on the others meanwhile)
    for p, conn in sent:
        local = locals_[p.shard]
        try:
            if local is None:  # a stream-plane part
                outcomes += stream_finish(client, conn, p, dest)
            else:
                outcomes += local_finish(client, conn, p, dest, region, same)
        except TransientError as exc:
            log.info("%s: data plane failed (%s); retrying over gRPC", local.address if local else "stream", exc)
            if local is None:
                drop_stream(client, p.shard)
            else:
                drop_local(client, p.shard)
            retry_grpc.append(p)
        except PSError as exc:
            if lost_registration(exc):  # the gRPC retry registers again first (transport.call)
                retry_grpc.append(p)
            else:
                errors.append(exc)
    # 4. gRPC replies, then the retries of failed data-plane calls
    try:
        outcomes += grpc_finish(client, grpc_parts, grpc_results, dest)
    except PSError as exc:
        errors.append(exc)
    if retry_grpc:
        try:
            outcomes += grpc_finish(client, retry_grpc, grpc_start(client, retry_grpc, flat, pull_step), dest)
        except PSError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return outcomes
