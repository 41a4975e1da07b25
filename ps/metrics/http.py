"""``MetricsEndpoint``: serves a :class:`~ps.metrics.registry.Registry` at ``GET /metrics`` over HTTP.

Standard library only (``http.server``). The constructor does no I/O; :meth:`start` binds
and starts the one serving thread it owns; :meth:`stop` shuts it down and joins it and
every request thread (a scrape is bounded: each connection times out after
``request_timeout_s``). ``GET /`` answers a one-line pointer to ``/metrics``; anything else
is 404. Thread-safe.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ps.errors import UnavailableError
from ps.metrics.registry import CONTENT_TYPE, Registry

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = False     # request threads are joined by server_close()
    block_on_close = True
    allow_reuse_address = True


def _handler(registry: Registry, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s
        server_version = "grpc-ps-metrics"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE, registry.render().encode())
            elif path == "/":
                self._reply(200, "text/plain; charset=utf-8", b"grpc-ps metrics: GET /metrics\n")
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found; try /metrics\n")

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            log.debug("metrics %s: " + fmt, self.address_string(), *args)

    return Handler


class MetricsEndpoint:
    """An HTTP server for one registry on ``host:port`` (port 0: the OS chooses)."""

    def __init__(self, registry: Registry, host: str = "127.0.0.1", port: int = 0,
                 request_timeout_s: float = 5.0) -> None:
        self.registry = registry
        self.host = host
        self._requested_port = port
        self.request_timeout_s = request_timeout_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port. Raises RuntimeError before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("MetricsEndpoint is not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> MetricsEndpoint:
        """Bind and serve in a background thread. Does not block.

        Raises UnavailableError when the address cannot be bound, RuntimeError if started twice.
        """
        if self._server is not None:
            raise RuntimeError("MetricsEndpoint is already started")
        server_class = _Server
        if ":" in self.host:
            import socket

            server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self._server = server_class((self.host, self._requested_port),
                                        _handler(self.registry, self.request_timeout_s))
        except OSError as exc:
            raise UnavailableError(f"cannot serve metrics on {self.host}:{self._requested_port}: {exc}") from exc
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="ps-metrics-http", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving, join the serving thread and the request threads. Idempotent; blocks
        at most about ``timeout_s`` plus one request timeout."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # returns once serve_forever has left its loop
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        server.server_close()  # joins the request threads (block_on_close)

    def __enter__(self) -> MetricsEndpoint:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
