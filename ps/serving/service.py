"""The gRPC adapter: decodes requests, calls the shard or its data handler, encodes replies.

The data calls (Push, Pull, PushPull, PushRows, PullRows) go to the
:class:`~ps.serving.handler.ShardHandler` that every plane shares: this module only parses
the framed messages (:mod:`ps.protocol.wire`: tensor bytes written once, read without
copies) and writes a :class:`~ps.serving.handler.Failure` as a status (:func:`abort`: the
code, the details, and the reason as trailing metadata ``ps-reason``). The other calls use
the generated protobuf classes and the same error mapping (:func:`handled`). Thread-safe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NoReturn

import grpc

from ps.checkpoint import state as checkpoint
from ps._proto import ps_pb2
from ps.shard.consistency import Mode
from ps.errors import REASON_METADATA_KEY, FailedPreconditionError, InvalidArgumentError
from ps.protocol.channel import SERVICE_NAME
from ps.protocol.rows_wire import decode_rows, encode_rows
from ps.protocol.wire import decode_framed, encode_framed, wire_dtype
from ps.serving.handler import Failure, Payload, ShardHandler, failure_of
from ps.shard.shard import Shard
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec

_MODES = {Mode.ASYNC: ps_pb2.ASYNC, Mode.SYNC: ps_pb2.SYNC, Mode.SSP: ps_pb2.SSP}


def abort(context: grpc.ServicerContext, failure: Failure) -> NoReturn:
    """End the call with ``failure``'s status, and its reason as trailing metadata. Raises."""
    if failure.reason:
        context.set_trailing_metadata(((REASON_METADATA_KEY, failure.reason.name),))
    context.abort(failure.code, failure.details)


