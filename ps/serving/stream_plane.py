"""The data plane for workers on other machines: tensor bytes over a raw TCP connection.

gRPC stays the control plane (register, create, status, health) and carries everything
else; a worker that is not on the shard's machine may move dense push and pull payloads
over this plane instead. gRPC Python copies each payload byte about six times; here the
kernel copies it once per side: the shard ``recv_into``s a push's payload into a buffer
it keeps per connection and reads it in place (``np.frombuffer``), and sends pulled
blocks with ``sendmsg`` straight from where :meth:`~ps.shard.shard.Shard.pull` copied them (a
send buffer kept per connection) or from the bytes it returned.

The frames are those of the same-host plane (:mod:`ps.protocol.wire`'s local request and reply
structs) around the protocol's own protobuf messages::

    request: local request struct (kind, flags, message length, timeout_s, 0,
             payload bytes, 0, 0) | message | payload (push: the blocks' bytes in order)
    reply:   local reply struct (kind, status, message length, push outcome, version)
             | message | payload (pulls: the blocks' bytes in the header's order)

* ``STREAM_HELLO`` must come first: its message is ``with_token(auth token, server id)``;
  the reply's message is the server id. A server with a token compares it in constant
  time (:meth:`~ps.serving.handler.ShardHandler.hello`) and answers a wrong one with
  UNAUTHENTICATED and a closed connection. A connection that has not passed its hello
  within ``HELLO_TIMEOUT_S`` (3 s) of its accept is closed, and at most ``MAX_PENDING``
  (256) wait for theirs (a new one closes the oldest), apart from the ``MAX_CONNECTIONS``
  (1024) authenticated ones: unauthenticated sockets never take a worker's place. A
  hello beyond ``MAX_CONNECTIONS`` gets RESOURCE_EXHAUSTED (the worker uses gRPC).
* ``STREAM_PUSH``: a ``PushHeader`` and its payload; the reply carries the outcome and
  version in the struct (no message).
* ``STREAM_PULL``: a ``PullHeader`` (``known`` and ``known_for`` as over gRPC); the reply
  message is a ``PullReplyHeader`` and the blocks' bytes follow (their length is the sum
  of ``count`` times the dtype's size). Unchanged known blocks are left out.
* ``STREAM_PUSH_PULL``: a ``PushHeader`` with ``then_pull``; the reply is a pull reply whose
  header also holds ``push_outcome`` and ``push_version``.

An error reply has ``status`` = the gRPC status code, the UTF-8 details as its message,
the :class:`~ps.errors.Reason` number in its ``reason`` field, and no payload. A frame that
is not this protocol (unknown kind, a request before the hello, oversized lengths, a
payload on a pull) drops the connection; lengths are checked against the server's message
limit before anything is allocated. Every request goes to the :class:`~ps.serving.handler.ShardHandler` that gRPC
and the shared-memory plane call too, so validation, exactly-once by ``(worker, seq)``,
status codes, metrics and injected faults (a lost reply closes the connection) are the
same; a refused request changes nothing. There is no TLS here: servers with TLS do not
offer this plane (``ps.serving.server``).

:class:`StreamPlane` serves one thread per connection (a worker opens one per call it
keeps in flight); ``start()`` binds, ``stop()`` closes everything. Thread-safe.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import numpy as np

from ps.protocol.sockets import FrameReader, send_all, set_io_timeout, tune_tcp
from ps.protocol.wire import (
    LOCAL_MAX_MESSAGE,
    LOCAL_REQUEST_SIZE,
    STREAM_HELLO,
    STREAM_PULL,
    STREAM_PUSH,
    STREAM_PUSH_PULL,
    pack_local_reply,
    split_token,
    unpack_local_request,
)
from ps.serving.handler import Failure, Payload, ShardHandler, failure_of
from ps.serving.socket_server import HELLO_TIMEOUT_S, MAX_PENDING, SocketServer, failure_frame
from ps.errors import ResourceExhaustedError

log = logging.getLogger(__name__)

#: seconds each read of a started request and each send may wait (the hello: ``HELLO_TIMEOUT_S``);
#: a connection idle between requests waits without a bound
IO_TIMEOUT_S = 60.0
#: authenticated connections one shard serves at once (each is a thread); more are refused
MAX_CONNECTIONS = 1024
_METHODS = {STREAM_PUSH: "Push", STREAM_PULL: "Pull", STREAM_PUSH_PULL: "PushPull"}


class _Connection(Payload):
    """One worker connection, its frame reader and its reusable receive and send buffers: a
    push's payload is read in place from the receive buffer, pulled blocks are copied into
    the send buffer. (A worker keeps a connection per part in flight: in async mode three per
    shard, so a shard holds three parts' buffers per worker, not a whole step's.)"""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.reader = FrameReader(sock)
        self.hello = False
        self._recv = np.empty(0, np.uint8)
        self._send = np.empty(0, np.uint8)
        self._cursor = 0
        self._wanted = 0

    def receive(self, nbytes: int) -> None:
        """Receive the next request's payload into the connection's buffer (grown only when too small)."""
        if nbytes > self._recv.size:
            self._recv = np.empty(nbytes, np.uint8)
        view = memoryview(self._recv)[:nbytes]
        if nbytes:
            self.reader.read_into(view)
        self.payload = view.toreadonly()

    def done(self) -> None:
        """The request's reply is sent: the payload view is no longer needed."""
        self.payload = memoryview(b"")

    def slots(self, shard, tables, known) -> Callable | None:
        """Without ``known``: consecutive slots of the send buffer (fresh arrays past its end;
        the buffer grows for next time). With: only changed blocks, as new bytes."""
        if known is not None:
            return None
        if self._wanted > self._send.size:  # the last pull did not fit
            self._send = np.empty(self._wanted, np.uint8)
        self._cursor = self._wanted = 0

        def into(name: str, block) -> np.ndarray:
            values = block.values
            nbytes = values.nbytes
            self._wanted += nbytes
            if self._cursor + nbytes > self._send.size:
                return np.empty(values.size, values.dtype)
            slot = self._send[self._cursor : self._cursor + nbytes].view(values.dtype)
            self._cursor += nbytes
            return slot

        return into


