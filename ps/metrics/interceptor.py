"""``MetricsInterceptor``: counts and times the unary gRPC calls a server handles.

A ``grpc.ServerInterceptor`` (register it first, so that calls refused by the token check
are counted too). It records into :class:`~ps.metrics.request_metrics.RequestMetrics`, with
labels ``service`` (``ps.v1.ParameterServer``, ``grpc.health.v1.Health``, ...) and
``method`` (``Push``, ``Pull``, ``Check``, ...): each call's status code and duration,
unless the request handler already counted it (it counts Push and Pull on every data plane),
and always the serialized message bytes received and sent.

Streaming calls (health ``Watch``, reflection) pass through uncounted. Thread-safe; adds a
few microseconds per call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from ps.metrics.request_metrics import RequestMetrics


def split_method(full: str) -> tuple[str, str]:
    """``"/ps.v1.ParameterServer/Push"`` -> ``("ps.v1.ParameterServer", "Push")``."""
    _, _, rest = full.partition("/")
    service, _, method = rest.rpartition("/")
    return service or "unknown", method or full


class MetricsInterceptor(grpc.ServerInterceptor):
    """Records every unary call into ``metrics``. Thread-safe."""

    def __init__(self, metrics: RequestMetrics) -> None:
        self.metrics = metrics
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._lock = threading.Lock()
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not _is_unary(handler):
            return handler
        method = handler_call_details.method
        with self._lock:
            cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, *split_method(method))
        with self._lock:
            self._cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
        metrics = self.metrics
        received = metrics.request_bytes.labels(service, method)
        sent = metrics.response_bytes.labels(service, method)
        behavior = handler.unary_unary
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer

        def counted_deserialize(data: bytes):
            received.inc(len(data))
            return deserialize(data) if deserialize is not None else data

        def counted_serialize(message) -> bytes:
            data = serialize(message) if serialize is not None else message
            sent.inc(len(data))
            return data

        def timed(request, context):
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            metrics.begin_call()
            try:
                reply = behavior(request, context)
                code = _code(context, grpc.StatusCode.OK)
                return reply
            except BaseException:
                code = _code(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                if not metrics.observed_in_call():  # else the request handler counted it
                    metrics.observe(service, method, code.name, time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=counted_deserialize,
                                                   response_serializer=counted_serialize)


def _is_unary(handler: grpc.RpcMethodHandler) -> bool:
    return not handler.request_streaming and not handler.response_streaming and handler.unary_unary is not None


def _code(context, default: grpc.StatusCode) -> grpc.StatusCode:
    code: Callable | None = getattr(context, "code", None)
    value = code() if code is not None else None
    return value if isinstance(value, grpc.StatusCode) else default
