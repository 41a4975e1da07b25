"""The TCP data plane of a dense step: payloads over raw TCP instead of gRPC messages.

For shards that are not on the same-host plane (other machines, or this machine in
another network namespace), :func:`attach_stream` opens each shard's stream plane
(:mod:`worker.planes.stream_plane`) when the shard offers one. :func:`stream_send` sends a part's
header and its gradient blocks straight from the caller's arrays (``sendmsg``, no copy
in user space); :func:`stream_finish` waits for the reply and receives the pulled blocks
straight into the destination arrays (``recv_into``). Parts are those of gRPC
(``Client.part_bytes``), each on its own connection, so the calls of a step run in
parallel and a sync pull never waits behind another part. With
``Client(cache_pulls=True)`` a pull names the block versions it holds, exactly as over
gRPC, and unchanged blocks are not sent.

A call that fails here (connect refused, reset, timeout) is retried over gRPC by the
engine (:mod:`worker.client.dense_step`) with the same sequence number, after
:func:`drop_stream` (that shard uses gRPC from then on). Not thread-safe (a Client is
one worker).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from ps._proto import ps_pb2
from ps.errors import DeadlineExceededError, InvalidArgumentError, PSError, UnavailableError
from ps.protocol.wire import STREAM_PULL, STREAM_PUSH, STREAM_PUSH_PULL
from ps.protocol.wire import wire_dtype
from worker.planes.grpc_step import fill_left_out, name_known, remember_block
from worker.client.step_plan import Part, headers
from worker.planes.stream_plane import StreamChannel, StreamConnection, split_host_port
from worker.client.transport import fan_out

if TYPE_CHECKING:
    from worker.client.client import Client

log = logging.getLogger(__name__)

#: seconds to connect and say hello to a shard's stream plane before using gRPC instead
CONNECT_TIMEOUT_S = 3.0


def attach_stream(client: Client) -> None:
    """Open the TCP data plane to every shard that is not on the same-host plane and offers one.

    Best effort: blocks for one concurrent round of Status calls (bounded by
    ``client.timeout_s``) and one connect per shard; a shard without a usable stream
    plane is logged and left on gRPC, so this never raises. Nothing happens with
    ``Client(stream=False)`` or a TLS client (payloads then stay on gRPC's TLS).
    """
    client._stream = [None] * len(client._channels)
    if not client.stream or client.tls_ca or sys.byteorder != "little":
        return
    locals_ = getattr(client, "_local", None) or [None] * len(client._channels)
    todo = [(i, ch) for i, ch in enumerate(client._channels)
            if locals_[i] is None and split_host_port(ch.address) is not None]
    if not todo:
        return
    try:
        replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest()) for _, ch in todo], client.timeout_s)
    except PSError as exc:
        log.info("no stream data plane (%s); using gRPC", exc)
        return
    for (i, ch), reply in zip(todo, replies):
        if not reply.stream_port:
            continue
        host, _ = split_host_port(ch.address)
        # a short connect bound: a port that a firewall or a Service drops costs little
        stream = StreamChannel(host, reply.stream_port, reply.server_id, client.token,
                               min(client.timeout_s, CONNECT_TIMEOUT_S), client.wait_timeout_s)
        try:
            stream.connection(0)  # proves the port is reachable and the shard answers
        except PSError as exc:
            log.info("%s: no stream data plane at %s (%s); using gRPC", ch.address, stream.address, exc)
            stream.close()
            continue
        client._stream[i] = stream


def close_stream(client: Client) -> None:
    """Close every stream channel. Does not block or raise."""
    for stream in getattr(client, "_stream", None) or ():
        if stream is not None:
            stream.close()
    client._stream = []


def drop_stream(client: Client, shard: int) -> None:
    """A stream call to ``shard`` failed: that shard goes over gRPC from now on."""
    stream = client._stream[shard]
    if stream is not None:
        client._stream[shard] = None
        stream.close()


def stream_send(client: Client, stream: StreamChannel, p: Part, flat, pull_step: int) -> StreamConnection:
    """Send part ``p`` on its own connection; returns the connection to :func:`stream_finish`.

    Blocks until the request is handed to the kernel (bounded by the wait timeout), not
    for the reply. Raises UnavailableError or DeadlineExceededError when the shard cannot
    be reached.
    """
    conn = stream.connection(p.part)  # one per part: a queued part could wait on the one before it
    push_header, pull_header = headers(client, p, pull_step)
    name_known(client, p, push_header, pull_header)
    payload = []
    if push_header is not None:
        for name, b in p.push:
            start, stop = client._specs[name].block_range(b)
            payload.append(flat[name][start:stop])
        kind = STREAM_PUSH_PULL if pull_header is not None else STREAM_PUSH
        message = push_header.SerializeToString()
    else:
        kind, message = STREAM_PULL, pull_header.SerializeToString()
    try:
        conn.send(kind, message, payload, sum(a.nbytes for a in payload), client.wait_timeout_s)
    except OSError as exc:
        conn.close()
        raise _transient(stream, exc) from exc
    return conn


def stream_finish(client: Client, conn: StreamConnection, p: Part, dest) -> list[tuple[int, int]]:
    """Wait for part ``p``'s reply and receive its blocks straight into ``dest``.

    Blocks, bounded by the wait timeout given to :func:`stream_send`. Returns the push
    outcome, if any. Raises DeadlineExceededError, UnavailableError, InvalidArgumentError
    for a malformed reply, or the shard's PSError.
    """
    try:
        message, outcome, version = conn.receive()
        result = [(outcome, version)] if p.push is not None else []
        if p.pull is not None:
            _receive_blocks(client, conn, p, ps_pb2.PullReplyHeader.FromString(message), dest)
        return result
    except OSError as exc:  # timeout, reset: this connection's stream is out of step
        conn.close()
        raise _transient(None, exc) from exc
    except (InvalidArgumentError, DecodeError) as exc:
        conn.close()
        raise InvalidArgumentError(f"malformed reply from the shard's stream plane: {exc}") from exc


def _transient(stream: StreamChannel | None, exc: OSError) -> PSError:
    kind = DeadlineExceededError if isinstance(exc, TimeoutError) else UnavailableError
    return kind(f"stream plane{' ' + stream.address if stream else ''}: {exc}")


def _receive_blocks(client: Client, conn: StreamConnection, p: Part, header, dest) -> None:
    """Read the reply's blocks into ``dest`` (checked against the request); left-out known
    blocks come from the pull cache. Raises InvalidArgumentError, OSError."""
    asked = set(p.pull or ())
    got = set()
    cache_pulls = client.cache_pulls
    for ref in header.blocks:
        spec = client._specs.get(ref.table)
        if spec is None or ref.table not in asked or ref.table not in dest:
            raise InvalidArgumentError(f"server sent unrequested table {ref.table!r}")
        if not 0 <= ref.block < spec.num_blocks or (ref.table, ref.block) in got:
            raise InvalidArgumentError(f"server sent block {ref.block} of {ref.table!r} unasked")
        start, stop = spec.block_range(ref.block)
        if ref.count != stop - start or ref.dtype != wire_dtype(spec.dtype):
            raise InvalidArgumentError(f"server sent {ref.count} elements of dtype {ref.dtype} for "
                                       f"{ref.table}[{ref.block}]")
        values = dest[ref.table][start:stop]
        conn.read_into(memoryview(values).cast("B"))
        got.add((ref.table, ref.block))
        if cache_pulls:
            remember_block(client, ref, values)
    if cache_pulls:
        fill_left_out(client, p, got, dest)
        client._known_tokens[p.shard] = header.state_token
