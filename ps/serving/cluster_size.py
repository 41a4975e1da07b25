"""The cluster size a worker expects, checked when it registers.

A worker started with ``--num-workers 3`` against servers started with ``--num-workers 2``
would train on its third of the data while the servers wait for (or apply) two workers'
gradients: nothing fails, two thirds of the data is used. The worker states its count in
``RegisterRequest.num_workers``; a shard that expects another (both non-zero) refuses the
registration with FAILED_PRECONDITION, naming both numbers (:func:`check_cluster_size`).

:class:`ClusterSizeCheck` applies the check to the ``Register`` call as a server
interceptor, before the servicer runs, so a refused worker changes nothing on the shard.
Thread-safe; no I/O.
"""

from __future__ import annotations

import grpc

from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError

#: the method the check applies to
REGISTER_METHOD = f"/{ps_pb2.DESCRIPTOR.services_by_name['ParameterServer'].full_name}/Register"


def check_cluster_size(server_expects: int, worker_expects: int) -> None:
    """Raises FailedPreconditionError when both counts are stated (> 0) and differ."""
    if server_expects and worker_expects and server_expects != worker_expects:
        raise FailedPreconditionError(
            f"this worker was started with --num-workers {worker_expects}, but the servers with --num-workers "
            f"{server_expects}: give every ps-worker and ps-server the same --num-workers")


class ClusterSizeCheck(grpc.ServerInterceptor):
    """Refuses a ``Register`` whose ``num_workers`` differs from the shard's ``num_workers``."""

    def __init__(self, num_workers: int) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.num_workers = num_workers

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if (handler_call_details.method != REGISTER_METHOD or handler is None or not self.num_workers
                or handler.unary_unary is None):
            return handler
        register = handler.unary_unary

        def checked(request, context):
            try:  # a malformed request has no num_workers: the servicer refuses it
                check_cluster_size(self.num_workers, getattr(request, "num_workers", 0))
            except FailedPreconditionError as exc:
                context.abort(exc.code, str(exc))
            return register(request, context)

        return grpc.unary_unary_rpc_method_handler(checked, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
