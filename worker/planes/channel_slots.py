"""``SlotChannel``: a shard's data-plane connections by slot, one per call kept in flight."""

from __future__ import annotations

import socket

from ps.errors import PSError, UnavailableError
from ps.protocol.wire import LOCAL_HELLO
from worker.planes.frame_connection import FrameConnection


class SlotChannel:
    """Connections by slot to the data plane of one shard at ``address``, opened on first use
    and again after one closed; each says ``hello`` first (within ``hello_timeout_s``) and
    then waits up to ``timeout_s`` for a reply. The same-host plane and the TCP plane both
    keep a few and reuse them step after step; a subclass says how a socket is made
    (:meth:`connect`). The constructor does no I/O. Not thread-safe (a Client is one worker).
    """

    #: the connections it makes
    connection_type = FrameConnection

    def __init__(self, address: str, hello: bytes, hello_timeout_s: float, timeout_s: float) -> None:
        self.address = address
        self._hello = hello
        self._timeouts = (hello_timeout_s, timeout_s)
        self._slots: dict[int, FrameConnection] = {}

    def __repr__(self) -> str:  # never shows the hello (it may hold the token)
        return f"{type(self).__name__}({self.address!r})"

    def connect(self) -> socket.socket:
        """A socket connected to the shard (within the hello timeout). Raises OSError."""
        raise NotImplementedError

    def open(self) -> FrameConnection:
        """A new connection the shard accepted. Blocks (bounded). Raises UnavailableError,
        also when the shard refuses it (a wrong token, another server): use gRPC then."""
        hello_timeout_s, timeout_s = self._timeouts
        try:
            conn = self.connection_type(self.connect(), self.address)
            try:
                conn.send(LOCAL_HELLO, self._hello, hello_timeout_s)
                conn.receive()
                conn.sock.settimeout(timeout_s)
            except BaseException:
                conn.close()
                raise
        except (PSError, OSError) as exc:
            raise UnavailableError(f"data plane {self.address}: {exc}") from exc
        return conn

    def connection(self, slot: int) -> FrameConnection:
        """The open connection for ``slot``. Blocks to connect. Raises UnavailableError."""
        conn = self._slots.get(slot)
        if conn is None or conn.closed:
            conn = self._slots[slot] = self.open()
        return conn

    def close(self) -> None:
        """Close every connection. Does not block or raise."""
        for conn in self._slots.values():
            conn.close()
        self._slots.clear()
