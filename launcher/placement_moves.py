"""``move_blocks``: move dense blocks between running shards (``ps-admin move``), under a new placement map.

The steps (each shard's side: ``ps.shard.moves``; the rule: ``docs/placement.md``): read every
shard's map and take the newest; make the next version with the moves; each source gives
its blocks (installing the new map first, so pushes planned with the old one are
redirected); each target takes them (installing the map); every shard installs the map and
the sources drop their copies. Workers keep training: a call planned with the old map is
refused unapplied (reason MOVED), and the client re-plans it with the new map.

Not yet resumable: an admin killed between a give and its take leaves the blocks with the
source (kept, not lost) under a map that names the target; rerunning the same move does
not finish it (issue 16, stage 2).
"""

from __future__ import annotations

import io
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
                retry: RetryPolicy = RetryPolicy(attempts=3)) -> PlacementMap:
    """Move dense block ``(table, block)`` to shard ``moves[...]`` for each entry; returns the
    map installed. Blocks (each call bounded by ``timeout_s``). Raises InvalidArgumentError for
    a shard out of range or an unknown block, PSError from the shards."""
    current = newest_placement(channels, timeout_s, retry)
    if current.num_shards != len(channels):
        raise InvalidArgumentError(f"the servers' map is for {current.num_shards} shards; {len(channels)} given")
    for (table, block), shard in moves.items():
        if not 0 <= shard < len(channels):
            raise InvalidArgumentError(f"{table!r} block {block}: no shard {shard} among {len(channels)}")
    new = current.with_moves({(t, False, b): s for (t, b), s in moves.items()})
    by_source: dict[int, list[tuple[str, bool, int]]] = defaultdict(list)
    for (table, block), shard in moves.items():
        source = current.block_owner(table, block)
        if source != shard:
            by_source[source].append((table, False, block))
    wire = new.to_proto()
    taken: dict[int, list[tuple[ps_pb2.UnitState, dict[str, np.ndarray]]]] = defaultdict(list)
    for source, units in sorted(by_source.items()):
        ch = channels[source]
        request = ps_pb2.MoveRequest(placement=wire)
        for table, rows, block in units:
            request.give.add(table=table, rows=rows, index=block)
        reply = call(ch, ch.move, request, timeout_s, retry)
        with np.load(io.BytesIO(reply.payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        for i, state in enumerate(reply.units):
            prefix = f"{i}."
            mine = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            taken[new.block_owner(state.unit.table, state.unit.index)].append((state, mine))
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
    fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, release=True)) for ch in channels], timeout_s, retry)
    return new
