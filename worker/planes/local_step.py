"""The same-host data plane of a dense step: shared memory instead of gRPC payloads.

When the worker and a shard share a machine, :func:`attach_local` opens the shard's
data plane (:mod:`worker.planes.local_plane`). A part's gradient is written into the worker's
shared-memory region (reused every step; not at all when the user computed into
``Client.buffers``) and the shard is rung (:func:`local_send`); the reply names the
blocks the shard wrote back (:func:`local_finish`). A pull that asks for the same blocks
as last time names the versions it already holds, so unchanged blocks are not copied.

A call that fails here is retried over gRPC by the engine (:mod:`worker.client.dense_step`)
with the same sequence number, after :func:`drop_local` (that shard uses gRPC from then
on, and the region is never reused: the shard may still write into it).
Not thread-safe (a Client is one worker).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ps._proto import ps_pb2
from ps.errors import DeadlineExceededError, InvalidArgumentError, PSError, UnavailableError
from ps.protocol.wire import LOCAL_FLAG_KNOWN, LOCAL_PULL, LOCAL_PUSH, LOCAL_PUSH_PULL, split_token, with_token
from worker.planes.local_plane import LocalChannel, LocalRegion
from worker.client.step_plan import LOCAL_MAX_PARTS, Part, headers
from worker.client.transport import call

if TYPE_CHECKING:
    from worker.client.client import Client

log = logging.getLogger(__name__)

_LOCAL_HOSTS = ("127.", "localhost", "[::1]", "::1", "unix:", "unix-abstract:")


def is_local_address(address: str) -> bool:
    """Whether ``address`` names this machine (loopback or a unix socket)."""
    return address.startswith(_LOCAL_HOSTS)


def attach_local(client: Client) -> None:
    """Open the same-host data plane to every shard that offers one (best effort).

    Blocks for one Status call per local shard (bounded by ``client.timeout_s``); a shard
    without a usable data plane is logged and left on gRPC, so this never raises.
    """
    client._local = [None] * len(client._channels)
    if not client.local:
        return
    for i, ch in enumerate(client._channels):
        if not is_local_address(ch.address):
            continue
        try:
            reply = call(ch, ch.status, ps_pb2.StatusRequest(), client.timeout_s, client.retry)
            address = reply.local_plane
            if not address:
                continue
            local = LocalChannel(address, reply.server_id, client.wait_timeout_s)
            local.connection(0)  # proves the shard is on this machine and answers
            client._local[i] = local
        except (PSError, OSError) as exc:
            log.info("%s: no same-host data plane (%s); using gRPC", ch.address, exc)


def close_local(client: Client) -> None:
    """Close every data-plane channel and the shared-memory region. Does not block or raise."""
    for local in getattr(client, "_local", None) or ():
        if local is not None:
            local.close()
    client._local = []
    abandon_region(client)


def buffers(client: Client, names) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(grads, weights)`` arrays in the worker's shared-memory region; see ``Client.buffers``."""
    client._require_open()
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    region = ensure_region(client, names)
    grads = {n: region.push[n].reshape(client._specs[n].shape) for n in names}
    for n in names:
        client._weights[(n, region.pull[n].__array_interface__["data"][0])] = region.pull[n]
    return grads, {n: region.user_pull[n] for n in names}


def ensure_region(client: Client, names) -> LocalRegion:
    """The worker's shared-memory region, grown to hold ``names`` too."""
    region = client._region
    if region is None or not region.holds(names):
        tables = list(dict.fromkeys([*(region.specs if region else ()), *names]))
        client._region_generation += 1
        new = LocalRegion([client.spec(n) for n in tables], client._region_generation)
        if region is not None:
            region.close()
        client._region = region = new
    return region


def abandon_region(client: Client) -> None:
    """After a failed call: never use this region again (a shard may still write into it)."""
    if client._region is not None:
        client._region.close()
        client._region = None


