"""Dense push, pull and the fused push-then-pull step of a :class:`~worker.client.Client`.

One engine serves ``Client.push``, ``Client.pull`` and ``Client.push_pull``. For each
shard it splits the transfer into parts (several calls in flight per shard), and sends
every part either

* through the shard's **same-host data plane** (:mod:`worker.local_plane`) when the
  worker and the shard share a machine: payloads go through shared memory that is reused
  every step, and a pull that asks for the same blocks as last time names the versions
  it already holds, so unchanged blocks are not copied at all; or
* through **gRPC** (``Push``, ``Pull``, ``PushPull``), with ``known`` block versions when
  the client keeps a pull cache (``Client(cache_pulls=True)``).

Parts are formed the way the server selects pull parts (block index modulo the number
of parts), so part *k* of a fused step pulls exactly the blocks it pushed: a worker
always reads its own update. The number of parts grows until every part fits
``part_bytes``; if a fused part still would not, the step falls back to push then pull.

Exactly-once holds on every path: each part push carries its own ``(worker, seq)``, and
a call that fails on the data plane is retried over gRPC with the same sequence number.
Not thread-safe (a Client is one worker).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ps._proto import ps_pb2
from ps.errors import DeadlineExceededError, InvalidArgumentError, PSError, TransientError, UnavailableError
from ps.wire import (
    LOCAL_FLAG_KNOWN,
    LOCAL_PULL,
    LOCAL_PUSH,
    LOCAL_PUSH_PULL,
    encode_framed,
    split_payload,
    split_token,
    wire_dtype,
    with_token,
)
from worker.local_plane import LocalChannel, LocalRegion
from worker.transport import call, fan_out, lost_registration

if TYPE_CHECKING:
    from worker.client import Client

log = logging.getLogger(__name__)

#: most concurrent calls (connections, so shard threads) per shard on the data plane:
#: enough to use every core and to overlap the worker's copies with the shard's work
LOCAL_MAX_PARTS = int(os.environ.get("PS_LOCAL_MAX_PARTS", "0")) or max(2, min(8, os.cpu_count() or 2))

_LOCAL_HOSTS = ("127.", "localhost", "[::1]", "::1", "unix:", "unix-abstract:")


def is_local_address(address: str) -> bool:
    """Whether ``address`` names this machine (loopback or a unix socket)."""
    return address.startswith(_LOCAL_HOSTS)


def attach_local(client: Client) -> None:
    """Open the same-host data plane to every shard that offers one (best effort)."""
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
    for local in getattr(client, "_local", None) or ():
        if local is not None:
            local.close()
    client._local = []
    _abandon_region(client)


def buffers(client: Client, names) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(grads, weights)`` arrays in the worker's shared-memory region; see ``Client.buffers``."""
    client._require_open()
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    region = ensure_region(client, names)
    grads = {n: region.push[n].reshape(client._specs[n].shape) for n in names}
    for n in names:
        client._weights[(n, region.pull[n].__array_interface__["data"][0])] = region.pull[n]
    return grads, {n: region.user_pull[n] for n in names}


# -- planning -------------------------------------------------------------------------------


@dataclass
class _Part:
    shard: int
    part: int
    num_parts: int
    push: list[tuple[str, int]] | None      # blocks pushed (None: no push in this call)
    pull: list[str] | None                  # tables pulled (None: no pull in this call)
    pull_blocks: list[tuple[str, int]] = field(default_factory=list)
    seq: int = 0


def _block_bytes(client: Client, name: str, b: int) -> int:
    spec = client._specs[name]
    start, stop = spec.block_range(b)
    return (stop - start) * np.dtype(spec.dtype).itemsize


