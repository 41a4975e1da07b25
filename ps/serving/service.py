"""The gRPC adapter: decodes requests, calls :class:`~ps.shard.shard.Shard`, encodes replies.

Push requests and pull replies go through :mod:`ps.protocol.wire` (tensor bytes written once,
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

from ps.checkpoint import state as checkpoint
from ps._proto import ps_pb2
from ps.shard.consistency import Mode
from ps.errors import InvalidArgumentError, PSError, status_code_of
from ps.protocol.channel import SERVICE_NAME
from ps.protocol.rows_wire import decode_rows, encode_rows, split_rows
from ps.shard.shard import Shard
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec
from ps.protocol.wire import decode_framed, encode_framed, split_payload, wire_dtype

log = logging.getLogger(__name__)

_MODES = {Mode.ASYNC: ps_pb2.ASYNC, Mode.SYNC: ps_pb2.SYNC, Mode.SSP: ps_pb2.SSP}
#: a push's outcome on the wire (also used by ps.serving.local_plane)
OUTCOMES = {
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


def known_token(shard: Shard) -> str:
    """Identifies the server process and state epoch that block versions belong to."""
    return f"{shard.server_id}:{getattr(shard, 'epoch', 0)}"


def known_if_current(shard: Shard, header: ps_pb2.PullHeader) -> dict[tuple[str, int], int] | None:
    """The pull's ``known`` block versions, or None when they came from another state.

    Versions are only comparable within one server process and state epoch
    (:func:`known_token`): after a restart or a restore every block is sent again.
    """
    if not header.known or header.known_for != known_token(shard):
        return None
    return {(ref.table, ref.block): ref.version for ref in header.known}


def push_blocks(shard: Shard, header: ps_pb2.PushHeader, payload: memoryview, timeout_s: float):
    """Decode a push's payload against its header and hand it to the shard; a PushResult."""
    grads = split_payload(header.blocks, payload)
    return shard.push(
        header.worker_id, header.seq, header.step, header.part, max(1, header.num_parts),
        [(ref.table, ref.block) for ref in header.blocks], grads, timeout_s, header.session,
    )


def pull_blocks(shard: Shard, h: ps_pb2.PullHeader, timeout_s: float,
                known: dict[tuple[str, int], int] | None = None, into=None):
    """Pull for a PullHeader: ``(PullReplyHeader, blocks)``, see :meth:`Shard.pull`."""
    version, blocks = shard.pull(h.worker_id, h.step, list(h.tables), h.part, max(1, h.num_parts), timeout_s,
                                 known=known, into=into)
    tables = {}
    header = ps_pb2.PullReplyHeader(version=version, state_token=known_token(shard))
    add = header.blocks.add
    for b in blocks:
        t = tables.get(b.table)
        if t is None:
            t = tables[b.table] = shard.table(b.table)
        count = b.data.size if isinstance(b.data, np.ndarray) else len(b.data) // t.itemsize
        add(table=b.table, block=b.block, dtype=t.wire_dtype, count=count, version=b.version)
    return header, blocks


