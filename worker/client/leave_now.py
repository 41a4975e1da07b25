"""``leave_now``: take a worker out of the cluster from another thread, while its own
thread may be blocked in a call (a sync pull waiting on other workers).

A :class:`~worker.client.client.Client` is not thread-safe, but its gRPC channels are. This
sends ``Leave`` to every shard on the channels, after turning off what would undo it:
heartbeats stop (without waiting for one in flight) and shards are no longer joined
again. The shards then drop the worker from their quorum (a step that waited only for
it completes), and the blocked call fails with FailedPreconditionError ("left the
cluster") instead of waiting on, so the owning thread unwinds; its ``Client.close()``
afterwards is harmless. For signal handling (``ps-worker``'s first Ctrl-C); nothing else
of the client is touched, so shared-memory and TCP data planes stay mapped until the
owning thread closes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from ps._proto import ps_pb2

if TYPE_CHECKING:
    from worker.client.client import Client


def leave_now(client: Client, timeout_s: float = 3.0) -> list[str]:
    """Leave every shard; returns ``"ADDRESS: why"`` for each shard that did not confirm.

    Blocks at most about ``timeout_s`` seconds (one concurrent Leave per shard, no
    retries). Thread-safe with respect to the client's own thread. A client that never
    registered (observer, not connected) returns ``[]`` at once.
    """
    if client.observer or client.worker_id < 0 or not client._channels:
        return []
    heartbeat = getattr(client, "_heartbeat", None)
    if heartbeat is not None:
        heartbeat.stop(timeout_s=0.0)  # no new beats; one in flight may finish on its own
    for ch in client._channels:
        ch.rejoin = None  # a call failing with "left the cluster" must not register again
    request = ps_pb2.LeaveRequest(worker_id=client.worker_id, session=client.session)
    pending = [(ch.address, ch.leave.future(request, timeout=timeout_s)) for ch in client._channels]
    failed = []
    for address, future in pending:
        try:
            future.result()  # bounded by the call's deadline
        except grpc.RpcError as exc:
            failed.append(f"{address}: {exc.code().name}")
    return failed