class StreamPlane(SocketServer):
    """Serves a shard's :class:`ShardHandler` to workers on other machines over raw TCP.

    The constructor does no I/O. ``host`` is the gRPC server's host, ``port`` 0 lets the
    OS choose (:attr:`port` tells which after :meth:`start`). Every connection must say
    hello first (with the server's token, if it has one: :meth:`ShardHandler.hello`).
    ``max_message_bytes`` bounds a request's header plus payload. Until its hello passed a
    connection is pending: at most ``max_pending`` of them (a new one closes the oldest),
    each closed ``hello_timeout_s`` seconds after its accept; ``max_connections`` bounds the
    authenticated ones apart (:class:`~ps.serving.socket_server.SocketServer`). Each None
    means the module's constant (``MAX_PENDING``, ``HELLO_TIMEOUT_S``, ``MAX_CONNECTIONS``).
    """

    thread_prefix = "ps-stream"
    hello_first = True

    def __init__(self, handler: ShardHandler, host: str, port: int = 0, *, max_message_bytes: int = 64 << 20,
                 max_connections: int | None = None, max_pending: int | None = None,
                 hello_timeout_s: float | None = None) -> None:
        # None: this module's MAX_CONNECTIONS, MAX_PENDING and HELLO_TIMEOUT_S, read now
        super().__init__(MAX_CONNECTIONS if max_connections is None else max_connections,
                         max_pending=MAX_PENDING if max_pending is None else max_pending,
                         hello_timeout_s=HELLO_TIMEOUT_S if hello_timeout_s is None else hello_timeout_s)
        self.handler = handler
        self.host = host
        self._port = port
        self._max_message = max_message_bytes

    def __repr__(self) -> str:
        return f"StreamPlane({self.host!r}, port={self._port})"

    @property
    def port(self) -> int:
        """The bound TCP port (the configured one, or the OS's choice after :meth:`start`)."""
        return self._port

    def listen(self) -> socket.socket:
        """Bind and listen on ``host``. Raises OSError when it cannot bind."""
        host = self.host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, self._port), family=family, backlog=128)
        self._port = listener.getsockname()[1]
        return listener

    def admit(self, sock: socket.socket) -> _Connection:
        return _Connection(sock)

    def serve(self, conn: _Connection) -> None:
        sock, reader = conn.sock, conn.reader
        tune_tcp(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(self.hello_timeout_s)  # until the hello: then the kernel's bounds (_hello)
        while not self.stopped:
            try:
                head = reader.read(LOCAL_REQUEST_SIZE)
            except TimeoutError:
                if conn.hello and not reader.buffered:
                    continue  # idle between steps: no bound (only a started request has one)
                raise
            if head is None:
                return
            kind, _, length, timeout_s, _, payload_bytes, _, _ = unpack_local_request(head)
            if length > min(LOCAL_MAX_MESSAGE, self._max_message):
                return  # not our protocol: drop the connection
            if (kind == STREAM_HELLO) == conn.hello:
                return  # a request before the hello, or a second hello
            if kind != STREAM_HELLO and kind not in _METHODS:
                return
            if payload_bytes and kind not in (STREAM_PUSH, STREAM_PUSH_PULL):
                return
            if length + payload_bytes > self._max_message:
                send_all(sock, [failure_frame(kind, failure_of(ResourceExhaustedError(
                    f"request of {length + payload_bytes} bytes exceeds the server's limit of "
                    f"{self._max_message}"), "request"))])
                return
            body = reader.read(length) if length else b""
            if body is None:
                return
            body = bytes(body)
            if kind == STREAM_HELLO:
                if not self._hello(conn, body):
                    return
                continue
            conn.receive(payload_bytes)
            reply = self.handler.data(_METHODS[kind], body, conn, timeout_s)
            if isinstance(reply, Failure):
                if reply.lost:
                    return  # fault injection: the reply is lost with the connection
                send_all(sock, [failure_frame(kind, reply)])
            elif reply.header is None:
                send_all(sock, [pack_local_reply(kind, b"", 0, reply.outcome, reply.version)])
            else:
                message = reply.header.SerializeToString()
                send_all(sock, [pack_local_reply(kind, message, 0, reply.outcome, reply.version), *reply.blocks])
            del reply
            conn.done()

    def _hello(self, conn: _Connection, body: bytes) -> bool:
        """Check the token and the server id; reply. False: the connection must close."""
        try:
            token, server_id = split_token(body)
        except ValueError:  # UnicodeDecodeError too
            return False
        failure = self.handler.hello(token.encode(), server_id)
        if failure is None and not self.authenticated(conn):
            failure = failure_of(ResourceExhaustedError(
                f"this shard's TCP data plane serves {self._max_connections} connections already: use gRPC"), "hello")
        ok = pack_local_reply(STREAM_HELLO, server_id)
        send_all(conn.sock, [failure_frame(STREAM_HELLO, failure) if failure else ok])
        conn.hello = failure is None
        if conn.hello:  # each read and send bounded in the kernel, set once (serve: idle is unbounded)
            set_io_timeout(conn.sock, IO_TIMEOUT_S)
        return conn.hello
