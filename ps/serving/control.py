"""The control calls of ``ps.v1.ParameterServer``: Heartbeat, Checkpoint, Restore and Shutdown.

A second generic handler for the same service, next to :mod:`ps.serving.service` (gRPC asks each
handler in turn): leases (``Membership.heartbeat``), checkpoints on request
(:class:`~ps.checkpoint.checkpointer.Checkpointer`) and a graceful stop. Errors map to status codes
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
from ps.serving.handler import budget
from ps.serving.service import handled, lenient
from ps.shard.shard import Shard


class ControlService:
    """Handlers over one shard, its checkpointer and its server's stop request."""

    def __init__(self, shard: Shard, checkpointer: Checkpointer, request_stop: Callable[[], None]) -> None:
        self.shard = shard
        self.checkpointer = checkpointer
        self.request_stop = request_stop

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
        })
