"""Joining the cluster: a :class:`~worker.client.client.Client` registers with every shard.

Called by :meth:`worker.Client.connect` with the channels open. Every call is bounded by
the client's ``connect_timeout_s`` (waiting for a server) or ``timeout_s`` (each call).
Not thread-safe, like the client.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError, UnavailableError
from ps.tables.spec import TableSpec
from worker.client.shard_status import MODES
from worker.client.transport import call, fan_out

if TYPE_CHECKING:
    from worker.client.client import Client

log = logging.getLogger("worker.client")  # the client's logger: these lines are the client's

#: seconds without an answer from a server before connecting says whom it waits for
NOTICE_AFTER_S = 2.0


def register_request(client: Client, shard: int, worker_id: int) -> ps_pb2.RegisterRequest:
    """The Register request for ``shard``, stating where it sits (``worker_id`` < 0: assign one)."""
    req = ps_pb2.RegisterRequest(worker_id=worker_id if not client.observer else -1, session=client.session,
                                 num_workers=client.num_workers)
    req.topology.shard_index, req.topology.num_shards = shard, len(client._channels)
    return req


def wait_for_server(ch, timeout_s: float, notice_after_s: float = NOTICE_AFTER_S) -> None:
    """Block until ``ch`` connects, logging ``waiting for HOST:PORT ...`` (a warning) once it
    has not after ``notice_after_s``: a silent wait for a server that is not there looks
    like a hang. Raises UnavailableError after ``timeout_s`` in all."""
    started = time.monotonic()
    try:
        ch.wait_ready(min(notice_after_s, timeout_s))
        return
    except UnavailableError:
        left = timeout_s - (time.monotonic() - started)
        if left <= 0:
            raise
    log.warning("waiting for %s ... (no server answers there yet; giving up after %g s)", ch.address, timeout_s)
    try:
        ch.wait_ready(left)
    except UnavailableError:
        raise UnavailableError(f"{ch.address}: no server answered within {timeout_s:g} s") from None


def register(client: Client, shard: int, worker_id: int) -> ps_pb2.RegisterReply:
    """Register with one shard (an observer only reads its status). Blocks (bounded)."""
    ch = client._channels[shard]
    if client.observer:
        reply = call(ch, ch.status, ps_pb2.StatusRequest(), client.timeout_s, client.retry)
        return ps_pb2.RegisterReply(worker_id=-1, mode=reply.mode, tables=[t.spec for t in reply.tables],
                                    server_id=reply.server_id, epoch=reply.epoch)
    return call(ch, ch.register, register_request(client, shard, worker_id), client.timeout_s, client.retry)


def register_everywhere(client: Client) -> list[ps_pb2.RegisterReply]:
    """Wait for every server, register with shard 0 (which may assign the id), then with
    the others at once under that id. Replies in server order. Blocks (bounded); raises
    UnavailableError when a server does not answer within ``connect_timeout_s``."""
    for ch in client._channels:
        wait_for_server(ch, client.connect_timeout_s)
    n = len(client._channels)
    first = register(client, 0, -1 if client._requested_id is None else client._requested_id)
    if client.observer:  # observers only read status: they never join a shard's quorum
        return [first] + [register(client, i, -1) for i in range(1, n)]
    return [first] + fan_out(
        [(client._channels[i], client._channels[i].register, register_request(client, i, first.worker_id))
         for i in range(1, n)],
        client.timeout_s, client.retry,
    )


def adopt(client: Client, replies: list[ps_pb2.RegisterReply]) -> None:
    """Take the worker id, mode, clock, sequence numbers and tables the shards replied.

    Raises FailedPreconditionError (after closing the client) when the shards disagree on
    the mode. No I/O otherwise.
    """
    modes = {r.mode for r in replies}
    if len(modes) != 1:
        client.close()
        raise FailedPreconditionError(f"servers disagree on the mode: {sorted(MODES[m] for m in modes)}")
    first = replies[0]
    client.worker_id = first.worker_id
    client.mode = MODES[first.mode]
    client.clock = max(r.clock for r in replies)
    client._next_seq = [r.next_seq for r in replies]
    for r in replies:
        for spec in r.tables:
            client._learn(TableSpec.from_proto(spec))
    log.info("worker %d joined %d shard(s) in %s mode at clock %d", client.worker_id, len(replies), client.mode,
             client.clock)
