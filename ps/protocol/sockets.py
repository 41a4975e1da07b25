"""Framing helpers for the data planes' sockets, used by servers and workers alike.

:func:`recv_exact` and :func:`recv_into_exact` read exactly so many bytes; :func:`send_all`
sends several buffers with ``sendmsg`` without joining them. They block up to the socket's
timeout. Pure functions of their socket; thread-safe as the socket is (one caller per
socket at a time).

:class:`FrameReader` reads a socket's frames through a small buffer it reuses: a small
request or reply (frame, header and payload) arrives in one ``recv_into`` instead of one
per piece. :func:`set_io_timeout` bounds a blocking socket's waits in the kernel
(``SO_RCVTIMEO``/``SO_SNDTIMEO``): Python's own socket timeout costs a ``poll`` before
every ``recv`` and ``send``, and an ``ioctl`` whenever it is set.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from typing import Any

_IOV_MAX = 512  # buffers per sendmsg call (Linux allows 1024)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes. Blocks (the socket's timeout). Raises ConnectionError when the
    peer closes first, OSError (TimeoutError) otherwise."""
    buf = bytearray(n)
    recv_into_exact(sock, memoryview(buf))
    return bytes(buf)


def recv_into_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` (a byte memoryview) from ``sock``. Blocks (the socket's timeout).

    Raises ConnectionError when the peer closes first, OSError (TimeoutError) otherwise.
    """
    got, n = 0, view.nbytes
    while got < n:
        k = _recv_into(sock, view[got:])
        if not k:
            raise ConnectionError("peer closed the connection")
        got += k


def send_all(sock: socket.socket, buffers: Sequence[Any]) -> None:
    """Send every buffer (bytes-likes, contiguous arrays) in order with ``sendmsg``: no joining copy.

    Blocks (the socket's timeout). Raises OSError.
    """
    views = []
    for b in buffers:
        v = memoryview(b)
        if v.nbytes:
            views.append(v.cast("B") if v.format != "B" or v.ndim != 1 else v)
    i = 0
    while i < len(views):
        try:
            sent = sock.sendmsg(views[i : i + _IOV_MAX])
        except BlockingIOError as exc:  # SO_SNDTIMEO ran out (EAGAIN)
            raise TimeoutError(f"the peer took nothing within the socket's bound: {exc}") from None
        while sent:
            n = views[i].nbytes
            if sent >= n:
                sent -= n
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0


#: bytes a FrameReader reads ahead: a small step's whole message in one recv
READ_AHEAD = 64 << 10
#: Measured and not taken: a fixed 4 MiB TCP send buffer (SO_SNDBUF; Linux starts at 16 KiB
#: and grows it). bench.step_cost showed ~15% less CPU per 1 MiB step, but the step rate in
#: bench.peers.project, interleaved, was not better at 1 MiB and worse at 16 MiB (1.07-1.44
#: against 1.38-1.66 GB/s): data waiting longer in the socket is colder when read.


def tune_tcp(sock: socket.socket) -> None:
    """Set a data-plane TCP socket's options (no Nagle delay; buffers auto-tuned). Raises OSError."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_io_timeout(sock: socket.socket, seconds: float | None, *, recv: bool = True, send: bool = True) -> None:
    """Bound each blocking ``recv`` (with ``recv``) and ``send`` (with ``send``) of ``sock`` to
    ``seconds`` in the kernel (None or 0: no bound). The socket is put in blocking mode (no
    Python timeout); a wait that runs out raises TimeoutError from :class:`FrameReader`,
    :func:`recv_into_exact` and :func:`send_all`. Raises OSError."""
    if sock.gettimeout() is not None:
        sock.settimeout(None)
    whole = int(seconds or 0)
    tv = struct.pack("ll", whole, int(((seconds or 0) - whole) * 1e6))
    if recv:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    if send:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


class FrameReader:
    """Reads ``sock``'s byte stream frame by frame through a reused buffer of ``READ_AHEAD`` bytes.

    :meth:`read` returns the next so many bytes, :meth:`read_into` puts the next bytes
    into the caller's memory (what was read ahead is copied, the rest is received straight
    into it). Bytes read ahead of one frame stay for the next. Every method blocks up to
    the socket's bound (:func:`set_io_timeout` or its Python timeout) and raises
    ConnectionError when the peer closes mid-frame, TimeoutError when the bound runs out,
    OSError otherwise. Not thread-safe (one reader per socket).
    """

    __slots__ = ("sock", "_buf", "_view", "_start", "_end")

    def __init__(self, sock: socket.socket, size: int = READ_AHEAD) -> None:
        self.sock = sock
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = self._end = 0

    @property
    def buffered(self) -> int:
        """Bytes read ahead and not consumed yet."""
        return self._end - self._start

    def _fill(self, need: int) -> bool:
        """Read until ``need`` bytes are buffered (``need`` <= the buffer). False when the peer
        closed cleanly with nothing buffered."""
        start, end = self._start, self._end
        if end + need - (end - start) > len(self._buf):  # move what is left to the front
            self._buf[: end - start] = self._view[start:end]
            self._start, self._end = start, end = 0, end - start
        while end - start < need:
            k = _recv_into(self.sock, self._view[end:])
            if not k:
                if end == start:
                    return False
                raise ConnectionError("peer closed the connection")
            end += k
            self._end = end
        return True

    def read(self, n: int) -> memoryview | None:
        """The next ``n`` bytes as a view valid until the next call, or None when the peer
        closed cleanly before the first byte. Frames longer than the buffer are received
        into a new buffer."""
        if n > len(self._buf):
            if not self.buffered and not self._fill(1):
                return None
            out = memoryview(bytearray(n))
            self.read_into(out)
            return out
        if self._end - self._start < n and not self._fill(n):
            return None
        start = self._start
        self._start = start + n
        return self._view[start : start + n]

    def read_into(self, view: memoryview) -> None:
        """Fill ``view`` (a byte memoryview) with the next bytes of the stream."""
        n = view.nbytes
        have = self._end - self._start
        if have:
            take = min(have, n)
            view[:take] = self._view[self._start : self._start + take]
            self._start += take
            if take == n:
                return
            view = view[take:]
        if view.nbytes < len(self._buf) // 4:  # a small rest: read ahead with it
            if not self._fill(view.nbytes):
                raise ConnectionError("peer closed the connection")
            self.read_into(view)
            return
        recv_into_exact(self.sock, view)


def _recv_into(sock: socket.socket, view: memoryview) -> int:
    try:
        return sock.recv_into(view)
    except BlockingIOError as exc:  # SO_RCVTIMEO ran out (EAGAIN)
        raise TimeoutError(f"no data within the socket's bound: {exc}") from None