def _num_parts(client: Client, shard: int, tables: list[str], part_bytes: int) -> int | None:
    """Smallest n with every modulo-n group of the shard's blocks within ``part_bytes``.

    None when even one block per table per part does not fit.
    """
    blocks = [(name, b) for name in tables for b in client._placement[name][shard]]
    total = sum(_block_bytes(client, name, b) for name, b in blocks)
    most = max((client._specs[name].num_blocks for name in tables), default=1)
    n = max(1, -(-total // part_bytes))
    while True:
        sizes = [0] * n
        for name, b in blocks:
            sizes[b % n] += _block_bytes(client, name, b)
        if max(sizes) <= part_bytes:
            return n
        if n >= most:
            return None
        n = min(most, max(n + 1, int(n * 1.25)))


def _plan(client: Client, push: list[str] | None, pull: list[str] | None,
          local: list[bool]) -> list[_Part] | None:
    """The calls of one step, or None when a fused part cannot fit a message."""
    parts: list[_Part] = []
    for shard in range(len(client._channels)):
        tables = sorted(set(push or ()) | set(pull or ()))
        if local[shard]:
            # no message limit here: parts of local_part_bytes keep each part's gradient
            # and weights in cache between the shard's check, apply and copy; in async mode
            # they queue on LOCAL_MAX_PARTS connections (shard threads). Where a pull may
            # wait for other workers (sync, ssp) a queued part could wait on the one
            # before it, so there every part gets its own connection, as many as allowed.
            total = sum(_block_bytes(client, name, b) for name in tables for b in client._placement[name][shard])
            n = max(1, -(-total // client.local_part_bytes))
            if client.mode != "async":
                n = min(n, LOCAL_MAX_PARTS)
        else:
            n = _num_parts(client, shard, tables, client.part_bytes)
        if n is None:
            if push is not None and pull is not None:
                return None
            n = max(1, client._specs[tables[0]].num_blocks) if tables else 1
        shard_pushes = [(name, b) for name in (push or ()) for b in client._placement[name][shard]]
        for k in range(n):
            mine = [(name, b) for name, b in shard_pushes if b % n == k] if push is not None else None
            pulled = ([(name, b) for name in pull for b in client._placement[name][shard] if b % n == k]
                      if pull is not None else [])
            if mine is not None and not mine and client.mode == "async":
                mine = None  # nothing to apply here; sync and ssp need every part every step
            if mine is None and not pulled:
                continue
            parts.append(_Part(shard, k, n, mine, pull if pulled else None, pulled))
    return parts


def _cached_plan(client: Client, push, pull, local: list[bool]) -> list[_Part] | None:
    """:func:`_plan`, remembered per (tables, paths, mode): a training loop plans once.

    Parts come interleaved across shards (part 0 of every shard, then part 1, ...) so
    that every shard gets work as early as possible.
    """
    cache = client.__dict__.setdefault("_plan_cache", {})
    key = (tuple(push) if push is not None else None, tuple(pull) if pull is not None else None, tuple(local),
           client.mode, len(client._specs))
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        planned = _plan(client, push, pull, local)
        if planned is not None:
            planned.sort(key=lambda p: (p.part, p.shard))
        cache[key] = planned
    planned = cache[key]
    return None if planned is None else [dataclasses.replace(p) for p in planned]


# -- the step -------------------------------------------------------------------------------


def flatten_grads(client: Client, grads: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Checked, contiguous little-endian 1-D views of the gradients (copies only if needed)."""
    flat: dict[str, np.ndarray] = {}
    for name, grad in grads.items():
        spec = client.spec(name)
        arr = np.asarray(grad)
        if arr.shape != spec.shape:
            raise InvalidArgumentError(f"{name}: gradient shape {arr.shape}, table shape {spec.shape}")
        if arr.dtype != np.dtype(spec.dtype):
            raise InvalidArgumentError(f"{name}: gradient dtype {arr.dtype.name}, table dtype {spec.dtype}")
        flat[name] = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(-1)
    return flat


def _outputs(client: Client, names: list[str], out: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Flat writable destinations: the caller's ``out`` arrays (checked) or fresh ones."""
    dest = {}
    for name in names:
        spec = client.spec(name)
        given = None if out is None else out.get(name)
        if given is None:
            dest[name] = np.empty(spec.size, dtype=spec.dtype)
            continue
        alias = _weights_alias(client, name, given)
        if alias is not None:  # an array from buffers(): read-only to the user, not to us
            dest[name] = alias
            continue
        if (not isinstance(given, np.ndarray) or given.shape != spec.shape or given.dtype != np.dtype(spec.dtype)
                or not given.flags.c_contiguous or not given.flags.writeable):
            raise InvalidArgumentError(f"out[{name!r}] must be a writable C-contiguous {spec.dtype} array "
                                       f"of shape {spec.shape}")
        dest[name] = given.reshape(-1)
    return dest


def _weights_alias(client: Client, name: str, given) -> np.ndarray | None:
    """The writable flat array behind a weights array that ``buffers()`` handed out."""
    if not isinstance(given, np.ndarray):
        return None
    alias = client._weights.get((name, given.__array_interface__["data"][0]))
    if alias is None or alias.size != given.size or alias.dtype != given.dtype:
        return None
    return alias


def run(client: Client, grads: Mapping[str, Any] | None, names: Iterable[str] | None,
        out: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray] | None:
    """Push ``grads`` (if given), then pull ``names`` (if given); see ``Client.push_pull``."""
    client._require_open()
    if grads is not None and client.observer:
        from ps.errors import FailedPreconditionError

        raise FailedPreconditionError("an observer client cannot push")
    flat = flatten_grads(client, grads) if grads is not None else None
    pull_names = None
    if names is not None:
        pull_names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
        for n in pull_names:
            client.spec(n)
    dest = _outputs(client, pull_names, out) if pull_names is not None else {}
    push_tables = list(flat) if flat is not None else None
    # parts for the data plane are smaller than gRPC's: they pipeline copy and apply
    locals_ = getattr(client, "_local", None) or [None] * len(client._channels)
    parts = _cached_plan(client, push_tables, pull_names, [x is not None for x in locals_])
    if parts is None:  # a fused part cannot fit one message: two round trips instead
        run(client, grads, None)
        return run(client, None, pull_names, out) if pull_names is not None else None
    pull_step = client.clock + 1 if flat is not None else client.clock
    for p in parts:
        if p.push is not None:
            p.seq = client._next_seq[p.shard]
            client._next_seq[p.shard] += 1
    outcomes = _execute(client, parts, flat, pull_names, dest, pull_step)
    if flat is not None:
        _advance_clock(client, outcomes)
    if pull_names is None:
        return None
    given = out or {}
    return {n: given[n] if given.get(n) is not None else dest[n].reshape(client._specs[n].shape) for n in pull_names}


def _advance_clock(client: Client, outcomes: list[tuple[int, int]]) -> None:
    stale_version = None
    for outcome, version in outcomes:
        name = ps_pb2.Outcome.Name(outcome).lower()
        client.stats[name] = client.stats.get(name, 0) + 1
        if outcome == ps_pb2.STALE:
            stale_version = max(stale_version or 0, version)
    if stale_version is not None:
        log.warning("worker %d's gradient for step %d was stale; resuming at step %d",
                    client.worker_id, client.clock, stale_version)
        client.clock = max(client.clock + 1, stale_version)
    else:
        client.clock += 1


def _headers(client: Client, p: _Part, pull_step: int):
    """(PushHeader or None, PullHeader or None) of one part; blocks without payload."""
    pull_header = None
    if p.pull is not None:
        pull_header = ps_pb2.PullHeader(worker_id=client.worker_id, step=pull_step, tables=p.pull,
                                        part=p.part, num_parts=p.num_parts)
    push_header = None
    if p.push is not None:
        push_header = ps_pb2.PushHeader(worker_id=client.worker_id, seq=p.seq, step=client.clock, part=p.part,
                                        num_parts=p.num_parts)
        for name, b in p.push:
            spec = client._specs[name]
            start, stop = spec.block_range(b)
            push_header.blocks.add(table=name, block=b, dtype=wire_dtype(spec.dtype), count=stop - start)
        if pull_header is not None:
            push_header.then_pull.CopyFrom(pull_header)
    return push_header, pull_header


def _execute(client: Client, parts: list[_Part], flat, pull_names, dest, pull_step) -> list[tuple[int, int]]:
    locals_ = list(getattr(client, "_local", None) or [None] * len(client._channels))  # as planned
    outcomes: list[tuple[int, int]] = []
    errors: list[PSError] = []
    sent = []
    retry_grpc: list[_Part] = []
    # 1. the data plane: write each part's payload and ring the shard, part after part, so
    #    the shard applies part k while the worker still writes part k + 1
    region = None
    same: dict[tuple[str, str], bool] = {}  # per table: is the user's array the region's? (zero copy)
    if any(locals_):
        region = ensure_region(client, list(dict.fromkeys([*(flat or ()), *(pull_names or ())])))
    for p in parts:
        local = locals_[p.shard]
        if local is None:
            continue
        if client._local[p.shard] is None:  # dropped by an earlier part's failure
            retry_grpc.append(p)
            continue
        try:
            sent.append((p, _local_send(client, local, p, flat, pull_step, region, same)))
        except TransientError as exc:
            log.info("%s: data plane failed (%s); retrying over gRPC", local.address, exc)
            _drop_local(client, p.shard)
            retry_grpc.append(p)
    # 2. gRPC parts, all concurrently
    grpc_parts = [p for p in parts if locals_[p.shard] is None]
    grpc_results = _grpc_start(client, grpc_parts, flat, pull_step)
    # 3. data-plane replies, in order (the shard works on the others meanwhile)
    for p, conn in sent:
        local = locals_[p.shard]
        try:
            outcomes += _local_finish(client, conn, p, dest, region, same)
        except TransientError as exc:
            log.info("%s: data plane failed (%s); retrying over gRPC", local.address if local else "?", exc)
            _drop_local(client, p.shard)
            retry_grpc.append(p)
        except PSError as exc:
            if lost_registration(exc):  # the gRPC retry registers again first (transport.call)
                retry_grpc.append(p)
            else:
                errors.append(exc)
    # 4. gRPC replies, then the retries of failed data-plane calls
    try:
        outcomes += _grpc_finish(client, grpc_parts, grpc_results, dest)
    except PSError as exc:
        errors.append(exc)
    if retry_grpc:
        try:
            outcomes += _grpc_finish(client, retry_grpc, _grpc_start(client, retry_grpc, flat, pull_step), dest)
        except PSError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return outcomes


def _drop_local(client: Client, shard: int) -> None:
    """A data-plane call to ``shard`` failed: that shard goes over gRPC from now on."""
    local = client._local[shard]
    if local is not None:
        client._local[shard] = None
        local.close()
    _abandon_region(client)


# -- the data plane -------------------------------------------------------------------------


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


def _abandon_region(client: Client) -> None:
    """After a failed call: never use this region again (a shard may still write into it)."""
    if client._region is not None:
        client._region.close()
        client._region = None


def _local_send(client: Client, local: LocalChannel, p: _Part, flat, pull_step: int, region: LocalRegion,
                same: dict[tuple[str, str], bool]):
    conn = local.connection(p.part % LOCAL_MAX_PARTS)  # several queued parts per connection: async only
    try:
        conn.attach(region)
    except OSError as exc:
        raise UnavailableError(f"{local.address}: {exc}") from exc
    push_header, pull_header = _headers(client, p, pull_step)
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


def _local_finish(client: Client, conn, p: _Part, dest, region: LocalRegion,
                  same: dict[tuple[str, str], bool]) -> list[tuple[int, int]]:
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


# -- gRPC -----------------------------------------------------------------------------------


def _grpc_start(client: Client, parts: list[_Part], flat, pull_step: int):
    calls = []
    for p in parts:
        ch = client._channels[p.shard]
        push_header, pull_header = _headers(client, p, pull_step)
        if pull_header is not None and client.cache_pulls:
            token = client._known_tokens.get(p.shard, "")
            pull_header.known_for = token
            if token:
                for name, b in p.pull_blocks:
                    v = client._known_versions.get((name, b))
                    if v is not None:
                        pull_header.known.add(table=name, block=b, version=v)
                if push_header is not None:
                    push_header.then_pull.CopyFrom(pull_header)
        if push_header is not None:
            buffers = []
            for name, b in p.push:
                start, stop = client._specs[name].block_range(b)
                buffers.append(flat[name][start:stop])
            message = encode_framed(push_header.SerializeToString(), buffers)
            if pull_header is not None:
                calls.append((ch, ch.push_pull, message))
            else:
                calls.append((ch, ch.push, message))
        else:
            calls.append((ch, ch.pull, ps_pb2.PullRequest(header=pull_header)))
    return calls


def _grpc_finish(client: Client, parts: list[_Part], calls, dest) -> list[tuple[int, int]]:
    if not calls:
        return []
    if len(calls) == 1:  # gRPC Python's blocking call is much cheaper than a future
        ch, method, request = calls[0]
        replies = [call(ch, method, request, client.wait_timeout_s, client.retry)]
    else:
        replies = fan_out(calls, client.wait_timeout_s, client.retry)
    outcomes = []
    for p, reply in zip(parts, replies):
        if p.pull is None:
            outcomes.append((reply.outcome, reply.version))
            continue
        header, payload = reply
        if p.push is not None:
            outcomes.append((header.push_outcome, header.push_version))
        _fill_from_payload(client, p, header, payload, dest, header.state_token if client.cache_pulls else None)
    return outcomes


def _fill_from_payload(client: Client, p: _Part, header, payload, dest, token: str | None) -> None:
    got = set()
    for ref, values in zip(header.blocks, split_payload(header.blocks, payload)):
        spec = client._specs.get(ref.table)
        if spec is None or ref.table not in dest:
            raise InvalidArgumentError(f"server sent unrequested table {ref.table!r}")
        start, stop = spec.block_range(ref.block)
        if values.size != stop - start:
            raise InvalidArgumentError(f"server sent {values.size} elements for {ref.table}[{ref.block}]")
        dest[ref.table][start:stop] = values
        got.add((ref.table, ref.block))
        if client.cache_pulls:
            cache = client._known_values.get(ref.table)
            if cache is None:
                cache = client._known_values[ref.table] = np.empty(spec.size, dtype=spec.dtype)
            cache[start:stop] = values
            client._known_versions[(ref.table, ref.block)] = ref.version
    if not client.cache_pulls:
        return
    for name, b in p.pull_blocks:  # blocks the shard left out: unchanged since the cached copy
        if (name, b) in got:
            continue
        cache = client._known_values.get(name)
        if cache is None or (name, b) not in client._known_versions:
            raise InvalidArgumentError(f"server left out {name}[{b}], which this worker does not hold")
        start, stop = client._specs[name].block_range(b)
        dest[name][start:stop] = cache[start:stop]
    if token is not None:
        client._known_tokens[p.shard] = token