def handled(method: Callable) -> Callable:
    """Map errors to a status (:func:`~ps.serving.handler.failure_of`); never let one kill the handler."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            if isinstance(request, Exception):
                raise request
            return method(self, request, context)
        except Exception as exc:
            abort(context, failure_of(exc, method.__name__))

    return wrapper


def lenient(parse: Callable, what: str) -> Callable:
    """A deserializer that never raises (gRPC would answer INTERNAL): a request that does not
    parse becomes the InvalidArgumentError the handler then answers."""

    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception as exc:
            return InvalidArgumentError(f"malformed {what}: {exc}")

    return deserialize


def _decode_push(data: bytes):
    return decode_framed(data, ps_pb2.PushHeader)


def _decode_pull(data: bytes):
    return ps_pb2.PullRequest.FromString(data).header


class ParameterServerService:
    """The ``ps.v1.ParameterServer`` handlers over one :class:`Shard` and its data handler. Thread-safe."""

    def __init__(self, shard: Shard, handler: ShardHandler, local_plane=None, stream_plane=None) -> None:
        self.shard = shard
        self.shard_handler = handler
        self.local_plane = local_plane  # a started ps.serving.local_plane.LocalPlane, or None
        self.stream_plane = stream_plane  # a started ps.serving.stream_plane.StreamPlane, or None

    @handled
    def Register(self, request: ps_pb2.RegisterRequest, context) -> ps_pb2.RegisterReply:
        shard = self.shard
        cfg = shard.config
        if cfg.num_workers and request.num_workers and request.num_workers != cfg.num_workers:
            raise FailedPreconditionError(  # a refused worker changes nothing on the shard
                f"this worker was started with --num-workers {request.num_workers}, but the servers with "
                f"--num-workers {cfg.num_workers}: give every ps-worker and ps-server the same --num-workers")
        if request.HasField("topology"):
            shard.membership.adopt_topology(request.topology.shard_index, request.topology.num_shards)
        fenced = request.resync and shard.membership.unfence(request.worker_id)  # adopts a rollback: the restored clock
        worker, clock, next_seq = shard.register(request.worker_id, request.session)
        reply = ps_pb2.RegisterReply(
            worker_id=worker, next_seq=next_seq, mode=_MODES[cfg.mode], staleness=cfg.staleness,
            clock=clock, num_workers=cfg.num_workers, server_id=shard.server_id,
            tables=[t.spec.to_proto() for t in list(shard.tables.values())],
            epoch=shard.epoch, lease_s=cfg.lease_s, fenced=fenced,
        )
        placement = shard.placement
        if placement is not None:
            reply.placement.CopyFrom(placement.to_proto())
        return reply

    @handled
    def Leave(self, request: ps_pb2.LeaveRequest, context) -> ps_pb2.LeaveReply:
        self.shard.membership.leave(request.worker_id, request.session)
        return ps_pb2.LeaveReply()

    @handled
    def CreateTable(self, request: ps_pb2.CreateTableRequest, context) -> ps_pb2.CreateTableReply:
        if request.HasField("topology"):
            self.shard.membership.adopt_topology(request.topology.shard_index, request.topology.num_shards)
        if request.spec.kind == ps_pb2.SPARSE:
            return ps_pb2.CreateTableReply(created=self.shard.rows.create(SparseTableSpec.from_proto(request.spec)))
        created = self.shard.create_table(TableSpec.from_proto(request.spec))
        return ps_pb2.CreateTableReply(created=created)

    def _data(self, method: str, request, context):
        """A data call, answered by the :class:`ShardHandler`. A PushPull pushes, then pulls
        ``then_pull`` (checked whole first); its reply is a PullReply whose header also holds
        the push's outcome and version. A retry is deduplicated."""
        if method in ("PushRows", "PullRows"):
            reply = self.shard_handler.rows(method, request, context.time_remaining())
            return abort(context, reply) if isinstance(reply, Failure) else reply
        message, payload = request if isinstance(request, tuple) else (request, b"")
        reply = self.shard_handler.data(method, message, Payload(payload), context.time_remaining())
        if isinstance(reply, Failure):
            abort(context, reply)
        if method == "Push":
            return ps_pb2.PushReply(outcome=reply.outcome, version=reply.version)
        return encode_framed(reply.header.SerializeToString(), reply.blocks)

    @handled
    def ListRows(self, request: ps_pb2.ListRowsRequest, context) -> bytes:
        """One page of a sparse table's stored rows (ids, then values); see ``SparseRows.list``."""
        after = None if request.from_start else request.after_id
        version, ids, values = self.shard.rows.list(request.table, after, request.max_rows)
        reply = ps_pb2.RowsHeader(table=request.table, num_ids=len(ids), dim=values.shape[1],
                                  dtype=wire_dtype(values.dtype), version=version)
        return encode_rows(reply, ids, values)

    @handled
    def Status(self, request: ps_pb2.StatusRequest, context) -> ps_pb2.StatusReply:
        snap = self.shard.snapshot()
        cfg = self.shard.config
        reply = ps_pb2.StatusReply(
            mode=_MODES[cfg.mode], staleness=cfg.staleness, version=snap["version"],
            waiting_for=list(snap["waiting_for"]), counters=snap["counters"], server_id=self.shard.server_id,
            epoch=self.shard.epoch, local_plane=self.local_plane.address if self.local_plane is not None else "",
            stream_port=self.stream_plane.port if self.stream_plane is not None else 0,
            awaiting_rollback=self.shard.membership.awaiting_rollback, rollback_id=self.shard.recovery.rollback_id,
        )
        if self.shard.recovery.restored_from is not None:
            reply.restored_tag, reply.restored_version = self.shard.recovery.restored_from
        if request.with_checkpoints and cfg.checkpoint_dir and snap["topology"] is not None:
            for c in checkpoint.listing(cfg.checkpoint_dir, *snap["topology"]):
                reply.checkpoints.add(tag=c["tag"], version=c["version"], cluster=c["cluster"], created=c["created"])
        if snap["topology"] is not None:
            reply.topology.shard_index, reply.topology.num_shards = snap["topology"]
        if snap["placement"] is not None:
            reply.placement.CopyFrom(snap["placement"].to_proto())
        for worker, clock, live, age in snap["workers"]:
            reply.workers.add(worker_id=worker, clock=clock, live=live, last_contact_age_s=age)
        for spec, nblocks, nbytes in snap["tables"]:
            reply.tables.add(spec=spec.to_proto(), blocks=nblocks, bytes=nbytes)
        for spec, rows, nbytes, evicted in self.shard.rows.status():
            reply.sparse_tables.add(spec=spec.to_proto(), rows=rows, bytes=nbytes, evicted=evicted)
        reply.counters.update(self.shard.rows.counters())
        if request.with_loads:
            held, kept = self.shard.loads()
            for table, rows, block, nbytes, accesses in held:
                reply.loads.add(table=table, block=block, bytes=nbytes, accesses=accesses, rows=rows)
            for table, rows, block, nbytes in kept:
                reply.loads.add(table=table, block=block, bytes=nbytes, rows=rows, kept=True)
        return reply

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a ``grpc.server``."""
        def unary(name, parse, reply_type):
            method = getattr(self, name, None) or functools.partial(self._data, name)
            serialize = reply_type.SerializeToString if reply_type else None  # None: already bytes
            return grpc.unary_unary_rpc_method_handler(method, lenient(parse, f"{name} request"), serialize)

        methods = {
            "Register": unary("Register", ps_pb2.RegisterRequest.FromString, ps_pb2.RegisterReply),
            "Leave": unary("Leave", ps_pb2.LeaveRequest.FromString, ps_pb2.LeaveReply),
            "CreateTable": unary("CreateTable", ps_pb2.CreateTableRequest.FromString, ps_pb2.CreateTableReply),
            "Status": unary("Status", ps_pb2.StatusRequest.FromString, ps_pb2.StatusReply),
            "Push": unary("Push", _decode_push, ps_pb2.PushReply),  # the data calls: self._data
            "Pull": unary("Pull", _decode_pull, None),
            "PushPull": unary("PushPull", _decode_push, None),
            "PushRows": unary("PushRows", decode_rows, ps_pb2.PushReply),
            "PullRows": unary("PullRows", decode_rows, None),
            "ListRows": unary("ListRows", ps_pb2.ListRowsRequest.FromString, None),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)
