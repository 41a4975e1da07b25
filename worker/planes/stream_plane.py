"""``StreamPlane``: payloads over raw TCP beside gRPC, for shards on other hosts (see :mod:`ps.serving.stream_plane`).

For every shard that offers one (its Status names a ``stream_port``) the worker keeps a
:class:`StreamChannel`: TCP connections by slot, each saying hello first (the shard's id
and, when the cluster has one, the shared token). A part's frame and header go out, then
its gradient blocks with ``sendmsg`` straight from the caller's arrays; pulled blocks come
back with ``recv_into`` straight into the destination arrays: one kernel copy per side.
Parts are gRPC's (:class:`~worker.client.step_plan.StepPlanner`), each on its own
connection, so the calls of a step run in parallel and a sync pull never waits behind
another part. In async mode at most :data:`~worker.planes.in_flight.MAX_IN_FLIGHT` parts per
shard wait for their replies, on as many connections
(:class:`~worker.planes.in_flight.InFlight`). With a pull cache, pulls name the blocks held,
as over gRPC. A connection whose call failed half-way is closed and never reused. Not
thread-safe (one Client).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.protocol.sockets import tune_tcp
from ps.protocol.wire import LOCAL_PULL, LOCAL_PUSH, LOCAL_PUSH_PULL, with_token
from worker.planes.channel_slots import SlotChannel, SlotPlane
from worker.planes.frame_connection import FrameConnection
from worker.planes.in_flight import MAX_IN_FLIGHT, InFlight, Sent
from worker.planes.part import Part
from worker.planes.step import Step

if TYPE_CHECKING:
    from worker.client.pull_cache import PullCache

#: seconds to connect and say hello to a shard's stream plane before using gRPC instead
CONNECT_TIMEOUT_S = 3.0


def split_host_port(address: str) -> tuple[str, int] | None:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); None for other targets (``unix:``, ``dns:///``)."""
    if "/" in address or address.startswith("unix"):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class StreamChannel(SlotChannel):
    """TCP connections to one shard's stream plane; the hello names the shard and carries the token."""

    def __init__(self, host: str, port: int, server_id: str, token: str | None, connect_timeout_s: float,
                 timeout_s: float) -> None:
        super().__init__(f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                         with_token(token or "", server_id.encode()), connect_timeout_s, timeout_s)
        self._target = (host, port)
        self._connect_timeout_s = connect_timeout_s

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self._target, timeout=self._connect_timeout_s)
        try:
            tune_tcp(sock)
        except BaseException:
            sock.close()
            raise
        return sock


class StreamPlane(SlotPlane):
    """The TCP data plane to the shards that :meth:`offer` accepted. The constructor does no I/O."""

    name = "tcp"

    def __init__(self, token: str | None, connect_timeout_s: float, timeout_s: float,
                 cache: PullCache | None = None) -> None:
        super().__init__()
        self._token = token
        self._timeouts = (min(connect_timeout_s, CONNECT_TIMEOUT_S), timeout_s)
        self._cache = cache
        self._in_flight = InFlight(lambda sent: self._receive(sent.ticket, sent.part, sent.step),
                                   lambda stale: stale.ticket.close())  # out of step
        self._templates: dict = {}  # Step.headers' templates, by part

    def channel(self, address: str, status: ps_pb2.StatusReply) -> StreamChannel | None:
        target = split_host_port(address)
        if target is None or not status.stream_port:
            return None
        # a short connect bound: a port that a firewall drops costs little
        return StreamChannel(target[0], status.stream_port, status.server_id, self._token, *self._timeouts)

    def send(self, part: Part, seq: int, step: Step) -> Sent:
        self._in_flight.before_send(part, step)
        # a connection per part in flight: in async mode MAX_IN_FLIGHT (a slot's last part is read
        # before it is used again), else one per part (a part queued behind a waiting pull would wait)
        slot = part.part % MAX_IN_FLIGHT if step.independent else part.part
        conn = self._channels[part.shard].connection(slot)
        known = None if self._cache is None else (lambda h: self._cache.name_known(part.shard, h, part.unpushed_pulls))
        push, pull = step.headers(part, seq, known, self._templates)
        if push is None:
            conn.send(LOCAL_PULL, pull.SerializeToString(), step.timeout_s)
        else:
            payload = step.payload(part)
            conn.send(LOCAL_PUSH_PULL if pull is not None else LOCAL_PUSH, push.SerializeToString(), step.timeout_s,
                      payload=payload, payload_bytes=sum(a.nbytes for a in payload))
        return self._in_flight.sent(conn, part, step)

    def finish(self, sent: Sent, part: Part, step: Step) -> tuple[int, int] | None:
        return self._in_flight.finish(sent)

    def _receive(self, conn: FrameConnection, part: Part, step: Step) -> tuple[int, int] | None:
        message, outcome, version = conn.receive()
        if part.pull is not None:
            try:
                header = ps_pb2.PullReplyHeader.FromString(message)
                got = set()
                for ref in header.blocks:
                    start, stop = step.block(part, ref.table, ref.block, ref.count, ref.dtype)
                    if (ref.table, ref.block) in got:
                        raise InvalidArgumentError(f"server sent {ref.table}[{ref.block}] twice")
                    got.add((ref.table, ref.block))
                    values = step.dest[ref.table][start:stop]
                    conn.read_into(memoryview(values).cast("B"))
                    if self._cache is not None:
                        self._cache.remember(ref.table, ref.block, ref.version, values)
            except (InvalidArgumentError, DecodeError) as exc:  # the byte stream is out of step
                conn.close()
                raise InvalidArgumentError(f"malformed reply from the stream plane {conn.address}: {exc}") from exc
            if self._cache is not None:
                self._cache.fill(part.shard, header.state_token, part.pull_blocks, got, step.dest)
        return (outcome, version) if part.push is not None else None

    def drop(self, shard: int) -> None:
        super().drop(shard)
        self._in_flight.forget(shard)

    def close(self) -> None:
        super().close()
        self._in_flight.forget()
