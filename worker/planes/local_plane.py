"""The worker's end of the same-host data plane (see :mod:`ps.serving.local_plane`).

A :class:`LocalRegion` is one shared-memory region (a ``memfd``) per worker. For every
table it uses it holds two flat arrays of the table's size: the *push area* (gradients
the shards read) and the *pull area* (weights the shards write). Every block sits at its
own place in its table, so shards write and read blocks in place, in parallel, and a
table in the region is an ordinary NumPy array: :meth:`~worker.client.client.Client.buffers`
hands these arrays to the user, and then a step copies nothing on the worker side. The
region is reused every step (its pages stay warm) and grows (a new region) when a step
names a table it does not hold yet.

Because the pull area keeps what the shards last wrote, the worker knows which block
versions it holds there and names them in the next pull: a shard copies only blocks that
changed. The arrays of the pull area that the user sees are read-only.

A :class:`LocalChannel` is a set of unix-socket connections to one shard, one per call
the worker keeps in flight (``slot``); each attaches the current region. After a call
fails half-way (timeout, broken socket) the worker stops using the region for good (see
``worker.planes.local_step.abandon_region``), so a late write by a shard can never land in memory it reads.
Not thread-safe: one per :class:`~worker.client.client.Client`.
"""

from __future__ import annotations

import json
import mmap
import os
import socket

import numpy as np

from ps.errors import PSError, UnavailableError, from_status_number
from ps.protocol.sockets import recv_exact
from ps.tables.spec import TableSpec
from ps.protocol.wire import (
    LOCAL_ATTACH,
    LOCAL_HELLO,
    LOCAL_MAX_MESSAGE,
    LOCAL_REPLY_SIZE,
    pack_local_request,
    unpack_local_reply,
)
from worker.planes.channel_slots import SlotChannel

_PAGE = mmap.PAGESIZE


def _round_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


class LocalRegion:
    """A worker's shared memory: a push array and a pull array per table. Not thread-safe."""

    def __init__(self, specs: list[TableSpec], generation: int) -> None:
        self.generation = generation
        self.specs = {s.name: s for s in specs}
        layout: dict[str, tuple[int, int, int]] = {}
        offset = 0
        for s in specs:
            nbytes = s.size * np.dtype(s.dtype).itemsize
            layout[s.name] = (offset, offset + _round_up(nbytes), nbytes)
            offset += 2 * _round_up(nbytes)
        self.size = max(offset, _PAGE)
        self.layout = layout
        self.fd = os.memfd_create("grpc-ps-worker", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self.fd)
            raise
        self.push: dict[str, np.ndarray] = {}      # writable flat arrays
        self.pull: dict[str, np.ndarray] = {}      # writable flat arrays (the worker's own view)
        self.user_pull: dict[str, np.ndarray] = {}  # read-only, shaped: what buffers() hands out
        for name, (push_off, pull_off, nbytes) in layout.items():
            spec = self.specs[name]
            dtype = np.dtype(spec.dtype)
            self.push[name] = np.frombuffer(self.map, dtype=dtype, count=spec.size, offset=push_off)
            self.pull[name] = np.frombuffer(self.map, dtype=dtype, count=spec.size, offset=pull_off)
            ro = self.pull[name].reshape(spec.shape).view()
            ro.flags.writeable = False
            self.user_pull[name] = ro
        #: what the pull area holds: (table, block) -> (version, shard state token)
        self.versions: dict[tuple[str, int], tuple[int, str]] = {}

    def holds(self, names) -> bool:
        return all(n in self.layout for n in names)

    def layout_json(self) -> bytes:
        return json.dumps({"tables": {n: list(v) for n, v in self.layout.items()}}).encode()

    def is_push(self, name: str, array: np.ndarray) -> bool:
        """Whether ``array`` is this region's push array of ``name`` (a zero-copy push)."""
        mine = self.push.get(name)
        return mine is not None and _same_memory(mine, array)

    def is_pull(self, name: str, array: np.ndarray) -> bool:
        mine = self.pull.get(name)
        return mine is not None and _same_memory(mine, array)

    def close(self) -> None:
        """Forget the region. Arrays the user still holds keep the memory alive."""
        self.versions.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.size == b.size
            and a.dtype == b.dtype and b.flags.c_contiguous)


class LocalConnection:
    """One unix-socket connection to a shard, with the region it attached."""

    def __init__(self, address: str, server_id: str, timeout_s: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.generation = -1  # of the region attached
        try:
            self.sock.connect("\0" + address.removeprefix("unix-abstract:"))
            self.sock.sendall(pack_local_request(LOCAL_HELLO, server_id.encode(), timeout_s))
            self.receive()
        except BaseException:
            self.sock.close()
            raise

    def attach(self, region: LocalRegion) -> None:
        """Hand the shard ``region`` (once per region). Raises OSError, PSError."""
        if self.generation == region.generation:
            return
        self.sock.sendmsg([pack_local_request(LOCAL_ATTACH, region.layout_json(), 30.0, 0, region.size)],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, region.fd.to_bytes(4, "little"))])
        self.receive()
        self.generation = region.generation

    def send(self, kind: int, message: bytes, timeout_s: float, flags: int = 0) -> None:
        self.sock.settimeout(timeout_s + 5.0)  # the shard bounds its own waits by timeout_s
        self.sock.sendall(pack_local_request(kind, message, timeout_s, flags=flags))

    def receive(self) -> tuple[bytes, int, int]:
        """``(message, push outcome, push version)``; raises the shard's error as a PSError."""
        head = recv_exact(self.sock, LOCAL_REPLY_SIZE)
        _, status, length, outcome, version = unpack_local_reply(head)
        if length > LOCAL_MAX_MESSAGE:
            raise ConnectionError("malformed reply from the shard")
        body = recv_exact(self.sock, length) if length else b""
        if status:
            raise from_status_number(status, body.decode(errors="replace"))
        return body, outcome, version

    def close(self) -> None:
        self.sock.close()


class LocalChannel(SlotChannel):
    """The data plane to one shard: connections by slot, opened on first use."""

    def __init__(self, address: str, server_id: str, timeout_s: float) -> None:
        super().__init__()
        self.address = address
        self.server_id = server_id
        self.timeout_s = timeout_s

    def open(self) -> LocalConnection:
        """Connect and say hello. Raises UnavailableError when it cannot, or the shard's PSError."""
        try:
            return LocalConnection(self.address, self.server_id, self.timeout_s)
        except PSError:
            raise
        except OSError as exc:
            raise UnavailableError(f"{self.address}: {exc}") from exc
