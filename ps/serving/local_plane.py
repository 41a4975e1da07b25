"""The same-host data plane: tensor bytes through shared memory, headers over a unix socket.

gRPC stays the control plane (register, create, status, health) and the path for workers
on other machines. A worker on the same machine may instead move push and pull payloads
through a shared-memory region it creates (a ``memfd``) and hands to the shard over a
unix socket (``SCM_RIGHTS``) together with its layout (where each table's gradient and
weight arrays lie in it: every block sits at its place in its table), and ring the shard
with small frames on that socket
(:mod:`ps.protocol.wire`'s local frame: the protocol's own PushHeader / PullHeader / PushReply /
PullReplyHeader messages behind a fixed struct). Why: on a loopback gRPC call in Python
each round trip costs ~0.7 ms and every payload byte is copied about six times; here a
round trip costs tens of microseconds; a gradient is read by the shard where the worker
wrote it (or computed it: ``Client.buffers``) and new weights are copied once, by the
shard, into the worker's memory.

Only a process that can reach the shard's abstract unix socket (same machine, same network
namespace), runs as the same user (``SO_PEERCRED``) and can pass it a file descriptor can
use this path, so "same host" is checked by construction; a worker that cannot falls back
to gRPC. Servers with a token or TLS do not offer it (``ps.serving.server``). Every request
goes to the :class:`~ps.serving.handler.ShardHandler` that gRPC and the TCP plane call too:
the same validation, exactly-once by ``(worker, seq)``, status codes and reasons (an error
reply's ``reason`` field), metrics and injected faults (a lost reply closes the connection).

:class:`LocalPlane` serves one thread per connection (a worker opens one connection per
call it keeps in flight; :class:`~ps.serving.socket_server.SocketServer`); ``start()`` binds,
``stop()`` closes everything. Thread-safe.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import socket
import struct
import uuid
from collections.abc import Callable

import numpy as np

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.protocol.sockets import recv_exact, send_all
from ps.protocol.wire import (
    LOCAL_ATTACH,
    LOCAL_FLAG_KNOWN,
    LOCAL_HELLO,
    LOCAL_MAX_MESSAGE,
    LOCAL_PULL,
    LOCAL_PUSH,
    LOCAL_PUSH_PULL,
    LOCAL_REQUEST_SIZE,
    np_dtype,
    pack_local_reply,
    split_token,
    unpack_local_request,
    with_token,
)
from ps.serving.handler import Failure, Payload, ShardHandler, failure_of
from ps.serving.socket_server import SocketServer, failure_frame
from ps.shard.shard import Shard
from ps.tables.dense_table import DenseTable
from ps.tables.spec import TableSpec

log = logging.getLogger(__name__)

#: the largest shared-memory region one connection may attach (bytes)
MAX_REGION_BYTES = 1 << 36


class _Connection(Payload):
    """One worker connection: its attached region and the region's layout. Its tensors are
    the region's: gradients are read and pulled blocks written in place."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.region: mmap.mmap | None = None
        self.view: memoryview | None = None
        self.readonly: memoryview | None = None  # the same memory, for gradients
        self.layout: dict[str, tuple[int, int, int]] = {}  # table -> (push offset, pull offset, bytes)

    def attach(self, fd: int, size: int, layout_json: bytes) -> None:
        try:
            if not 0 < size <= MAX_REGION_BYTES or os.fstat(fd).st_size < size:
                raise InvalidArgumentError(f"shared-memory region of {size} bytes is not usable")
            layout = {}
            for name, entry in json.loads(layout_json.decode())["tables"].items():
                push_off, pull_off, nbytes = (int(x) for x in entry)
                if min(push_off, pull_off, nbytes) < 0 or max(push_off, pull_off) + nbytes > size:
                    raise InvalidArgumentError(f"layout of {name!r} lies outside the region")
                layout[str(name)] = (push_off, pull_off, nbytes)
            region = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidArgumentError(f"malformed region layout: {exc}") from None
        finally:
            os.close(fd)
        self.release()
        self.region, self.view, self.layout = region, memoryview(region), layout
        self.readonly = self.view.toreadonly()

    def _place(self, spec: TableSpec, block: int, count: int, dtype: np.dtype, push: bool) -> np.ndarray:
        """The array of block ``block`` of ``spec``'s table in the push or pull area (checked)."""
        return np.frombuffer(self.readonly if push else self.view, dtype=dtype, count=count,
                             offset=self._offset(spec, block, count, dtype.itemsize, push))

    def _offset(self, spec: TableSpec, block: int, count: int, itemsize: int, push: bool) -> int:
        """The byte offset of ``count`` elements from block ``block`` of ``spec``'s table in the
        push or pull area. Raises InvalidArgumentError when the worker's layout has no room."""
        entry = self.layout.get(spec.name)
        if self.view is None or entry is None:
            raise InvalidArgumentError(f"table {spec.name!r} has no place in the worker's shared memory")
        start = block * spec.block_elems * itemsize
        if not 0 <= block < spec.num_blocks or count < 0 or start + count * itemsize > entry[2]:
            raise InvalidArgumentError(f"{spec.name}[block {block}] lies outside its place in shared memory")
        return (entry[0] if push else entry[1]) + start

    def grads(self, shard: Shard, header: ps_pb2.PushHeader) -> list[np.ndarray]:
        # the table first: an unknown one is NOT_FOUND, as on every plane
        return [self._place(shard.table(r.table).spec, r.block, r.count, np_dtype(r.dtype), True)
                for r in header.blocks]

    def slots(self, shard: Shard, tables: list[DenseTable] | None, known) -> Callable:
        for t in tables or ():  # each whole table fits its place: checked before anything is applied
            self._offset(t.spec, 0, t.spec.size, t.itemsize, False)
        return lambda name, b: self._place(shard.table(name).spec, b.index, b.values.size, b.values.dtype, False)

    def release(self) -> None:
        for view in (self.readonly, self.view):
            if view is not None:
                try:
                    view.release()
                except BufferError:  # an array of a call in flight still views it
                    pass
        if self.region is not None:
            try:
                self.region.close()
            except BufferError:  # arrays of a call in flight still view it: GC unmaps it
                pass
        self.region = self.view = self.readonly = None


