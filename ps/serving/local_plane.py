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
to gRPC. Servers with a token or TLS do not offer it (``ps.serving.server``). The semantics are the gRPC
service's: the same :class:`~ps.shard.shard.Shard` calls, exactly-once by ``(worker, seq)``,
the same validation and status codes.

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

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError, PSError, status_code_of
from ps.serving.service import OUTCOMES, known_token, pull_blocks
from ps.shard.shard import Shard
from ps.protocol.sockets import recv_exact
from ps.serving.socket_server import SocketServer
from ps.protocol.wire import (
    LOCAL_ATTACH,
    LOCAL_FLAG_KNOWN,
    LOCAL_HELLO,
    LOCAL_MAX_MESSAGE,
    LOCAL_PULL,
    LOCAL_PUSH,
    LOCAL_PUSH_PULL,
    LOCAL_REQUEST_SIZE,
    pack_local_reply,
    np_dtype,
    split_token,
    unpack_local_request,
    with_token,
)

log = logging.getLogger(__name__)

#: the largest shared-memory region one connection may attach (bytes)
MAX_REGION_BYTES = 1 << 36


class _Connection:
    """One worker connection: its attached region, the region's layout, and the state epoch."""

    def __init__(self, sock: socket.socket) -> None:
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

    def _place(self, shard: Shard, name: str, block: int, count: int, dtype, push: bool) -> np.ndarray:
        """The array of block ``block`` of ``name`` in the push or pull area (checked)."""
        if self.view is None:
            raise InvalidArgumentError("no shared-memory region attached")
        entry = self.layout.get(name)
        if entry is None:
            raise InvalidArgumentError(f"table {name!r} has no place in the worker's shared memory")
        start = block * shard.table(name).spec.block_elems * dtype.itemsize
        if block < 0 or count < 0 or start + count * dtype.itemsize > entry[2]:
            raise InvalidArgumentError(f"{name}[block {block}] lies outside its place in shared memory")
        return np.frombuffer(self.readonly if push else self.view, dtype=dtype, count=count,
                             offset=(entry[0] if push else entry[1]) + start)

    def grads(self, shard: Shard, header: ps_pb2.PushHeader) -> list[np.ndarray]:
        return [self._place(shard, ref.table, ref.block, ref.count, np_dtype(ref.dtype), True) for ref in header.blocks]

    def slot(self, shard: Shard):
        def into(name: str, block) -> np.ndarray:
            return self._place(shard, name, block.index, block.values.size, block.values.dtype, False)

        return into

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


class LocalPlane(SocketServer):
    """Serves a :class:`Shard` to same-host workers over a unix socket and shared memory.

    The constructor does no I/O. ``address`` (after :meth:`start`) is an abstract unix
    socket name, ``"unix-abstract:NAME"``; workers learn it from the Status call.
    """

    thread_prefix = "ps-local"

    def __init__(self, shard: Shard) -> None:
        super().__init__()
        self.shard = shard
        self._name = f"grpc-ps-{shard.server_id}-{uuid.uuid4().hex[:8]}"

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
            if len(msg) < LOCAL_REQUEST_SIZE:
                msg += recv_exact(sock, LOCAL_REQUEST_SIZE - len(msg))
            fd = _fd_from(fds)
            kind, flags, length, timeout_s, po, pb, qo, qc = unpack_local_request(msg)
            if length > LOCAL_MAX_MESSAGE:
                return  # not our protocol: drop the connection
            body = recv_exact(sock, length) if length else b""
            sock.sendall(self._handle(conn, kind, flags, body, timeout_s, po, pb, qo, qc, fd))

    def _handle(self, conn: _Connection, kind: int, flags: int, body: bytes, timeout_s: float,
                po: int, pb: int, qo: int, qc: int, fd: int | None) -> bytes:
        shard = self.shard
        try:
            if kind == LOCAL_HELLO:
                if body.decode() != shard.server_id:
                    raise InvalidArgumentError("this is not the server the worker registered with")
                return pack_local_reply(kind, shard.server_id.encode())
            if kind == LOCAL_ATTACH:
                if fd is None:
                    raise InvalidArgumentError("attach without a file descriptor")
                fd, passed = None, fd
                conn.attach(passed, pb, body)
                return pack_local_reply(kind, b"")
            timeout_s = max(0.0, min(timeout_s, 86400.0) - 0.05)
            their_token = ""
            if kind in (LOCAL_PULL, LOCAL_PUSH_PULL):
                their_token, body = split_token(body)
            if kind == LOCAL_PUSH or kind == LOCAL_PUSH_PULL:
                header = ps_pb2.PushHeader.FromString(body)
                grads = conn.grads(shard, header)
                result = shard.push(header.worker_id, header.seq, header.step, header.part, max(1, header.num_parts),
                                    [(ref.table, ref.block) for ref in header.blocks], grads, timeout_s,
                                    header.session)
                outcome, version = OUTCOMES[result.outcome], result.version
                if kind == LOCAL_PUSH:
                    reply = ps_pb2.PushReply(outcome=outcome, version=version)
                    return pack_local_reply(kind, reply.SerializeToString(), 0, outcome, version)
                pull = header.then_pull
            elif kind == LOCAL_PULL:
                pull, outcome, version = ps_pb2.PullHeader.FromString(body), 0, 0
            else:
                raise InvalidArgumentError(f"unknown local request kind {kind}")
            known = None
            if flags & LOCAL_FLAG_KNOWN and pull.known and their_token == known_token(shard):
                known = {(r.table, r.block): r.version for r in pull.known}
            reply_header, _ = pull_blocks(shard, pull, timeout_s, known, conn.slot(shard))
            token = reply_header.state_token  # the token the versions in the reply belong to
            return pack_local_reply(kind, with_token(token, reply_header.SerializeToString()), 0, outcome, version)
        except PSError as exc:
            return pack_local_reply(kind, str(exc).encode(), status_code_of(exc).value[0])
        except (DecodeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            return pack_local_reply(kind, f"malformed request: {exc}".encode(),
                                    grpc.StatusCode.INVALID_ARGUMENT.value[0])
        except Exception:
            log.exception("internal error in local request kind %d", kind)
            return pack_local_reply(kind, b"internal error; see the server log", grpc.StatusCode.INTERNAL.value[0])
        finally:
            if fd is not None:
                os.close(fd)


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
