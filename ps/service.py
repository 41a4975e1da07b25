"""The gRPC adapter: decodes requests, calls :class:`~ps.shard.Shard`, encodes replies.

Push requests and pull replies go through :mod:`ps.wire` (tensor bytes written once,
read without copies); every other message uses the generated protobuf classes. Errors
from the shard (:class:`~ps.errors.PSError`) become status codes here and only here;
anything unexpected becomes INTERNAL and is logged, and the server keeps serving.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import grpc
import numpy as np

from ps._proto import ps_pb2
from ps.consistency import Mode
from ps.errors import InvalidArgumentError, PSError, status_code_of
from ps.shard import Shard
from ps.spec import TableSpec
from ps.wire import decode_framed, encode_framed, split_payload, wire_dtype

log = logging.getLogger(__name__)

SERVICE_NAME = "ps.v1.ParameterServer"
_MODES = {Mode.ASYNC: ps_pb2.ASYNC, Mode.SYNC: ps_pb2.SYNC, Mode.SSP: ps_pb2.SSP}
_OUTCOMES = {
    "applied": ps_pb2.APPLIED,
    "accumulated": ps_pb2.ACCUMULATED,
    "duplicate": ps_pb2.DUPLICATE,
    "stale": ps_pb2.STALE,
}


def _remaining(context: grpc.ServicerContext, default: float = 3600.0) -> float:
    left = context.time_remaining()
    # leave a little of the caller's deadline for the reply to travel back
    return default if left is None else max(0.0, left - 0.05)


def _handled(method: Callable) -> Callable:
    """Map project errors to status codes; never let an exception kill the handler."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            if isinstance(request, _Malformed):
                raise InvalidArgumentError(request.message)
            return method(self, request, context)
        except PSError as exc:
            context.abort(status_code_of(exc), str(exc))
        except Exception:
            log.exception("internal error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the server log")

    return wrapper


class _Malformed:
    """A request body that did not parse; the handler answers INVALID_ARGUMENT."""

    def __init__(self, what: str, error: Exception) -> None:
        self.message = f"malformed {what}: {error}"


def _lenient(parse: Callable, what: str) -> Callable:
    """A deserializer that never raises (gRPC would answer INTERNAL), see :class:`_Malformed`."""

    def deserialize(data: bytes):
        try:
            return parse(data)
        except Exception as exc:
            return _Malformed(what, exc)

    return deserialize


def _decode_push(data: bytes):
    return decode_framed(data, ps_pb2.PushHeader)


class ParameterServerService:
    """The ``ps.v1.ParameterServer`` handlers over one :class:`Shard`. Thread-safe."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    @_handled
    def Register(self, request: ps_pb2.RegisterRequest, context) -> ps_pb2.RegisterReply:
        shard = self.shard
        if request.HasField("topology"):
            shard.adopt_topology(request.topology.shard_index, request.topology.num_shards)
        worker, clock, next_seq = shard.register(request.worker_id)
        cfg = shard.config
        return ps_pb2.RegisterReply(
            worker_id=worker, next_seq=next_seq, mode=_MODES[cfg.mode], staleness=cfg.staleness,
            clock=clock, num_workers=cfg.num_workers, server_id=shard.server_id,
            tables=[t.spec.to_proto() for t in list(shard.tables.values())],
        )

    @_handled
    def Leave(self, request: ps_pb2.LeaveRequest, context) -> ps_pb2.LeaveReply:
        self.shard.leave(request.worker_id)
        return ps_pb2.LeaveReply()

    @_handled
    def CreateTable(self, request: ps_pb2.CreateTableRequest, context) -> ps_pb2.CreateTableReply:
        if request.HasField("topology"):
            self.shard.adopt_topology(request.topology.shard_index, request.topology.num_shards)
        created = self.shard.create_table(TableSpec.from_proto(request.spec))
        return ps_pb2.CreateTableReply(created=created)

    @_handled
    def Push(self, request, context) -> ps_pb2.PushReply:
        header, payload = request
        grads = split_payload(header.blocks, payload)
        result = self.shard.push(
            header.worker_id, header.seq, header.step, header.part, max(1, header.num_parts),
            [(ref.table, ref.block) for ref in header.blocks], grads, _remaining(context),
        )
        return ps_pb2.PushReply(outcome=_OUTCOMES[result.outcome], version=result.version)

    @_handled
    def Pull(self, request: ps_pb2.PullRequest, context) -> bytes:
        h = request.header
        version, blocks = self.shard.pull(
            h.worker_id, h.step, list(h.tables), h.part, max(1, h.num_parts), _remaining(context)
        )
        dtypes = {name: np.dtype(self.shard.table(name).spec.dtype) for name in set(h.tables)}
        header = ps_pb2.PullReplyHeader(version=version)
        for b in blocks:
            dtype = dtypes[b.table]
            header.blocks.add(table=b.table, block=b.block, dtype=wire_dtype(dtype),
                              count=len(b.data) // dtype.itemsize, version=b.version)
        return encode_framed(header.SerializeToString(), [b.data for b in blocks])

    @_handled
    def Status(self, request: ps_pb2.StatusRequest, context) -> ps_pb2.StatusReply:
        snap = self.shard.snapshot()
        cfg = self.shard.config
        reply = ps_pb2.StatusReply(
            mode=_MODES[cfg.mode], staleness=cfg.staleness, version=snap["version"],
            waiting_for=list(snap["waiting_for"]), counters=snap["counters"], server_id=self.shard.server_id,
        )
        if snap["topology"] is not None:
            reply.topology.shard_index, reply.topology.num_shards = snap["topology"]
        for worker, clock, live, age in snap["workers"]:
            reply.workers.add(worker_id=worker, clock=clock, live=live, last_contact_age_s=age)
        for spec, nblocks, nbytes in snap["tables"]:
            reply.tables.add(spec=spec.to_proto(), blocks=nblocks, bytes=nbytes)
        return reply

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a ``grpc.server``."""
        def unary(method, parse, reply_type):
            serialize = reply_type.SerializeToString if reply_type else None  # None: already bytes
            return grpc.unary_unary_rpc_method_handler(method, _lenient(parse, f"{method.__name__} request"), serialize)

        methods = {
            "Register": unary(self.Register, ps_pb2.RegisterRequest.FromString, ps_pb2.RegisterReply),
            "Leave": unary(self.Leave, ps_pb2.LeaveRequest.FromString, ps_pb2.LeaveReply),
            "CreateTable": unary(self.CreateTable, ps_pb2.CreateTableRequest.FromString, ps_pb2.CreateTableReply),
            "Push": unary(self.Push, _decode_push, ps_pb2.PushReply),
            "Pull": unary(self.Pull, ps_pb2.PullRequest.FromString, None),
            "Status": unary(self.Status, ps_pb2.StatusRequest.FromString, ps_pb2.StatusReply),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)
