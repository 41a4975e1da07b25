"""The worker's end of the TCP data plane (see :mod:`ps.serving.stream_plane`).

A :class:`StreamChannel` is a set of TCP connections to one shard, one per call the
worker keeps in flight (``slot``), opened on first use; each says hello first (the
shard's id and, when the cluster has one, the shared token). A
:class:`StreamConnection` sends a request's frame and header and then the gradient
blocks with ``sendmsg`` straight from the caller's arrays, and receives pulled blocks
with ``recv_into`` straight into the destination arrays: one kernel copy per side.

A connection whose call failed half-way (timeout, reset, a malformed reply) is closed
and never reused: its byte stream is out of step. Not thread-safe: one per
:class:`~worker.client.client.Client`.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from ps.errors import PSError, UnavailableError, from_status_number
from ps.protocol.sockets import recv_frame, recv_into_exact, send_all
from ps.protocol.wire import STREAM_HELLO
from ps.protocol.wire import LOCAL_MAX_MESSAGE, LOCAL_REPLY_SIZE, pack_local_request, unpack_local_reply, with_token
from worker.planes.channel_slots import SlotChannel


def split_host_port(address: str) -> tuple[str, int] | None:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); None for other targets (``unix:``, ``dns:///``)."""
    if "/" in address or address.startswith("unix"):
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class StreamConnection:
    """One TCP connection to a shard's stream plane. Blocks in every call (bounded).

    The constructor connects (within ``connect_timeout_s``) and says hello. Raises
    OSError when the shard cannot be reached, the shard's PSError (UNAUTHENTICATED for
    a wrong token) when it refuses.
    """

    def __init__(self, host: str, port: int, server_id: str, token: str, connect_timeout_s: float,
                 timeout_s: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=connect_timeout_s)
        self.closed = False
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(pack_local_request(STREAM_HELLO, with_token(token, server_id.encode()), timeout_s))
            self.receive()
        except BaseException:
            self.close()
            raise
        self.sock.settimeout(timeout_s)

    def send(self, kind: int, message: bytes, payload: Sequence[Any], payload_bytes: int, timeout_s: float) -> None:
        """Send one request: frame, ``message``, then ``payload`` (bytes-likes, in order, unjoined).

        ``timeout_s`` is the shard's bound on its own waits; the socket waits 5 s more.
        Raises OSError.
        """
        self.sock.settimeout(timeout_s + 5.0)
        send_all(self.sock, [pack_local_request(kind, message, timeout_s, 0, payload_bytes), *payload])

    def receive(self) -> tuple[bytes, int, int]:
        """The reply's ``(message, push outcome, push version)``; its payload stays to :meth:`read_into`.

        Raises OSError (TimeoutError, ConnectionError) and the shard's error as a PSError.
        """
        head = recv_frame(self.sock, LOCAL_REPLY_SIZE)
        if head is None:
            raise ConnectionError("the shard closed the connection")
        _, status, length, outcome, version = unpack_local_reply(head)
        if length > LOCAL_MAX_MESSAGE:
            raise ConnectionError("malformed reply from the shard")
        body = recv_frame(self.sock, length) if length else b""
        if body is None:
            raise ConnectionError("the shard closed the connection")
        if status:
            raise from_status_number(status, body.decode(errors="replace"))
        return body, outcome, version

    def read_into(self, view: memoryview) -> None:
        """Receive the next ``view.nbytes`` payload bytes into ``view``. Raises OSError."""
        recv_into_exact(self.sock, view)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class StreamChannel(SlotChannel):
    """The TCP data plane to one shard: connections by slot, opened on first use.

    ``timeout_s`` bounds each reply (the client's wait timeout); ``connect_timeout_s``
    each connect and hello. The token is never shown.
    """

    def __init__(self, host: str, port: int, server_id: str, token: str | None, connect_timeout_s: float,
                 timeout_s: float) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.server_id = server_id
        self._token = token or ""
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"StreamChannel({self.address!r})"

    def open(self) -> StreamConnection:
        """Connect and say hello. Blocks. Raises UnavailableError (also when refused)."""
        try:
            return StreamConnection(self.host, self.port, self.server_id, self._token, self.connect_timeout_s,
                                    self.timeout_s)
        except PSError as exc:  # refused (a wrong token, another server on the port): use gRPC
            raise UnavailableError(f"stream plane {self.address} refused the connection: {exc}") from exc
        except OSError as exc:
            raise UnavailableError(f"stream plane {self.address}: {exc}") from exc
