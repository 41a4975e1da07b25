"""``SlotChannel``: a shard's data-plane connections by slot; ``SlotPlane``: a plane made of them."""

from __future__ import annotations

import logging
import socket

from ps._proto import ps_pb2
from ps.errors import PSError, UnavailableError
from ps.protocol.wire import LOCAL_HELLO
from worker.planes.frame_connection import FrameConnection
from worker.planes.plane import DataPlane

log = logging.getLogger(__name__)


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
        hello_timeout_s = self._timeouts[0]  # each call bounds its own waits after that
        try:
            conn = self.connection_type(self.connect(), self.address)
            try:
                conn.send(LOCAL_HELLO, self._hello, hello_timeout_s)
                conn.receive()
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


class SlotPlane(DataPlane):
    """A data plane with a :class:`SlotChannel` to each shard it serves (:meth:`offer`)."""

    def __init__(self) -> None:
        self._channels: dict[int, SlotChannel] = {}

    def channel(self, address: str, status: ps_pb2.StatusReply) -> SlotChannel | None:
        """The channel to the shard at ``address`` if its Status offers this plane. No I/O."""
        raise NotImplementedError

    def offer(self, shard: int, address: str, status: ps_pb2.StatusReply) -> bool:
        """Serve ``shard`` if its Status offers this plane and a connection answers. Blocks for
        one connect and hello (bounded). Never raises."""
        channel = self.channel(address, status)
        if channel is None:
            return False
        try:
            channel.connection(0)  # proves the shard is there and answers
        except PSError as exc:
            log.info("%s: no %s data plane (%s); using gRPC", address, self.name, exc)
            channel.close()
            return False
        self._channels[shard] = channel
        return True

    def drop(self, shard: int) -> None:
        channel = self._channels.pop(shard, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
