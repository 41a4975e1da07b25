"""``LocalPlane``: tensors through shared memory with shards on this machine (see :mod:`ps.serving.local_plane`).

A part's gradient is written into the worker's :class:`~worker.planes.local_region.LocalRegion`
(reused every step; not at all when the user computed into ``Client.buffers``) and the
shard is rung over a unix socket; the reply names the blocks the shard wrote back into
the region. A pull that asks for blocks the region already holds names their versions,
so unchanged blocks are not copied at all. Each shard gets up to :data:`LOCAL_MAX_PARTS`
connections (:class:`LocalChannel`), each attached to the current region.

After a call fails half-way the worker never uses that region again (:meth:`LocalPlane.drop`),
so a late write by a shard can never land in memory it reads. Not thread-safe (one Client).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.protocol.wire import (
    LOCAL_ATTACH,
    LOCAL_FLAG_KNOWN,
    LOCAL_PULL,
    LOCAL_PUSH,
    LOCAL_PUSH_PULL,
    split_token,
    with_token,
)
from ps.tables.spec import TableSpec
from worker.planes.channel_slots import SlotChannel, SlotPlane
from worker.planes.frame_connection import FrameConnection
from worker.planes.local_region import LocalRegion
from worker.planes.part import Part
from worker.planes.step import Step

#: most concurrent calls (connections, so shard threads) per shard on this plane: enough
#: to use every core and to overlap the worker's copies with the shard's work
LOCAL_MAX_PARTS = int(os.environ.get("PS_LOCAL_MAX_PARTS", "0")) or max(2, min(8, os.cpu_count() or 2))

_LOCAL_HOSTS = ("127.", "localhost", "[::1]", "::1", "unix:", "unix-abstract:")


def is_local_address(address: str) -> bool:
    """Whether ``address`` names this machine (loopback or a unix socket)."""
    return address.startswith(_LOCAL_HOSTS)


class LocalConnection(FrameConnection):
    """A unix-socket connection to a shard, and the region generation it attached."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        super().__init__(sock, address)
        self.generation = -1

    def attach(self, region: LocalRegion) -> None:
        """Hand the shard ``region`` (once per region). Blocks. Raises PSError."""
        if self.generation != region.generation:
            self.send(LOCAL_ATTACH, region.layout_json(), 30.0, payload_bytes=region.size, fds=[region.fd])
            self.receive()
            self.generation = region.generation


class LocalChannel(SlotChannel):
    """Unix-socket connections to one shard's plane at ``address``; the hello names the shard."""

    connection_type = LocalConnection

    def __init__(self, address: str, server_id: str, timeout_s: float) -> None:
        super().__init__(address, server_id.encode(), timeout_s, timeout_s)
        self._timeout_s = timeout_s

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._timeout_s)
            sock.connect("\0" + self.address.removeprefix("unix-abstract:"))
        except BaseException:
            sock.close()
            raise
        return sock


