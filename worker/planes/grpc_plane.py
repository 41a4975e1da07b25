"""``GrpcPlane``: a step's parts as gRPC calls (``Push``, ``Pull``, ``PushPull``, ``PushRows``, ``PullRows``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ps._proto import ps_pb2
from ps.protocol.rows_wire import encode_rows, split_rows
from ps.protocol.wire import encode_framed, split_payload
from worker.client.transport import PendingCall
from worker.planes.in_flight import InFlight, Sent
from worker.planes.part import Part
from worker.planes.plane import DataPlane
from worker.planes.step import Step

if TYPE_CHECKING:
    from worker.client.cluster import Cluster
    from worker.client.pull_cache import PullCache


class GrpcPlane(DataPlane):
    """Every shard over its gRPC channel: the plane every other falls back to.

    Calls go out concurrently (in async mode at most
    :data:`~worker.planes.in_flight.MAX_IN_FLIGHT` awaited at once: :class:`~worker.planes.in_flight.InFlight`),
    except that the step's last call is made blocking when its reply is awaited (gRPC Python's blocking call is much cheaper than a future, and most
    steps to one shard are one call). Transient failures are retried with the cluster's
    policy and the same sequence number; a shard that forgot this worker is joined again
    first. With a ``cache`` (``Client(cache_pulls=True)``) pulls name the blocks held.
    """

    name = "grpc"
    rows = True

    def __init__(self, cluster: Cluster, cache: PullCache | None = None) -> None:
        self._cluster = cluster
        self._cache = cache
        self._deferred: PendingCall | None = None   # the last call sent, not yet started
        self._templates: dict = {}  # Step.headers' templates, by part
        self._in_flight = InFlight(self._read)

    def send(self, part: Part, seq: int, step: Step) -> PendingCall:
        ch = self._cluster.channels[part.shard]
        if part.table:
            method = ch.push_rows if part.values is not None else ch.pull_rows
            request = encode_rows(step.rows_header(part, seq), part.ids, part.values)
        else:
            known = None if self._cache is None else (lambda h: self._cache.name_known(part.shard, h, part.unpushed_pulls))
            push, pull = step.headers(part, seq, known, self._templates)
            if push is None:
                method, request = ch.pull, ps_pb2.PullRequest(header=pull)
            else:
                method = ch.push if pull is None else ch.push_pull
                request = encode_framed(push.SerializeToString(), step.payload(part))
        self._in_flight.before_send(part, step)
        if self._deferred is not None:
            self._deferred.start()
        self._deferred = PendingCall(ch, method, request, step.timeout_s, self._cluster.retry, step.deadline)
        return self._in_flight.sent(self._deferred, part, step)

    def finish(self, sent: Sent, part: Part, step: Step) -> tuple[int, int] | None:
        return self._in_flight.finish(sent)

    def _read(self, sent: Sent) -> tuple[int, int] | None:
        """Wait for ``sent``'s reply and write it into its step."""
        if self._deferred is not sent.ticket and self._deferred is not None:
            self._deferred.start()  # it runs while this reply is awaited
        self._deferred = None
        return self._receive(sent.ticket.result(), sent.part, sent.step)

    def _receive(self, reply, part: Part, step: Step) -> tuple[int, int] | None:
        if part.table:
            if part.values is not None:
                return reply.outcome, reply.version
            header, payload = reply
            step.pulled_rows(part, split_rows(header, payload, with_ids=False, with_values=True)[1])
            return None
        if part.pull is None:
            return reply.outcome, reply.version
        header, payload = reply
        got = set()
        dest = step.dest
        for ref, values in zip(header.blocks, split_payload(header.blocks, payload)):
            start, stop = step.block(part, ref.table, ref.block, ref.count, ref.dtype)
            dest[ref.table][start:stop] = values
            if self._cache is not None:
                got.add((ref.table, ref.block))
                self._cache.remember(ref.table, ref.block, ref.version, values)
        if self._cache is not None:
            self._cache.fill(part.shard, header.state_token, part.pull_blocks, got, dest)
        return (header.push_outcome, header.push_version) if part.push is not None else None
