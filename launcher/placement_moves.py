"""``move_blocks``: move dense blocks between running shards (``ps-admin move``), under a new placement map.

The steps (each shard's side: ``ps.shard.moves``; the rule: ``docs/placement.md``): read every
shard's map and take the newest; make the next version with the moves; every shard
installs it and gives the blocks it puts elsewhere (so pushes planned with the old map are
redirected); their owners take them; every shard drops the copies it kept. Workers keep training: a call planned with the old map is
refused unapplied (reason MOVED), and the client re-plans it with the new map.

Resumable: a move interrupted anywhere (the admin killed) is finished by the next
``ps-admin move`` (even with no new blocks to move): the newest map any shard holds is
settled first. A source keeps what it gave until the end, and a target takes a block once.
"""

from __future__ import annotations

import io
import os
import signal
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError, InvalidArgumentError
from ps.tables.placement_map import PlacementMap
from worker.client.transport import RetryPolicy, ShardChannel, call, fan_out


def newest_placement(channels: Sequence[ShardChannel], timeout_s: float, retry: RetryPolicy) -> PlacementMap:
    """The newest placement map any shard holds (one Status call each). Blocks; raises
    PSError, FailedPreconditionError when no shard knows its topology yet."""
    replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest()) for ch in channels], timeout_s, retry)
    maps = [PlacementMap.from_proto(r.placement) for r in replies if r.HasField("placement")]
    if not maps:
        raise FailedPreconditionError("no shard knows its topology yet: create a table first")
    return max(maps, key=lambda m: m.version)


def move_blocks(channels: Sequence[ShardChannel], moves: Mapping[tuple[str, int], int], timeout_s: float,
                retry: RetryPolicy = RetryPolicy(attempts=3), kill_after: str = "") -> PlacementMap:
    """Move dense block ``(table, block)`` to shard ``moves[...]`` for each entry; returns the
    map installed. First finishes a move left half done (the newest map some shard holds).
    ``kill_after`` (fault injection for tests: "settle" or "take") SIGKILLs this process
    right after that step of the new move. Blocks (each call bounded by ``timeout_s``).
    Raises InvalidArgumentError for a shard out of range, PSError from the shards."""
    current = newest_placement(channels, timeout_s, retry)
    if current.num_shards != len(channels):
        raise InvalidArgumentError(f"the servers' map is for {current.num_shards} shards; {len(channels)} given")
    for (table, block), shard in moves.items():
        if not 0 <= shard < len(channels):
            raise InvalidArgumentError(f"{table!r} block {block}: no shard {shard} among {len(channels)}")
    settle(channels, current, timeout_s, retry)
    new = current.with_moves({(t, False, b): s for (t, b), s in moves.items()})
    if new.moved == current.moved:
        return current
    return settle(channels, new, timeout_s, retry, kill_after)


def settle(channels: Sequence[ShardChannel], placement: PlacementMap, timeout_s: float, retry: RetryPolicy,
           kill_after: str = "") -> PlacementMap:
    """Make ``placement`` true everywhere: every shard installs it and gives the blocks it puts
    elsewhere (held, or kept from an interrupted move), their owners take them, every shard
    drops its kept copies. Idempotent: run again after any interruption, it finishes. Blocks;
    raises PSError."""
    wire = placement.to_proto()
    replies = [call(ch, ch.move, ps_pb2.MoveRequest(placement=wire, settle=True), timeout_s, retry) for ch in channels]
    _fault(kill_after, "settle")
    taken: dict[int, list[tuple[ps_pb2.UnitState, dict[str, np.ndarray]]]] = defaultdict(list)
    for reply in replies:
        with np.load(io.BytesIO(reply.payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        for i, state in enumerate(reply.units):
            prefix = f"{i}."
            mine = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            taken[placement.block_owner(state.unit.table, state.unit.index)].append((state, mine))
    for target, states in sorted(taken.items()):
        ch = channels[target]
        request = ps_pb2.MoveRequest(placement=wire)
        payload = {}
        for i, (state, mine) in enumerate(states):
            request.take.add().CopyFrom(state)
            payload.update({f"{i}.{name}": arr for name, arr in mine.items()})
        buf = io.BytesIO()
        np.savez(buf, **payload)
        request.payload = buf.getvalue()
        call(ch, ch.move, request, timeout_s, retry)
    _fault(kill_after, "take")
    fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, release=True)) for ch in channels], timeout_s, retry)
    return placement


def _fault(kill_after: str, step: str) -> None:
    """Fault injection (tests): SIGKILL this process right after ``step``."""
    if kill_after == step:
        os.kill(os.getpid(), signal.SIGKILL)
