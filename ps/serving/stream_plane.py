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
  time (:func:`hmac.compare_digest`) and answers a wrong one with UNAUTHENTICATED and a
  closed connection.
* ``STREAM_PUSH``: a ``PushHeader`` and its payload; the reply carries the outcome and
  version in the struct (no message).
* ``STREAM_PULL``: a ``PullHeader`` (``known`` and ``known_for`` as over gRPC); the reply
  message is a ``PullReplyHeader`` and the blocks' bytes follow (their length is the sum
  of ``count`` times the dtype's size). Unchanged known blocks are left out.
* ``STREAM_PUSH_PULL``: a ``PushHeader`` with ``then_pull``; the reply is a pull reply whose
  header also holds ``push_outcome`` and ``push_version``.

An error reply has ``status`` = the gRPC status code (:func:`ps.errors.status_code_of`)
and the UTF-8 details as its message, and no payload. A frame that is not this protocol
(unknown kind, a request before the hello, oversized lengths, a payload on a pull) drops
the connection; lengths are checked against the server's message limit before anything
is allocated. Every request goes to the very same :class:`~ps.shard.shard.Shard` calls as gRPC
(:func:`ps.serving.service.push_blocks`, :func:`ps.serving.service.pull_blocks`), so exactly-once by
``(worker, seq)``, validation and status codes are the same; a refused request changes
nothing. There is no TLS here: servers with TLS do not offer this plane (``ps.serving.server``).

:class:`StreamPlane` serves one thread per connection (a worker opens one per call it
keeps in flight); ``start()`` binds, ``stop()`` closes everything. Thread-safe.
"""

from __future__ import annotations

import hmac
import logging
import socket
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from ps._proto import ps_pb2
from ps.errors import PSError, status_code_of
from ps.serving.service import OUTCOMES, known_if_current, pull_blocks, push_blocks
from ps.shard.shard import Shard
from ps.protocol.sockets import recv_frame, recv_into_exact, send_all
from ps.serving.socket_server import SocketServer
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

log = logging.getLogger(__name__)

#: seconds a new connection has to say hello, and a started request to arrive in full
IO_TIMEOUT_S = 60.0
#: connections one shard serves at once (each is a thread); more are refused
MAX_CONNECTIONS = 1024


class _Closing(Exception):
    """The request is not this protocol, or a fault was injected: drop the connection."""


class _Connection:
    """One worker connection and its reusable receive and send buffers."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.hello = False
        self._recv = np.empty(0, np.uint8)
        self._send = np.empty(0, np.uint8)
        self._cursor = 0
        self._wanted = 0

    def payload(self, nbytes: int) -> memoryview:
        """Receive ``nbytes`` into the connection's buffer (grown only when too small)."""
        if nbytes > self._recv.size:
            self._recv = np.empty(nbytes, np.uint8)
        view = memoryview(self._recv)[:nbytes]
        recv_into_exact(self.sock, view)
        return view.toreadonly()

    def slots(self) -> Callable:
        """A pull's ``into``: consecutive slots of the send buffer (fresh arrays past its end)."""
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

    def grow(self) -> None:
        """After a pull that did not fit the send buffer: make it big enough for next time."""
        if self._wanted > self._send.size:
            self._send = np.empty(self._wanted, np.uint8)


