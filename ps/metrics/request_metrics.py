"""``RequestMetrics``: the request series of a shard, fed by its handler and its gRPC interceptor.

- ``ps_requests_total{service,method,code}``: requests finished, by status code (``OK``,
  ``DEADLINE_EXCEEDED``, ...);
- ``ps_request_duration_seconds{service,method}``: seconds spent handling one (a histogram);
- ``ps_request_bytes_total`` and ``ps_response_bytes_total{service,method}``: serialized
  gRPC message bytes received and sent (the interceptor's; the data planes do not count bytes).

Two sources record requests, and each request is counted once:
:meth:`RequestMetrics.observe` is called by the transport-neutral request handler for the
Push and Pull it serves on every data plane (gRPC, shared memory, TCP), and
:class:`~ps.metrics.interceptor.MetricsInterceptor` records every other unary gRPC call
(and calls refused before the handler ran, such as a missing token). A thread-local
mark tells the interceptor that the handler, on the same thread, already counted the call.
Thread-safe.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram

#: seconds: request handling (0.5 ms .. 10 s)
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """The four request families above, registered in ``registry``. Thread-safe."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("ps_requests_total", "requests handled, by final status code",
                                ("service", "method", "code"), registry=registry)
        self.duration = Histogram("ps_request_duration_seconds", "seconds spent handling a request",
                                  ("service", "method"), registry=registry, buckets=DURATION_BUCKETS)
        self.request_bytes = Counter("ps_request_bytes_total", "serialized gRPC request bytes received",
                                     ("service", "method"), registry=registry)
        self.response_bytes = Counter("ps_response_bytes_total", "serialized gRPC response bytes sent",
                                      ("service", "method"), registry=registry)
        self._call = threading.local()
        #: (service, method, code) -> its two labelled series: ``labels()`` validates and locks on
        #: every call (about 3 us of the 4 an observe cost), and the set of keys is small
        self._series: dict[tuple[str, str, str], tuple] = {}

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        """Record one finished request: ``code`` a status code name (``"OK"``), ``seconds`` its
        handling time. Does not block (about 2 microseconds)."""
        key = (service, method, code)
        series = self._series.get(key)
        if series is None:  # racing threads build equal pairs: labels() returns one child per label set
            series = self._series.setdefault(key, (self.requests.labels(service, method, code),
                                                   self.duration.labels(service, method)))
        series[0].inc()
        series[1].observe(seconds)
        self._call.observed = True

    def begin_call(self) -> None:
        """The interceptor starts a gRPC call on this thread."""
        self._call.observed = False

    def observed_in_call(self) -> bool:
        """Whether :meth:`observe` ran on this thread since :meth:`begin_call`."""
        return getattr(self._call, "observed", False)
