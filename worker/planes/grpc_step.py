"""The gRPC path of a dense step (``Push``, ``Pull``, ``PushPull``) and the known-block cache.

:func:`grpc_start` builds every part's call; :func:`grpc_finish` sends them (one blocking
call, or all concurrently through :func:`worker.client.transport.fan_out`) and writes the pulled
blocks into the destination arrays. With ``Client(cache_pulls=True)`` a pull names the
block versions the worker already holds and the shard leaves those blocks out; they are
filled from the worker's cached copy. Not thread-safe (a Client is one worker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ps._proto import ps_pb2
from ps.errors import InvalidArgumentError
from ps.protocol.wire import encode_framed, split_payload
from worker.client.step_plan import Part, headers
from worker.client.transport import call, fan_out

if TYPE_CHECKING:
    from worker.client.client import Client


def name_known(client: Client, p: Part, push_header, pull_header) -> None:
    """With ``client.cache_pulls``: name in the pull the block versions the client holds
    (``known``, valid for the state ``known_for``), also in a fused push's ``then_pull``."""
    if pull_header is None or not client.cache_pulls:
        return
    token = client._known_tokens.get(p.shard, "")
    pull_header.known_for = token
    if token:
        for name, b in p.pull_blocks:
            v = client._known_versions.get((name, b))
            if v is not None:
                pull_header.known.add(table=name, block=b, version=v)
        if push_header is not None:
            push_header.then_pull.CopyFrom(pull_header)


def grpc_start(client: Client, parts: list[Part], flat, pull_step: int):
    """``(channel, method, request)`` of every part, with known versions when caching. Pure."""
    calls = []
    for p in parts:
        ch = client._channels[p.shard]
        push_header, pull_header = headers(client, p, pull_step)
        name_known(client, p, push_header, pull_header)
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


def grpc_finish(client: Client, parts: list[Part], calls, dest) -> list[tuple[int, int]]:
    """Send ``calls`` and fill ``dest`` from the replies; returns the push outcomes.

    Blocks until every reply is in, each call bounded by ``client.wait_timeout_s`` and
    retried per ``client.retry``. Raises the PSError of the first failed call, or
    InvalidArgumentError for a malformed reply.
    """
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


def _fill_from_payload(client: Client, p: Part, header, payload, dest, token: str | None) -> None:
    """Write one pull reply's blocks into ``dest``; blocks the shard left out come from the cache."""
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
            remember_block(client, ref, values)
    if client.cache_pulls:
        fill_left_out(client, p, got, dest)
        if token is not None:
            client._known_tokens[p.shard] = token


def remember_block(client: Client, ref, values: np.ndarray) -> None:
    """Keep a pulled block and its version in the pull cache (``Client(cache_pulls=True)``)."""
    spec = client._specs[ref.table]
    cache = client._known_values.get(ref.table)
    if cache is None:
        cache = client._known_values[ref.table] = np.empty(spec.size, dtype=spec.dtype)
    start, stop = spec.block_range(ref.block)
    cache[start:stop] = values
    client._known_versions[(ref.table, ref.block)] = ref.version


def fill_left_out(client: Client, p: Part, got: set, dest) -> None:
    """Copy the blocks of ``p`` the shard left out of its reply (unchanged since the cached
    copy) from the pull cache into ``dest``. Raises InvalidArgumentError for a block this
    worker does not hold."""
    for name, b in p.pull_blocks:
        if (name, b) in got:
            continue
        cache = client._known_values.get(name)
        if cache is None or (name, b) not in client._known_versions:
            raise InvalidArgumentError(f"server left out {name}[{b}], which this worker does not hold")
        start, stop = client._specs[name].block_range(b)
        dest[name][start:stop] = cache[start:stop]
