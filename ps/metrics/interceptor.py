"""``MetricsInterceptor``: counts and times every unary gRPC call a server handles.

A ``grpc.ServerInterceptor`` (register it first, so that calls refused by the token check
are counted too). Per call it records, with labels ``service`` (``ps.v1.ParameterServer``,
``grpc.health.v1.Health``, ...) and ``method`` (``Push``, ``Pull``, ``Check``, ...):

- ``ps_requests_total{service,method,code}``: calls finished, by status code (``OK``,
  ``DEADLINE_EXCEEDED``, ...);
- ``ps_request_duration_seconds{service,method}``: time in the handler (a histogram);
- ``ps_request_bytes_total`` and ``ps_response_bytes_total{service,method}``: serialized
  message bytes received and sent.

Streaming calls (health ``Watch``, reflection) pass through uncounted. The data calls
(``uncounted``: Push, Pull, PushPull, PushRows, PullRows) are counted and timed by the
shard's data handler instead, on every plane (:mod:`ps.serving.handler`, through
``ShardMetrics.observe_request``), so that each call counts once; here only their bytes
are counted. A data call the token check refuses is therefore not in ``ps_requests_total``.
Thread-safe; adds a few microseconds per call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from ps.metrics.registry import DURATION_BUCKETS, Registry


def split_method(full: str) -> tuple[str, str]:
    """``"/ps.v1.ParameterServer/Push"`` -> ``("ps.v1.ParameterServer", "Push")``."""
    _, _, rest = full.partition("/")
    service, _, method = rest.rpartition("/")
    return service or "unknown", method or full


class MetricsInterceptor(grpc.ServerInterceptor):
    """Adds the request series above to ``registry``. Thread-safe."""

    def __init__(self, registry: Registry, uncounted: frozenset[str] = frozenset()) -> None:
        self.uncounted = uncounted  # methods counted elsewhere: only their bytes here
        self.requests = registry.counter("ps_requests_total", "gRPC calls handled, by final status code",
                                         ("service", "method", "code"))
        self.duration = registry.histogram("ps_request_duration_seconds", "time spent handling a gRPC call",
                                           ("service", "method"), DURATION_BUCKETS)
        self.request_bytes = registry.counter("ps_request_bytes_total", "serialized request bytes received",
                                              ("service", "method"))
        self.response_bytes = registry.counter("ps_response_bytes_total", "serialized response bytes sent",
                                               ("service", "method"))
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
        labels = {"service": service, "method": method}
        behavior = handler.unary_unary
        deserialize = handler.request_deserializer
        serialize = handler.response_serializer

        def counted_deserialize(data: bytes):
            self.request_bytes.inc(len(data), **labels)
            return deserialize(data) if deserialize is not None else data

        def counted_serialize(message) -> bytes:
            data = serialize(message) if serialize is not None else message
            self.response_bytes.inc(len(data), **labels)
            return data

        def timed(request, context):
            start = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                reply = behavior(request, context)
                code = _code(context, grpc.StatusCode.OK)
                return reply
            except BaseException:
                code = _code(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                self.duration.observe(time.perf_counter() - start, **labels)
                self.requests.inc(code=code.name, **labels)

        return grpc.unary_unary_rpc_method_handler(behavior if method in self.uncounted else timed,
                                                   request_deserializer=counted_deserialize,
                                                   response_serializer=counted_serialize)


def _is_unary(handler: grpc.RpcMethodHandler) -> bool:
    return not handler.request_streaming and not handler.response_streaming and handler.unary_unary is not None


def _code(context, default: grpc.StatusCode) -> grpc.StatusCode:
    code: Callable | None = getattr(context, "code", None)
    value = code() if code is not None else None
    return value if isinstance(value, grpc.StatusCode) else default