class StreamPlane(SocketServer):
    """Serves a :class:`Shard` to workers on other machines over raw TCP.

    The constructor does no I/O. ``host`` is the gRPC server's host, ``port`` 0 lets the
    OS choose (:attr:`port` tells which after :meth:`start`). With a non-empty ``token``
    every connection must present it first. ``max_message_bytes`` bounds a request's
    header plus payload. ``drop_reply`` (tests: ``ps.serving.faults``) is asked after each push
    was handled; True loses its reply (the connection closes).
    """

    thread_prefix = "ps-stream"

    def __init__(self, shard: Shard, host: str, port: int = 0, *, token: str = "",
                 max_message_bytes: int = 64 << 20, drop_reply: Callable[[], bool] | None = None) -> None:
        super().__init__(MAX_CONNECTIONS)
        self.shard = shard
        self.host = host
        self._port = port
        self._token = token.encode()
        self._max_message = max_message_bytes
        self._drop_reply = drop_reply

    def __repr__(self) -> str:  # never shows the token
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
        sock = conn.sock
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            while not self.stopped:
                sock.settimeout(None if conn.hello else IO_TIMEOUT_S)  # idle between steps: no bound
                head = recv_frame(sock, LOCAL_REQUEST_SIZE)
                if head is None:
                    return
                sock.settimeout(IO_TIMEOUT_S)
                kind, _, length, timeout_s, _, payload_bytes, _, _ = unpack_local_request(head)
                if length > min(LOCAL_MAX_MESSAGE, self._max_message):
                    return  # not our protocol: drop the connection
                if (kind == STREAM_HELLO) == conn.hello:
                    return  # a request before the hello, or a second hello
                if kind not in (STREAM_HELLO, STREAM_PUSH, STREAM_PULL, STREAM_PUSH_PULL):
                    return
                if payload_bytes and kind not in (STREAM_PUSH, STREAM_PUSH_PULL):
                    return
                if length + payload_bytes > self._max_message:
                    send_all(sock, [pack_local_reply(kind, (
                        f"request of {length + payload_bytes} bytes exceeds the server's limit of "
                        f"{self._max_message}").encode(), grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])])
                    return
                body = recv_frame(sock, length) if length else b""
                if body is None:
                    return
                if kind == STREAM_HELLO:
                    if not self._hello(conn, body):
                        return
                    continue
                payload = conn.payload(payload_bytes) if payload_bytes else memoryview(b"")
                send_all(sock, self._handle(conn, kind, body, payload, timeout_s))
        except _Closing:
            return

    def _hello(self, conn: _Connection, body: bytes) -> bool:
        """Check the token and the server id; reply. False: the connection must close."""
        try:
            token, server_id = split_token(body)
        except ValueError:  # UnicodeDecodeError too
            return False
        if self._token and not hmac.compare_digest(token.encode(), self._token):
            log.warning("refused a stream data-plane connection: missing or wrong token")
            send_all(conn.sock, [pack_local_reply(STREAM_HELLO, b"missing or wrong token",
                                                  grpc.StatusCode.UNAUTHENTICATED.value[0])])
            return False
        if server_id.decode(errors="replace") != self.shard.server_id:
            send_all(conn.sock, [pack_local_reply(STREAM_HELLO, b"this is not the server the worker registered with",
                                                  grpc.StatusCode.FAILED_PRECONDITION.value[0])])
            return False
        conn.hello = True
        send_all(conn.sock, [pack_local_reply(STREAM_HELLO, self.shard.server_id.encode())])
        return True

    def _handle(self, conn: _Connection, kind: int, body: bytes, payload: memoryview,
                timeout_s: float) -> list[Any]:
        """The reply's buffers for one request: the frame and header, then the pulled blocks."""
        shard = self.shard
        try:
            timeout_s = max(0.0, min(timeout_s, 86400.0) - 0.05)
            outcome = version = 0
            if kind in (STREAM_PUSH, STREAM_PUSH_PULL):
                header = ps_pb2.PushHeader.FromString(body)
                result = push_blocks(shard, header, payload, timeout_s)
                outcome, version = OUTCOMES[result.outcome], result.version
                if self._drop_reply is not None and self._drop_reply():
                    log.warning("fault injection: dropping the reply of a push that was handled")
                    raise _Closing
                if kind == STREAM_PUSH:
                    return [pack_local_reply(kind, b"", 0, outcome, version)]
                pull = header.then_pull
            else:
                pull = ps_pb2.PullHeader.FromString(body)
            known = known_if_current(shard, pull)
            if known is None:  # every block: copied once, into the connection's send buffer
                reply, blocks = pull_blocks(shard, pull, timeout_s, None, conn.slots())
                conn.grow()
            else:  # only the blocks that changed, as the bytes the shard copied them into
                reply, blocks = pull_blocks(shard, pull, timeout_s, known)
            if kind == STREAM_PUSH_PULL:
                reply.push_outcome, reply.push_version = outcome, version
            message = reply.SerializeToString()
            return [pack_local_reply(kind, message, 0, outcome, version), *(b.data for b in blocks)]
        except PSError as exc:
            return [pack_local_reply(kind, str(exc).encode(), status_code_of(exc).value[0])]
        except (DecodeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            return [pack_local_reply(kind, f"malformed request: {exc}".encode(),
                                     grpc.StatusCode.INVALID_ARGUMENT.value[0])]
        except _Closing:
            raise
        except Exception:
            log.exception("internal error in stream request kind %d", kind)
            return [pack_local_reply(kind, b"internal error; see the server log", grpc.StatusCode.INTERNAL.value[0])]