_METHODS = {LOCAL_PUSH: "Push", LOCAL_PULL: "Pull", LOCAL_PUSH_PULL: "PushPull"}


class LocalPlane(SocketServer):
    """Serves a shard's :class:`ShardHandler` to same-host workers over a unix socket and shared memory.

    The constructor does no I/O. ``address`` (after :meth:`start`) is an abstract unix
    socket name, ``"unix-abstract:NAME"``; workers learn it from the Status call.
    """

    thread_prefix = "ps-local"

    def __init__(self, handler: ShardHandler) -> None:
        super().__init__()
        self.handler = handler
        self._name = f"grpc-ps-{handler.shard.server_id}-{uuid.uuid4().hex[:8]}"

    @property
    def address(self) -> str:
        return f"unix-abstract:{self._name}"

    def listen(self) -> socket.socket:
        """The abstract unix socket. Raises OSError when unix sockets are unavailable."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind("\0" + self._name)
        listener.listen(64)
        return listener

    def admit(self, sock: socket.socket) -> _Connection | None:
        if not _same_user(sock):
            log.warning("refused a data-plane connection from another user")
            return None
        return _Connection(sock)

    def release(self, conn: _Connection) -> None:
        conn.release()

    def serve(self, conn: _Connection) -> None:
        sock = conn.sock
        while not self.stopped:
            msg, fds, _, _ = sock.recvmsg(LOCAL_REQUEST_SIZE, socket.CMSG_SPACE(4))
            if not msg:
                return
            fd = _fd_from(fds)
            try:
                if len(msg) < LOCAL_REQUEST_SIZE:
                    msg += recv_exact(sock, LOCAL_REQUEST_SIZE - len(msg))
                kind, flags, length, timeout_s, _, size, _, _ = unpack_local_request(msg)
                if length > LOCAL_MAX_MESSAGE:
                    return  # not our protocol: drop the connection
                body = recv_exact(sock, length) if length else b""
                if kind == LOCAL_ATTACH:
                    try:
                        if fd is None:
                            raise InvalidArgumentError("attach without a file descriptor")
                        fd, passed = None, fd
                        conn.attach(passed, size, body)  # closes the descriptor
                        reply = pack_local_reply(kind, b"")
                    except Exception as exc:
                        reply = failure_frame(kind, failure_of(exc, "attach"))
                else:
                    reply = self._handle(conn, kind, flags, body, timeout_s)
            finally:
                if fd is not None:
                    os.close(fd)
            if reply is None:
                return  # a lost reply (fault injection): the connection closes
            send_all(sock, [reply])

    def _handle(self, conn: _Connection, kind: int, flags: int, body: bytes, timeout_s: float) -> bytes | None:
        """The reply frame of one request (None: lose the reply)."""
        handler = self.handler
        if kind == LOCAL_HELLO:
            failure = handler.hello(None, body)
            return failure_frame(kind, failure) if failure else pack_local_reply(kind, body)
        method = _METHODS.get(kind)
        if method is None:
            unknown = InvalidArgumentError(f"unknown local request kind {kind}")
            return failure_frame(kind, failure_of(unknown, "request"))
        known_for: str | None = ""
        message: bytes | Exception = body
        if kind != LOCAL_PUSH:
            try:
                their_token, message = split_token(body)
                known_for = their_token if flags & LOCAL_FLAG_KNOWN else ""
            except ValueError as exc:  # UnicodeDecodeError too
                message = InvalidArgumentError(f"malformed {method} request: {exc}")
        reply = handler.data(method, message, conn, timeout_s, known_for)
        if isinstance(reply, Failure):
            return None if reply.lost else failure_frame(kind, reply)
        if reply.header is None:
            push = ps_pb2.PushReply(outcome=reply.outcome, version=reply.version)
            return pack_local_reply(kind, push.SerializeToString(), 0, reply.outcome, reply.version)
        message_out = with_token(reply.header.state_token, reply.header.SerializeToString())
        return pack_local_reply(kind, message_out, 0, reply.outcome, reply.version)


def _same_user(sock: socket.socket) -> bool:
    """Whether the peer runs as this process's user (or root): abstract sockets have no file modes."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return True  # no peer credentials on this platform: as open as the gRPC port
    _, uid, _ = struct.unpack("3i", raw)
    return uid in (os.getuid(), 0)


def _fd_from(ancillary) -> int | None:
    """The first file descriptor passed with SCM_RIGHTS (extra ones are closed)."""
    fd = None
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for i in range(0, len(data) - len(data) % 4, 4):
                got = int.from_bytes(data[i : i + 4], "little")
                if fd is None:
                    fd = got
                else:
                    os.close(got)
    return fd
