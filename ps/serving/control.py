"""The control calls of ``ps.v1.ParameterServer``: Heartbeat, Checkpoint, Restore, Shutdown and Move.

A second generic handler for the same service, next to :mod:`ps.serving.service` (gRPC asks each
handler in turn): leases (``Membership.heartbeat``), checkpoints on request
(:class:`~ps.checkpoint.checkpointer.Checkpointer`), a graceful stop and moves of blocks
between shards (:class:`~ps.shard.moves.UnitMoves`). Errors map to status codes
exactly as in :mod:`ps.serving.service` (:func:`~ps.serving.handler.failure_of`). Thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from ps._proto import ps_pb2
from ps.checkpoint.checkpointer import Checkpointer
from ps.shard.consistency import Mode
from ps.errors import FailedPreconditionError, InvalidArgumentError
from ps.protocol.channel import SERVICE_NAME
from ps.protocol.unit_wire import decode_units, encode_units
from ps.serving.handler import budget
from ps.serving.service import handled, lenient
from ps.shard.moves import UnitMoves
from ps.shard.shard import Shard
from ps.tables.placement_map import PlacementMap
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec


class ControlService:
    """Handlers over one shard, its checkpointer and its server's stop request."""

    def __init__(self, shard: Shard, checkpointer: Checkpointer, request_stop: Callable[[], None]) -> None:
        self.shard = shard
        self.checkpointer = checkpointer
        self.request_stop = request_stop
        self.moves = UnitMoves(shard)

    @handled
    def Heartbeat(self, request: ps_pb2.HeartbeatRequest, context) -> ps_pb2.HeartbeatReply:
        """Renews the worker's lease; FAILED_PRECONDITION when it must register (again)."""
        return ps_pb2.HeartbeatReply(epoch=self.shard.membership.heartbeat(request.worker_id, request.session))

    @handled
    def Checkpoint(self, request: ps_pb2.CheckpointRequest, context) -> ps_pb2.CheckpointReply:
        """Writes a checkpoint, in sync mode once the shard reaches ``at_version`` (0: now).

        Blocks within the call's deadline. FAILED_PRECONDITION without a checkpoint
        directory, ABORTED when the shard is already past ``at_version``.
        """
        if request.at_version < 0:
            raise InvalidArgumentError(f"at_version must be >= 0, got {request.at_version}")
        written = self.checkpointer.checkpoint(request.tag or None, request.at_version,
                                               budget(context.time_remaining()),
                                               cluster=bool(request.tag))
        return ps_pb2.CheckpointReply(path=written.path, version=written.version, epoch=written.epoch)

    @handled
    def Restore(self, request: ps_pb2.RestoreRequest, context) -> ps_pb2.RestoreReply:
        """Sync rollback: load checkpoint ``tag`` (which must hold ``version``) while serving,
        once per ``rollback_id``; ``tag`` "" only ends a wait for the rollback decision.

        Blocks (disk I/O, then until no push is being applied). FAILED_PRECONDITION when
        this shard has no such checkpoint or is not in sync mode, INVALID_ARGUMENT for a
        bad tag or id.
        """
        if not request.rollback_id or len(request.rollback_id) > 1024:
            raise InvalidArgumentError("restore needs a rollback_id of at most 1024 characters")
        if self.shard.config.mode is not Mode.SYNC:
            raise FailedPreconditionError("Restore (a cluster rollback) is for sync mode only; restart the shard "
                                          "with --restore instead")
        restored = self.checkpointer.rollback(request.rollback_id, request.tag or None, request.version,
                                              budget(context.time_remaining()))
        return ps_pb2.RestoreReply(restored=restored, version=self.shard.gate.version, epoch=self.shard.epoch)

    @handled
    def Shutdown(self, request: ps_pb2.ShutdownRequest, context) -> ps_pb2.ShutdownReply:
        """Asks the server to stop gracefully (as SIGTERM does); answers at once."""
        self.request_stop()
        return ps_pb2.ShutdownReply()

    @handled
    def Move(self, request: ps_pb2.MoveRequest, context) -> ps_pb2.MoveReply:
        """Give units away (named, or every one ``settle``), take units in, or only install a
        placement map (``ps.shard.moves``).

        Blocks (give: until no push admitted under an older map is being applied; hold, sync:
        until the steps before the boundary are applied; within the call's deadline).
        FAILED_PRECONDITION for an older map or a unit not here, INVALID_ARGUMENT for a
        malformed map, payload or unit, NOT_FOUND for an unknown table.
        """
        if not request.HasField("placement"):
            raise InvalidArgumentError("a Move needs the placement map to install")
        if request.give and request.take:
            raise InvalidArgumentError("a Move gives units or takes them, not both")
        placement = PlacementMap.from_proto(request.placement)
        reply = ps_pb2.MoveReply()
        if request.hold:
            if request.give or request.take or request.settle or request.reshard or request.release:
                raise InvalidArgumentError("a Move that holds a step boundary does nothing else")
            reply.hold_from, workers = self.moves.hold(request.hold_from, budget(context.time_remaining()))
            reply.workers.extend(workers)
            current = self.shard.placement
            if current is not None:
                reply.placement.CopyFrom(current.to_proto())
            return reply
        if request.reshard:
            self.moves.reshard(placement, request.shard_index,
                               [SparseTableSpec.from_proto(t) if t.kind == ps_pb2.SPARSE else TableSpec.from_proto(t)
                                for t in request.tables],
                               request.hold_from, list(request.workers))
        if request.give and request.settle:
            raise InvalidArgumentError("a Move names the units to give or settles, not both")
        if request.give or request.settle:
            units = [(u.table, u.rows, int(u.index)) for u in request.give] if request.give else None
            given, next_skip = self.moves.give(placement, units, budget(context.time_remaining()), request.skip,
                                               request.max_bytes)
            reply.more, reply.next_skip = next_skip is not None, next_skip or 0
            for unit, version, _ in given:
                reply.units.add(version=version).unit.CopyFrom(ps_pb2.PlacedUnit(table=unit[0], rows=unit[1],
                                                                                   index=unit[2]))
            reply.payload = encode_units([arrays for _, _, arrays in given])
            current = self.shard.placement
        elif request.take:
            current = self.moves.take(placement, _taken(request))
        else:
            current = self.moves.install(placement)
        if request.release:
            self.moves.release()
        if request.unhold:
            self.moves.unhold()
        reply.placement.CopyFrom(current.to_proto())
        return reply

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(method, request_type, reply_type):
            return grpc.unary_unary_rpc_method_handler(
                method, lenient(request_type.FromString, f"{method.__name__} request"), reply_type.SerializeToString
            )

        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Heartbeat": unary(self.Heartbeat, ps_pb2.HeartbeatRequest, ps_pb2.HeartbeatReply),
            "Checkpoint": unary(self.Checkpoint, ps_pb2.CheckpointRequest, ps_pb2.CheckpointReply),
            "Shutdown": unary(self.Shutdown, ps_pb2.ShutdownRequest, ps_pb2.ShutdownReply),
            "Restore": unary(self.Restore, ps_pb2.RestoreRequest, ps_pb2.RestoreReply),
            "Move": unary(self.Move, ps_pb2.MoveRequest, ps_pb2.MoveReply),
        })


def _taken(request: ps_pb2.MoveRequest) -> list:
    """The ``take`` units of a Move with their arrays (``ps.shard.moves.UnitState``). Raises
    InvalidArgumentError for a payload that is not a ``ps.protocol.unit_wire`` encoding."""
    arrays = decode_units(request.payload, len(request.take))
    return [((state.unit.table, state.unit.rows, int(state.unit.index)), int(state.version), mine)
            for state, mine in zip(request.take, arrays)]
