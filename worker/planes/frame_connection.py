"""``FrameConnection``: one socket to a shard's data plane, speaking the frames of :mod:`ps.protocol.wire`."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from ps.errors import DeadlineExceededError, PSError, UnavailableError
from ps.protocol.sockets import FrameReader, send_all, set_io_timeout
from ps.protocol.wire import (
    LOCAL_MAX_MESSAGE,
    LOCAL_REPLY_SIZE,
    local_reply_reason,
    pack_local_request,
    unpack_local_reply,
)
from worker.client.transport import status_error


class FrameConnection:
    """A connected socket to the data plane at ``address``; the constructor does no I/O.

    Both data planes (shared memory over a unix socket, and TCP) send requests and read
    replies this one way, and their failures become :mod:`ps.errors` exceptions here: an
    error reply becomes the shard's error, with the reason its frame carries
    (:func:`worker.client.transport.status_error`); a broken or timed-out socket an
    UnavailableError or DeadlineExceededError, and the connection closes for good (its
    byte stream is out of step). Not thread-safe: one call at a time.
    """

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.closed = False
        self._reader = FrameReader(sock)
        self._bound = -1.0  # the socket's kernel bound on each wait (s); -1: not set yet

    def _bound_waits(self, seconds: float) -> None:
        """Bound each of the socket's waits to between ``seconds`` and ``seconds`` + 1 (set in
        the kernel only when the bound in place is outside that: not on every call)."""
        if not seconds <= self._bound <= seconds + 1.0:
            set_io_timeout(self.sock, seconds)
            self._bound = seconds

    def _failed(self, exc: OSError) -> PSError:
        """``exc`` as the transient error it means; the connection is closed (out of step)."""
        self.close()
        kind = DeadlineExceededError if isinstance(exc, TimeoutError) else UnavailableError
        return kind(f"data plane {self.address}: {exc}")

    def send(self, kind: int, message: bytes, timeout_s: float, *, flags: int = 0, payload: Sequence[Any] = (),
             payload_bytes: int = 0, fds: Sequence[int] = ()) -> None:
        """Send one request: its frame, ``message``, then ``payload`` (bytes-likes, unjoined);
        ``fds`` travel beside it (SCM_RIGHTS). ``timeout_s`` is the shard's bound on its own
        waits; the socket waits 5 s more. Blocks until the kernel has it. Raises
        UnavailableError, DeadlineExceededError."""
        frame = pack_local_request(kind, message, timeout_s, 0, payload_bytes, flags=flags)
        sock = self.sock
        try:
            self._bound_waits(timeout_s + 5.0)
            if fds:
                sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        b"".join(fd.to_bytes(4, "little") for fd in fds))])
            if payload:
                send_all(sock, [frame, *payload] if not fds else payload)
            elif not fds:
                sock.sendall(frame)
        except OSError as exc:
            raise self._failed(exc) from exc

    def receive(self) -> tuple[bytes, int, int]:
        """The reply's ``(message, push outcome, push version)``; a payload after it stays for
        :meth:`read_into`. Blocks (the socket's timeout). Raises the shard's error as a
        PSError, UnavailableError, DeadlineExceededError."""
        reader = self._reader
        try:
            head = reader.read(LOCAL_REPLY_SIZE)
            if head is None:
                raise ConnectionError("the shard closed the connection")
            head = bytes(head)
            _, status, length, outcome, version = unpack_local_reply(head)
            if not 0 <= length <= LOCAL_MAX_MESSAGE:
                raise ConnectionError("the shard sent a malformed reply")
            body = reader.read(length) if length else b""
            if body is None:
                raise ConnectionError("the shard closed the connection")
            body = bytes(body)
        except OSError as exc:
            raise self._failed(exc) from exc
        if status:
            raise status_error(status, body.decode(errors="replace"), local_reply_reason(head))
        return body, outcome, version

    def read_into(self, view: memoryview) -> None:
        """Receive the next ``view.nbytes`` payload bytes into ``view``. Blocks. Raises
        UnavailableError, DeadlineExceededError."""
        try:
            self._reader.read_into(view)
        except OSError as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        """Close the socket. Idempotent; does not block or raise."""
        self.closed = True
        self.sock.close()