class LocalPlane(SlotPlane):
    """The same-host plane to the shards :meth:`offer` accepted, and the worker's region.

    The region also backs :meth:`buffers` when no shard is on this machine. The
    constructor does no I/O; ``timeout_s`` bounds each reply.
    """

    name = "shared memory"
    pipelined = True

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self._timeout_s = timeout_s
        self._region: LocalRegion | None = None
        self._generation = 0
        self._tokens: dict[int, str] = {}          # shard -> state token of its last pull
        self._aliases: dict[tuple[str, int], np.ndarray] = {}  # buffers() weights: writable views
        self._templates: dict = {}  # Step.headers' templates, by part

    def channel(self, address: str, status: ps_pb2.StatusReply) -> LocalChannel | None:
        if not is_local_address(address) or not status.local_plane:
            return None
        return LocalChannel(status.local_plane, status.server_id, self._timeout_s)

    def buffers(self, specs: Sequence[TableSpec]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(grads, weights)`` arrays in the region, shaped; see ``Client.buffers``. Raises OSError."""
        region = self._holding({s.name: s for s in specs})
        for s in specs:
            self._aliases[(s.name, region.pull[s.name].__array_interface__["data"][0])] = region.pull[s.name]
        return ({s.name: region.push[s.name].reshape(s.shape) for s in specs},
                {s.name: region.user_pull[s.name] for s in specs})

    def writable(self, name: str, array: object) -> np.ndarray | None:
        """The writable flat array behind a weights array :meth:`buffers` handed out, else None."""
        if not isinstance(array, np.ndarray) or array.base is None:  # None: an array that owns its memory
            return None
        alias = self._aliases.get((name, array.__array_interface__["data"][0]))
        if alias is None or alias.size != array.size or alias.dtype != array.dtype:
            return None
        return alias

    def _holding(self, specs: Mapping[str, TableSpec]) -> LocalRegion:
        """The region, grown (a new one) to hold ``specs`` too."""
        region = self._region
        if region is None or not region.holds(specs):
            self._generation += 1
            new = LocalRegion.allocate(list({**(region.specs if region else {}), **specs}.values()), self._generation)
            if region is not None:
                region.close()
            self._region = region = new
        return region

    def _memo(self, step: Step) -> dict:
        """This step's answers (the region it uses; which arrays are the region's), kept on the step."""
        memo = step.memo
        if memo is None or memo.get("region") is not self._region:
            tables = {n: step.specs[n] for n in (*step.grads, *step.dest)}
            memo = step.memo = {"region": self._holding(tables)}
        return memo

    def send(self, part: Part, seq: int, step: Step) -> tuple[LocalConnection, dict]:
        memo = self._memo(step)
        region: LocalRegion = memo["region"]
        conn = self._channels[part.shard].connection(part.part % LOCAL_MAX_PARTS)  # several parts each: async
        conn.attach(region)
        token = self._tokens.get(part.shard, "")
        held = []
        if part.pull is not None and token:
            for name, b in part.unpushed_pulls:
                v = region.versions.get((name, b))
                if v is not None and v[1] == token:
                    held.append((name, b, v[0]))
        known = (lambda h: [h.known.add(table=n, block=b, version=v) for n, b, v in held]) if held else None
        push, pull = step.headers(part, seq, known, self._templates)
        if push is not None:
            for name, b in part.push:
                src = step.grads[name]
                zero = memo.get(("push", name))
                if zero is None:
                    zero = memo[("push", name)] = region.is_push(name, src)
                if not zero:  # the user did not compute into the region: copy the block there
                    start, stop = step.specs[name].block_range(b)
                    region.push[name][start:stop] = src[start:stop]
        if push is None:
            kind, message = LOCAL_PULL, with_token(token, pull.SerializeToString())
        elif pull is None:
            kind, message = LOCAL_PUSH, push.SerializeToString()
        else:
            kind, message = LOCAL_PUSH_PULL, with_token(token, push.SerializeToString())
        conn.send(kind, message, step.timeout_s, flags=LOCAL_FLAG_KNOWN if held else 0)
        return conn, memo

    def finish(self, sent: tuple[LocalConnection, dict], part: Part, step: Step) -> tuple[int, int] | None:
        conn, memo = sent
        body, outcome, version = conn.receive()
        if part.pull is not None:
            region: LocalRegion = memo["region"]
            try:
                token, body = split_token(body)
                header = ps_pb2.PullReplyHeader.FromString(body)
            except (ValueError, DecodeError) as exc:
                raise InvalidArgumentError(f"malformed reply from the data plane {conn.address}: {exc}") from exc
            for ref in header.blocks:
                start, stop = step.block(part, ref.table, ref.block, ref.count, ref.dtype)
                region.versions[(ref.table, ref.block)] = (ref.version, token)
                dst = step.dest[ref.table]
                zero = memo.get(("pull", ref.table))
                if zero is None:
                    zero = memo[("pull", ref.table)] = dst is region.pull[ref.table] or region.is_pull(ref.table, dst)
                if not zero:  # the caller's own array: copy the block out of shared memory
                    dst[start:stop] = region.pull[ref.table][start:stop]
            self._tokens[part.shard] = token
        return (outcome, version) if part.push is not None else None

    def drop(self, shard: int) -> None:
        super().drop(shard)
        self._abandon()

    def forget_shards(self) -> None:
        """Close every shard's connections and forget what each shard's last pull left in the
        region, keeping the region (and the arrays :meth:`buffers` handed out): the shards
        changed places (a resize) and are offered again. Call between calls only (none in
        flight, so no shard still writes into the region). Does not block or raise."""
        super().close()
        self._tokens.clear()

    def _abandon(self) -> None:
        """Never use the region again: a shard may still write into it."""
        if self._region is not None:
            self._region.close()
            self._region = None

    def close(self) -> None:
        super().close()
        self._abandon()
