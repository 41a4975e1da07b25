"""``SocketServer``: a listening socket served one thread per connection, for the data planes.

The same-host plane (:mod:`ps.serving.local_plane`, a unix socket) and the TCP plane
(:mod:`ps.serving.stream_plane`) differ in what a connection carries, not in how connections come
and go: a subclass binds the listener (:meth:`listen`), says which sockets it admits and
what it keeps per connection (:meth:`admit`), and serves one (:meth:`serve`, in its own
daemon thread; it returns when the connection ends). Both write a failed request's reply
the same way (:func:`failure_frame`). Thread-safe.

A plane whose connections must say hello first (``hello_first``: the TCP plane, whose hello
carries the token) keeps them apart until then: a connection that has not passed its hello
is *pending*, bounded in number (``max_pending``, :data:`MAX_PENDING`: the oldest pending
one is closed to make room for a new one) and in time (``hello_timeout_s``,
:data:`HELLO_TIMEOUT_S`, from its accept, whatever it sends). Only :meth:`SocketServer.authenticated`
moves it among the served connections, which ``max_connections`` bounds separately. So
idle or slow unauthenticated sockets can never take an authenticated client's place.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from ps.protocol.wire import pack_local_reply
from ps.serving.handler import Failure

log = logging.getLogger(__name__)

#: seconds a connection that must say hello first has to pass it, counted from its accept
HELLO_TIMEOUT_S = 3.0
#: connections waiting to say hello, at most; a new one closes the oldest
MAX_PENDING = 256


def failure_frame(kind: int, failure: Failure) -> bytes:
    """The error reply frame of a request of ``kind``: the status code's number, the details
    as the message, and the :class:`~ps.errors.Reason` number."""
    return pack_local_reply(kind, failure.details.encode(), failure.code.value[0], reason=int(failure.reason))


class SocketServer:
    """Accepts connections in a daemon thread and serves each in its own daemon thread.

    The constructor does no I/O. ``max_connections`` bounds the connections served at
    once (more are closed on arrival, with a warning; with ``hello_first``, refused at
    their hello). With ``hello_first``, ``max_pending`` and ``hello_timeout_s`` (seconds)
    bound the connections that have not passed their hello yet (see the module docstring).
    """

    #: thread names: ``<prefix>-accept`` and ``<prefix>-conn``
    thread_prefix = "ps-socket"
    #: connections are pending until the subclass calls :meth:`authenticated` (after a hello)
    hello_first = False

    def __init__(self, max_connections: int = 1024, *, max_pending: int = MAX_PENDING,
                 hello_timeout_s: float = HELLO_TIMEOUT_S) -> None:
        if max_connections < 1 or max_pending < 1 or not hello_timeout_s > 0:
            raise ValueError("max_connections and max_pending must be >= 1, hello_timeout_s > 0")
        self._listener: socket.socket | None = None
        self._connections: set = set()
        self._pending: dict = {}  # conn -> the monotonic time its hello is due; oldest first
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._max_connections = max_connections
        self._max_pending = max_pending
        self.hello_timeout_s = hello_timeout_s
        self.counters = {"pending_closed": 0, "refused": 0}  # under _lock

    # -- for subclasses -------------------------------------------------------------------

    def listen(self) -> socket.socket:
        """A bound, listening socket. Raises OSError."""
        raise NotImplementedError

    def admit(self, sock: socket.socket):
        """The per-connection object for an accepted ``sock`` (it has a ``sock``), or None to refuse it."""
        raise NotImplementedError

    def serve(self, conn) -> None:
        """Serve ``conn`` until it ends; may raise (logged). The socket is closed afterwards."""
        raise NotImplementedError

    def release(self, conn) -> None:
        """Called once ``conn`` ended, before its socket is closed."""

    def authenticated(self, conn) -> bool:
        """``conn`` passed its hello: serve it among the authenticated connections. False
        (it must close) when it is no longer pending (closed as overdue or to make room) or
        ``max_connections`` are open. Thread-safe; does not block."""
        with self._lock:
            if self._pending.pop(conn, None) is None:
                return False
            if len(self._connections) >= self._max_connections:
                self.counters["refused"] += 1
                log.warning("%s: refused an authenticated connection: %d are open", self.thread_prefix,
                            self._max_connections)
                return False
            self._connections.add(conn)
            return True

    # -- lifecycle --------------------------------------------------------------------------

    def start(self):
        """Bind and accept in a daemon thread; returns self. Does not block. Raises OSError."""
        self._listener = self.listen()
        if self.hello_first:  # wake up to close overdue pending connections when nobody connects
            self._listener.settimeout(min(0.5, self.hello_timeout_s / 4))
        threading.Thread(target=self._accept, name=f"{self.thread_prefix}-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection (calls in flight fail). Idempotent; does not block."""
        self._closed.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            conns = list(self._connections) + list(self._pending)
        for c in conns:
            _shut(c.sock)

    @property
    def stopped(self) -> bool:
        return self._closed.is_set()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                self._close_overdue()
                continue
            except OSError:
                return
            sock.settimeout(None)
            conn = self.admit(sock)
            if conn is None:
                sock.close()
                continue
            if self.hello_first:
                self._close_overdue()
                with self._lock:
                    oldest = next(iter(self._pending)) if len(self._pending) >= self._max_pending else None
                    if oldest is not None:
                        del self._pending[oldest]
                        self.counters["pending_closed"] += 1
                    self._pending[conn] = time.monotonic() + self.hello_timeout_s
                if oldest is not None:
                    _shut(oldest.sock)  # its thread ends and closes it
            else:
                with self._lock:
                    full = len(self._connections) >= self._max_connections
                    if not full:
                        self._connections.add(conn)
                if full:
                    log.warning("%s: refused a connection: %d are open", self.thread_prefix, self._max_connections)
                    sock.close()
                    continue
            threading.Thread(target=self._run, args=(conn,), name=f"{self.thread_prefix}-conn", daemon=True).start()

    def _close_overdue(self) -> None:
        """Close the pending connections whose hello is overdue."""
        now = time.monotonic()
        with self._lock:
            overdue = [c for c, due in self._pending.items() if due <= now]
            for c in overdue:
                del self._pending[c]
            self.counters["pending_closed"] += len(overdue)
        for c in overdue:
            _shut(c.sock)

    def _run(self, conn) -> None:
        try:
            self.serve(conn)
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("%s: connection failed", self.thread_prefix)
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._pending.pop(conn, None)
            self.release(conn)
            conn.sock.close()


def _shut(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways (its serving thread's read returns); never raises."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
