"""``MetricsEndpoint``: serves a prometheus-client registry at ``GET /metrics`` over HTTP.

The scrape side of the wire, shared by shards (:mod:`ps.metrics.shard_metrics`) and workers
(:mod:`worker.observe.worker_metrics`) like auth and TLS are. The exposition itself is
prometheus-client's WSGI app (text format 0.0.4, or OpenMetrics when the ``Accept`` header
asks; gzip; ``?name[]=`` filters). This module adds what a long-running server needs:

- **a bearer token**: with ``token``, every request must carry ``Authorization: Bearer
  <token>`` (compared in constant time by :class:`~ps.protocol.auth.TokenAuth`); anything
  else is answered 401 before the registry is read. Prometheus sends it with
  ``authorization: {credentials: ...}`` in its scrape config.
- **paths**: ``/metrics`` the series, ``/`` a one-line pointer, anything else 404.
- **bounded connections**: a connection is cut ``request_timeout_s`` after it was accepted,
  whatever its client does (one that sends a header line every 2 s included), at most
  ``max_connections`` are served at once (more are closed on arrival), and :meth:`stop`
  cuts every open connection at once. So no client can hold a stop.

The constructor does no I/O; :meth:`MetricsEndpoint.start` binds and starts the serving
thread; :meth:`MetricsEndpoint.stop` joins it and the connection threads, bounded. Thread-safe.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from ps.errors import UnavailableError
from ps.protocol.auth import METADATA_KEY, TokenAuth

log = logging.getLogger(__name__)

_TEXT = [("Content-Type", "text/plain; charset=utf-8")]


def metrics_app(registry: CollectorRegistry, token: str = ""):
    """The WSGI app: token check, then ``/metrics`` (prometheus-client), ``/`` or 404."""
    series = make_wsgi_app(registry)
    auth = TokenAuth(token) if token else None

    def app(environ, start_response):
        if auth is not None and not auth.authorized([(METADATA_KEY, environ.get("HTTP_AUTHORIZATION", ""))]):
            start_response("401 Unauthorized", _TEXT + [("WWW-Authenticate", 'Bearer realm="grpc-ps metrics"')])
            return [b"missing or wrong token (Authorization: Bearer ...)\n"]
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return series(environ, start_response)
        if path == "/":
            start_response("200 OK", _TEXT)
            return [b"grpc-ps metrics: GET /metrics\n"]
        start_response("404 Not Found", _TEXT)
        return [b"not found; try /metrics\n"]

    return app


class _Handler(WSGIRequestHandler):
    def setup(self) -> None:
        self.timeout = self.server.request_timeout_s  # each read and write; the whole connection: _Server
        super().setup()

    def log_message(self, fmt: str, *args) -> None:
        log.debug("metrics %s: " + fmt, self.address_string(), *args)

    def get_stderr(self) -> _LogStream:  # wsgiref writes its errors here
        return _LogStream()


class _LogStream:
    def write(self, text: str) -> None:
        if text.strip():
            log.debug("metrics: %s", text.rstrip())

    def flush(self) -> None:
        pass


class _Server(WSGIServer):
    """One thread per connection, each cut at its deadline by the serving loop."""

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], family: int, request_timeout_s: float,
                 max_connections: int) -> None:
        self.address_family = family
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self._open: dict[socket.socket, tuple[float, threading.Thread]] = {}
        self._lock = threading.Lock()  # held while cutting, so a socket is never cut after it closed
        self._closing = False
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        thread = threading.Thread(target=self._serve, args=(request, client_address), name="ps-metrics-conn",
                                  daemon=True)
        with self._lock:
            refuse = self._closing or len(self._open) >= self.max_connections
            if not refuse:
                self._open[request] = (time.monotonic() + self.request_timeout_s, thread)
        if refuse:
            log.warning("metrics: refused a connection from %s: %d are open", client_address[0], len(self._open))
            self.shutdown_request(request)
            return
        thread.start()

    def _serve(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except (OSError, ValueError):  # cut, reset or timed out; ValueError: I/O on a cut file
            pass
        except Exception:
            log.exception("metrics: request from %s failed", client_address[0])
        finally:
            with self._lock:
                self._open.pop(request, None)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        """Called by ``serve_forever`` every poll interval: cut connections past their deadline."""
        now = time.monotonic()
        with self._lock:
            for sock, (deadline, _) in self._open.items():
                if deadline <= now:
                    _cut(sock)

    def close_connections(self) -> list[threading.Thread]:
        """Refuse new connections, cut every open one; the threads still serving them."""
        with self._lock:
            self._closing = True
            for sock in self._open:
                _cut(sock)
            return [thread for _, thread in self._open.values()]


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # the serving thread's read or write fails at once
    except OSError:
        pass


class MetricsEndpoint:
    """Serves ``registry`` on ``host:port`` (port 0: the OS chooses), with an optional token.

    ``request_timeout_s``: the longest one connection is served, in seconds.
    """

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0, *,
                 token: str = "", request_timeout_s: float = 5.0, max_connections: int = 64) -> None:
        self.registry = registry
        self.host = host
        self._requested_port = port
        self._token = token
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    def __repr__(self) -> str:  # never shows the token
        return f"MetricsEndpoint({self.host!r}, port={self._port or self._requested_port}, token={bool(self._token)})"

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
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            server = _Server((self.host, self._requested_port), family, self.request_timeout_s,
                             self.max_connections)
        except OSError as exc:
            raise UnavailableError(f"cannot serve metrics on {self.host}:{self._requested_port}: {exc}") from exc
        server.set_app(metrics_app(self.registry, self._token))
        self._server, self._port = server, server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="ps-metrics-http", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving: close the port, cut every open connection, join the threads.

        Blocks at most about ``timeout_s`` seconds, whatever the clients do (a thread still
        alive after that is a daemon and is left behind, logged). Idempotent.
        """
        server, self._server = self._server, None
        if server is None:
            return
        deadline = time.monotonic() + timeout_s
        server.shutdown()  # returns once serve_forever left its loop: within a poll interval
        threads = server.close_connections()
        server.server_close()
        if self._thread is not None:
            threads.append(self._thread)
            self._thread = None
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            log.warning("metrics: %d threads still running %.1f s after stop", sum(t.is_alive() for t in threads),
                        timeout_s)

    def __enter__(self) -> MetricsEndpoint:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
