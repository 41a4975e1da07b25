"""``SocketServer``: a listening socket served one thread per connection, for the data planes.

The same-host plane (:mod:`ps.serving.local_plane`, a unix socket) and the TCP plane
(:mod:`ps.serving.stream_plane`) differ in what a connection carries, not in how connections come
and go: a subclass binds the listener (:meth:`listen`), says which sockets it admits and
what it keeps per connection (:meth:`admit`), and serves one (:meth:`serve`, in its own
daemon thread; it returns when the connection ends). Both write a failed request's reply
the same way (:func:`failure_frame`). Thread-safe.
"""

from __future__ import annotations

import logging
import socket
import threading

from ps.protocol.wire import pack_local_reply
from ps.serving.handler import Failure

log = logging.getLogger(__name__)


def failure_frame(kind: int, failure: Failure) -> bytes:
    """The error reply frame of a request of ``kind``: the status code's number, the details
    as the message, and the :class:`~ps.errors.Reason` number."""
    return pack_local_reply(kind, failure.details.encode(), failure.code.value[0], reason=int(failure.reason))


class SocketServer:
    """Accepts connections in a daemon thread and serves each in its own daemon thread.

    The constructor does no I/O. ``max_connections`` bounds the connections served at
    once (more are closed on arrival, with a warning).
    """

    #: thread names: ``<prefix>-accept`` and ``<prefix>-conn``
    thread_prefix = "ps-socket"

    def __init__(self, max_connections: int = 1024) -> None:
        self._listener: socket.socket | None = None
        self._connections: set = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._max_connections = max_connections

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

    # -- lifecycle --------------------------------------------------------------------------

    def start(self):
        """Bind and accept in a daemon thread; returns self. Does not block. Raises OSError."""
        self._listener = self.listen()
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
            conns = list(self._connections)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def stopped(self) -> bool:
        return self._closed.is_set()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn = self.admit(sock)
            if conn is None:
                sock.close()
                continue
            with self._lock:
                full = len(self._connections) >= self._max_connections
                if not full:
                    self._connections.add(conn)
            if full:
                log.warning("%s: refused a connection: %d are open", self.thread_prefix, self._max_connections)
                sock.close()
                continue
            threading.Thread(target=self._run, args=(conn,), name=f"{self.thread_prefix}-conn", daemon=True).start()

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
            self.release(conn)
            conn.sock.close()