class ParameterServerService:
    """The ``ps.v1.ParameterServer`` handlers over one :class:`Shard`. Thread-safe."""

    def __init__(self, shard: Shard, local_plane=None, stream_plane=None) -> None:
        self.shard = shard
        self.local_plane = local_plane  # a started ps.serving.local_plane.LocalPlane, or None
        self.stream_plane = stream_plane  # a started ps.serving.stream_plane.StreamPlane, or None

    @_handled
    def Register(self, request: ps_pb2.RegisterRequest, context) -> ps_pb2.RegisterReply:
        shard = self.shard
        if request.HasField("topology"):
            shard.adopt_topology(request.topology.shard_index, request.topology.num_shards)
        fenced = request.resync and shard.unfence(request.worker_id)  # adopts a rollback: the restored clock
        worker, clock, next_seq = shard.register(request.worker_id, request.session)
        cfg = shard.config
        return ps_pb2.RegisterReply(
            worker_id=worker, next_seq=next_seq, mode=_MODES[cfg.mode], staleness=cfg.staleness,
            clock=clock, num_workers=cfg.num_workers, server_id=shard.server_id,
            tables=[t.spec.to_proto() for t in list(shard.tables.values())],
            epoch=shard.epoch, lease_s=cfg.lease_s, fenced=fenced,
        )

    @_handled
    def Leave(self, request: ps_pb2.LeaveRequest, context) -> ps_pb2.LeaveReply:
        self.shard.leave(request.worker_id, request.session)
        return ps_pb2.LeaveReply()

    @_handled
    def CreateTable(self, request: ps_pb2.CreateTableRequest, context) -> ps_pb2.CreateTableReply:
        if request.HasField("topology"):
            self.shard.adopt_topology(request.topology.shard_index, request.topology.num_shards)
        if request.spec.kind == ps_pb2.SPARSE:
            return ps_pb2.CreateTableReply(created=self.shard.rows.create(SparseTableSpec.from_proto(request.spec)))
        created = self.shard.create_table(TableSpec.from_proto(request.spec))
        return ps_pb2.CreateTableReply(created=created)

    @_handled
    def PushRows(self, request, context) -> ps_pb2.PushReply:
        header, payload = request
        ids, grads = split_rows(header, payload, with_ids=True, with_values=True)
        result = self.shard.rows.push(header.worker_id, header.seq, header.step, header.part,
                                      max(1, header.num_parts), header.table, ids, grads, _remaining(context),
                                      header.session)
        return ps_pb2.PushReply(outcome=OUTCOMES[result.outcome], version=result.version)

    @_handled
    def PullRows(self, request, context) -> bytes:
        header, payload = request
        ids, _ = split_rows(header, payload, with_ids=True, with_values=False)
        version, values = self.shard.rows.pull(header.worker_id, header.step, header.table, ids, _remaining(context))
        reply = ps_pb2.RowsHeader(table=header.table, num_ids=len(ids), dim=values.shape[1],
                                  dtype=wire_dtype(values.dtype), version=version)
        return encode_rows(reply, None, values)

    @_handled
    def Push(self, request, context) -> ps_pb2.PushReply:
        header, payload = request
        result = push_blocks(self.shard, header, payload, _remaining(context))
        return ps_pb2.PushReply(outcome=OUTCOMES[result.outcome], version=result.version)

    @_handled
    def Pull(self, request: ps_pb2.PullRequest, context) -> bytes:
        h = request.header
        header, blocks = pull_blocks(self.shard, h, _remaining(context), known_if_current(self.shard, h))
        return encode_framed(header.SerializeToString(), [b.data for b in blocks])

    @_handled
    def PushPull(self, request, context) -> bytes:
        """Push, then pull ``header.then_pull`` in one round trip.

        The reply is a PullReply whose header also carries the push's outcome and the
        shard's version after it. Errors of either half fail the call; a retry is
        deduplicated.
        """
        header, payload = request
        result = push_blocks(self.shard, header, payload, _remaining(context))
        h = header.then_pull
        reply_header, blocks = pull_blocks(self.shard, h, _remaining(context), known_if_current(self.shard, h))
        reply_header.push_outcome = OUTCOMES[result.outcome]
        reply_header.push_version = result.version
        return encode_framed(reply_header.SerializeToString(), [b.data for b in blocks])

    @_handled
    def Status(self, request: ps_pb2.StatusRequest, context) -> ps_pb2.StatusReply:
        snap = self.shard.snapshot()
        cfg = self.shard.config
        reply = ps_pb2.StatusReply(
            mode=_MODES[cfg.mode], staleness=cfg.staleness, version=snap["version"],
            waiting_for=list(snap["waiting_for"]), counters=snap["counters"], server_id=self.shard.server_id,
            epoch=self.shard.epoch, local_plane=self.local_plane.address if self.local_plane is not None else "",
            stream_port=self.stream_plane.port if self.stream_plane is not None else 0,
            awaiting_rollback=self.shard.awaiting_rollback, rollback_id=self.shard.rollback_id,
        )
        if self.shard.restored_from is not None:
            reply.restored_tag, reply.restored_version = self.shard.restored_from
        if request.with_checkpoints and cfg.checkpoint_dir and snap["topology"] is not None:
            for c in checkpoint.listing(cfg.checkpoint_dir, *snap["topology"]):
                reply.checkpoints.add(tag=c["tag"], version=c["version"], cluster=c["cluster"], created=c["created"])
        if snap["topology"] is not None:
            reply.topology.shard_index, reply.topology.num_shards = snap["topology"]
        for worker, clock, live, age in snap["workers"]:
            reply.workers.add(worker_id=worker, clock=clock, live=live, last_contact_age_s=age)
        for spec, nblocks, nbytes in snap["tables"]:
            reply.tables.add(spec=spec.to_proto(), blocks=nblocks, bytes=nbytes)
        for spec, rows, nbytes, evicted in self.shard.rows.status():
            reply.sparse_tables.add(spec=spec.to_proto(), rows=rows, bytes=nbytes, evicted=evicted)
        reply.counters.update(self.shard.rows.counters())
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
            "PushPull": unary(self.PushPull, _decode_push, None),
            "Status": unary(self.Status, ps_pb2.StatusRequest.FromString, ps_pb2.StatusReply),
            "PushRows": unary(self.PushRows, decode_rows, ps_pb2.PushReply),
            "PullRows": unary(self.PullRows, decode_rows, None),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)