def drop_local(client: Client, shard: int) -> None:
    """A data-plane call to ``shard`` failed: that shard goes over gRPC from now on."""
    local = client._local[shard]
    if local is not None:
        client._local[shard] = None
        local.close()
    abandon_region(client)


def local_send(client: Client, local: LocalChannel, p: Part, flat, pull_step: int, region: LocalRegion,
                same: dict[tuple[str, str], bool]):
    """Write part ``p``'s payload into ``region`` and ring the shard; returns the connection.

    Does not wait for the reply (:func:`local_finish` does). Raises UnavailableError when
    the shard cannot be reached.
    """
    conn = local.connection(p.part % LOCAL_MAX_PARTS)  # several queued parts per connection: async only
    try:
        conn.attach(region)
    except OSError as exc:
        raise UnavailableError(f"{local.address}: {exc}") from exc
    push_header, pull_header = headers(client, p, pull_step)
    flags = 0
    token = client._local_tokens.get(p.shard, "")
    if pull_header is not None and token:
        for name, b in p.pull_blocks:
            held = region.versions.get((name, b))
            if held is not None and held[1] == token:
                pull_header.known.add(table=name, block=b, version=held[0])
        if pull_header.known:
            flags = LOCAL_FLAG_KNOWN
            if push_header is not None:
                push_header.then_pull.CopyFrom(pull_header)
    if push_header is not None:
        for name, b in p.push:
            src = flat[name]
            zero = same.get(("push", name))
            if zero is None:
                zero = same[("push", name)] = region.is_push(name, src)
            if zero:
                continue  # the user computed into the region: nothing to copy
            dst = region.push[name]
            start, stop = client._specs[name].block_range(b)
            dst[start:stop] = src[start:stop]
    if push_header is not None and pull_header is not None:
        kind, message = LOCAL_PUSH_PULL, with_token(token, push_header.SerializeToString())
    elif push_header is not None:
        kind, message = LOCAL_PUSH, push_header.SerializeToString()
    else:
        kind, message = LOCAL_PULL, with_token(token, pull_header.SerializeToString())
    try:
        conn.send(kind, message, client.wait_timeout_s, flags)
    except OSError as exc:
        raise UnavailableError(f"{local.address}: {exc}") from exc
    return conn


def local_finish(client: Client, conn, p: Part, dest, region: LocalRegion,
                  same: dict[tuple[str, str], bool]) -> list[tuple[int, int]]:
    """Wait for part ``p``'s reply (bounded by the wait timeout given to :func:`local_send`).

    Copies pulled blocks out of ``region`` into ``dest`` unless they are the same memory;
    returns the push outcome, if any. Raises DeadlineExceededError, UnavailableError,
    InvalidArgumentError for a malformed reply, or the shard's PSError.
    """
    try:
        body, outcome, version = conn.receive()
    except OSError as exc:  # timeout or a broken connection: the shard may still write
        kind = DeadlineExceededError if isinstance(exc, TimeoutError) else UnavailableError
        raise kind(f"data plane: {exc}") from exc
    result = [(outcome, version)] if p.push is not None else []
    if p.pull is None:
        return result
    token, body = split_token(body)
    header = ps_pb2.PullReplyHeader.FromString(body)
    for ref in header.blocks:
        spec = client._specs.get(ref.table)
        if spec is None or ref.table not in dest or ref.table not in region.pull:
            raise InvalidArgumentError(f"server sent unrequested table {ref.table!r}")
        start, stop = spec.block_range(ref.block)
        if ref.count != stop - start:
            raise InvalidArgumentError(f"server sent {ref.count} elements for {ref.table}[{ref.block}]")
        region.versions[(ref.table, ref.block)] = (ref.version, token)
        zero = same.get(("pull", ref.table))
        if zero is None:
            dst = dest[ref.table]
            zero = same[("pull", ref.table)] = dst is region.pull[ref.table] or region.is_pull(ref.table, dst)
        if not zero:  # the caller's own array: copy the block out of shared memory
            dest[ref.table][start:stop] = region.pull[ref.table][start:stop]
    client._local_tokens[p.shard] = token
    return result
