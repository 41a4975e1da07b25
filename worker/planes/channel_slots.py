"""``SlotChannel``: a shard's data-plane connections by slot, one per call kept in flight.

The same-host plane (:mod:`worker.planes.local_plane`) and the TCP plane
(:mod:`worker.planes.stream_plane`) both keep a few connections to one shard and reuse them
step after step; a subclass says how one is opened (:meth:`SlotChannel.open`). Not
thread-safe (a Client is one worker).
"""

from __future__ import annotations


class SlotChannel:
    """Connections by slot, opened on first use and again after one closed."""

    def __init__(self) -> None:
        self._slots: dict = {}

    def open(self):
        """A new connection (with ``close()`` and, optionally, ``closed``). Raises UnavailableError."""
        raise NotImplementedError

    def connection(self, slot: int):
        """The open connection for ``slot``. Blocks to connect. Raises UnavailableError."""
        conn = self._slots.get(slot)
        if conn is None or getattr(conn, "closed", False):
            conn = self._slots[slot] = self.open()
        return conn

    def close(self) -> None:
        """Close every connection. Does not block or raise."""
        for conn in self._slots.values():
            conn.close()
        self._slots.clear()
