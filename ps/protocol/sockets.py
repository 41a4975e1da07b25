"""Framing helpers for the data planes' sockets, used by servers and workers alike.

:func:`recv_exact`, :func:`recv_into_exact` and :func:`recv_frame` read exactly so many
bytes; :func:`send_all` sends several buffers with ``sendmsg`` without joining them. They
block up to the socket's timeout. Pure functions of their socket; thread-safe as the
socket is (one caller per socket at a time).
"""

from __future__ import annotations

import socket
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
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("peer closed the connection")
        got += k


def recv_frame(sock: socket.socket, n: int) -> bytes | None:
    """Exactly ``n`` bytes, or None when the peer closed cleanly before the first byte."""
    buf = bytearray(n)
    view = memoryview(buf)
    k = sock.recv_into(view)
    if not k:
        return None
    if k < n:
        recv_into_exact(sock, view[k:])
    return bytes(buf)


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
        sent = sock.sendmsg(views[i : i + _IOV_MAX])
        while sent:
            n = views[i].nbytes
            if sent >= n:
                sent -= n
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0
