"""``move_units``: move dense blocks and sparse row buckets between running shards (``ps-admin move``,
``resize``, ``rebalance``), under a new placement map.

The steps (each shard's side: ``ps.shard.moves``; the rule: ``docs/placement.md``): read every
shard's map and take the newest; make the next version with the moves; every shard
installs it and gives the blocks it puts elsewhere (so pushes planned with the old map are
redirected); their owners take them; every shard drops the copies it kept. Workers keep training: a call planned with the old map is
refused unapplied (reason MOVED), and the client re-plans it with the new map.

Resumable: a move interrupted anywhere (the admin killed) is finished by the next
``ps-admin move`` (even with no new blocks to move): the newest map any shard holds is
settled first. A source keeps what it gave until the end, and a target takes a block once.

In async mode a large move goes in batches of about :data:`MOVE_BATCH_BYTES`, each under its
own map version, so a unit is refused to workers only while its own batch moves.
"""

from __future__ import annotations

import math
import os
import signal
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from ps._proto import ps_pb2
from ps.errors import DeadlineExceededError, FailedPreconditionError, InvalidArgumentError, UnavailableError
from ps.protocol.unit_wire import decode_units, encode_units
from ps.tables.placement import ROW_BUCKETS
from ps.tables.placement_map import PlacementMap, Unit
from worker.client.transport import RetryPolicy, ShardChannel, call, fan_out

#: bytes of blocks one Move message carries at most (about; at least one block): well under the
#: servers' message limit (``--max-message-bytes``, 64 MiB by default)
MOVE_PAGE_BYTES = 16 << 20

#: bytes of units (values and optimizer state) one map version moves at most in async mode
#: (about; at least one unit). A unit is refused to workers, who retry it within their call's
#: deadline, only while its own batch moves, so a large move is many short windows, never one
#: as long as the whole migration
MOVE_BATCH_BYTES = 64 << 20


def newest_placement(channels: Sequence[ShardChannel], timeout_s: float, retry: RetryPolicy) -> PlacementMap:
    """The newest placement map any shard holds (one Status call each). Blocks; raises
    PSError, FailedPreconditionError when no shard knows its topology yet."""
    return _cluster(channels, timeout_s, retry)[0]


def _cluster(channels: Sequence[ShardChannel], timeout_s: float, retry: RetryPolicy) -> tuple[PlacementMap, bool]:
    """:func:`newest_placement`, and whether the shards run in sync mode."""
    replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest()) for ch in channels], timeout_s, retry)
    maps = [PlacementMap.from_proto(r.placement) for r in replies if r.HasField("placement")]
    if not maps:
        raise FailedPreconditionError("no shard knows its topology yet: create a table first")
    return max(maps, key=lambda m: m.version), any(r.mode == ps_pb2.SYNC for r in replies)


def move_blocks(channels: Sequence[ShardChannel], moves: Mapping[tuple[str, int], int], timeout_s: float,
                retry: RetryPolicy = RetryPolicy(attempts=3), kill_after: str = "") -> PlacementMap:
    """Move dense block ``(table, block)`` to shard ``moves[...]`` for each entry: :func:`move_units`."""
    return move_units(channels, {(t, False, b): s for (t, b), s in moves.items()}, timeout_s, retry, kill_after)


def move_units(channels: Sequence[ShardChannel], moves: Mapping[Unit, int], timeout_s: float,
               retry: RetryPolicy = RetryPolicy(attempts=3), kill_after: str = "") -> PlacementMap:
    """Move unit ``(table, rows, index)`` (a dense block, or with ``rows`` a sparse table's row
    bucket) to shard ``moves[...]`` for each entry; returns the map installed. First finishes
    a move left half done (the newest map some shard holds). ``kill_after`` (fault injection
    for tests: "settle" or "take") SIGKILLs this process right after that step of the new
    move. In sync mode the move settles at a step boundary (:func:`hold_step_boundary`).
    Blocks (each call bounded by ``timeout_s``). Raises InvalidArgumentError for a shard or
    bucket out of range, PSError from the shards."""
    current, sync = _cluster(channels, timeout_s, retry)
    if current.num_shards != len(channels):
        raise InvalidArgumentError(f"the servers' map is for {current.num_shards} shards; {len(channels)} given")
    for (table, rows, index), shard in moves.items():
        if not 0 <= shard < len(channels):
            raise InvalidArgumentError(f"{table!r} {'row bucket' if rows else 'block'} {index}: no shard {shard} "
                                       f"among {len(channels)}")
    settle(channels, current, timeout_s, retry, sync=sync)
    return _in_batches(channels, current, dict(moves), timeout_s, retry, kill_after, sync)


def _in_batches(channels: Sequence[ShardChannel | None], current: PlacementMap, moves: Mapping[Unit, int],
                timeout_s: float, retry: RetryPolicy, kill_after: str = "", sync: bool = False) -> PlacementMap:
    """Settle ``moves`` on top of ``current`` (settled), one map version per batch of about
    :data:`MOVE_BATCH_BYTES` (sync mode: one batch, the move waits at one step boundary);
    returns the last map. ``kill_after`` applies to the first batch. Blocks; raises
    InvalidArgumentError (a shard or bucket out of range), PSError."""
    current.with_moves(moves)  # checks them: InvalidArgumentError for a shard or bucket out of range
    pending = {u: s for u, s in moves.items() if _owner(current, u) != s}
    if not pending:
        return current
    batches = [pending] if sync else _batches(pending, _unit_bytes(channels, timeout_s, retry))
    for k, batch in enumerate(batches):
        current = settle(channels, current.with_moves(batch), timeout_s, retry, kill_after if k == 0 else "",
                         sync=sync)
    return current


def _unit_bytes(channels: Sequence[ShardChannel | None], timeout_s: float, retry: RetryPolicy) -> dict[Unit, int]:
    """Every unit's bytes (values and optimizer state) where it is held (one Status call each)."""
    replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest(with_loads=True)) for ch in channels if ch is not None],
                      timeout_s, retry)
    return {(x.table, x.rows, int(x.block)): int(x.bytes) for r in replies for x in r.loads if not x.kept}


def _batches(moves: Mapping[Unit, int], sizes: Mapping[Unit, int]) -> list[dict[Unit, int]]:
    """``moves`` cut, in unit order, into runs of about :data:`MOVE_BATCH_BYTES` (at least one
    unit each; a unit of unknown size counts as empty). Pure."""
    batches: list[dict[Unit, int]] = [{}]
    size = 0
    for unit in sorted(moves):
        nbytes = sizes.get(unit, 0)
        if batches[-1] and size + nbytes > MOVE_BATCH_BYTES:
            batches.append({})
            size = 0
        batches[-1][unit] = moves[unit]
        size += nbytes
    return batches


def _owner(placement: PlacementMap, unit: Unit) -> int:
    table, rows, index = unit
    return int(placement.bucket_owners(table)[index]) if rows else placement.block_owner(table, index)


def settle(channels: Sequence[ShardChannel | None], placement: PlacementMap, timeout_s: float, retry: RetryPolicy,
           kill_after: str = "", indices: Sequence[int] | None = None,
           tables: Sequence[ps_pb2.TableSpec] = (), first: int = 0, sync: bool = False,
           clocks: tuple[int, Sequence[int]] = (0, ())) -> PlacementMap:
    """Make ``placement`` true everywhere: every shard installs it and gives the blocks it puts
    elsewhere (held, or kept from an interrupted move), their owners take them, every shard
    drops its kept copies. Idempotent: run again after any interruption, it finishes.

    A resize gives ``indices`` (per channel, its place in ``placement``; -1: it leaves) and the
    dense ``tables`` a new shard must create; the owners are then ``channels[indices.index(i)]``.
    The ``first`` channels settle one by one, then the others all at once; the takes go to
    their owners all at once. ``sync``: the shards (the ``first``, new to the cluster, apart)
    first hold their pushes at a common step boundary (:func:`hold_step_boundary`) and
    release them at the end; the new ones start at that boundary. Else a new shard starts
    its workers at ``clocks`` (ssp: :func:`ssp_clocks`). A None channel is a dead server a
    resize drops (never among the ``first``, never an owner): it is skipped. Blocks; raises
    PSError."""
    wire = placement.to_proto()
    live = [ch for ch in channels if ch is not None]
    step, workers = hold_step_boundary(live[first:], wire, timeout_s, retry) if sync else clocks
    requests = []
    for k in range(len(channels)):
        if channels[k] is None:  # a dead server a resize drops: its units come from the copies others kept
            continue
        request = ps_pb2.MoveRequest(placement=wire, settle=True, max_bytes=MOVE_PAGE_BYTES)
        if indices is not None:
            request.reshard, request.shard_index = True, indices[k]
            request.tables.extend(tables)
            request.hold_from = step
            request.workers.extend(workers)
        requests.append((channels[k], channels[k].move, request))
    replies = []
    for k in range(first):  # the new shards, one by one
        replies.append(call(*requests[k], timeout_s, retry))
        _fault(kill_after, "settle-first")  # mid-settle: one shard has the new map, the others not yet
    replies += fan_out(requests[first:], timeout_s, retry)
    for k, reply in enumerate(list(replies)):  # the later pages, one shard at a time (bounded: units only grow it)
        while reply.more:
            ch, method, request = requests[k]
            page = ps_pb2.MoveRequest()
            page.CopyFrom(request)
            page.skip = reply.next_skip
            reply = call(ch, method, page, timeout_s, retry)
            if reply.next_skip and reply.next_skip <= page.skip:
                raise FailedPreconditionError(f"{ch.address}: a Move page did not advance")
            replies.append(reply)
    _fault(kill_after, "settle")
    taken: dict[int, list[tuple[ps_pb2.UnitState, dict[str, np.ndarray]]]] = defaultdict(list)
    for reply in replies:
        for state, mine in zip(reply.units, decode_units(reply.payload, len(reply.units))):
            taken[_owner(placement, (state.unit.table, state.unit.rows, state.unit.index))].append((state, mine))
    takes = []
    for target, states in sorted(taken.items()):
        ch = channels[target if indices is None else list(indices).index(target)]
        for chunk in _pages(states):
            request = ps_pb2.MoveRequest(placement=wire)
            for state, _ in chunk:
                request.take.add().CopyFrom(state)
            request.payload = encode_units([mine for _, mine in chunk])
            takes.append((ch, ch.move, request))
    fan_out(takes, timeout_s, retry)
    _fault(kill_after, "take")
    fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, release=True, unhold=sync)) for ch in live],
            timeout_s, retry)
    return placement


def hold_step_boundary(channels: Sequence[ShardChannel], wire: ps_pb2.PlacementMap, timeout_s: float,
                       retry: RetryPolicy) -> tuple[int, list[int]]:
    """Sync mode: make every shard hold pushes from one step boundary B and wait until each
    applied every step before B, so no step's sum is pending anywhere while blocks move.
    First each shard holds from the first step not started on it and names it; B is the
    largest (a shard where step B - 1 started makes every shard finish it); then each holds
    from B and waits. Returns B and the workers live on any shard. Blocks (each call within
    ``timeout_s``); raises PSError (DeadlineExceededError naming whom a step waits for)."""
    first = fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, hold=True)) for ch in channels],
                    timeout_s, retry)
    step = max(int(r.hold_from) for r in first)
    replies = fan_out([(ch, ch.move, ps_pb2.MoveRequest(placement=wire, hold=True, hold_from=step))
                       for ch in channels], timeout_s, retry)
    return step, sorted({int(w) for r in replies for w in r.workers})


def _pages(states: list) -> list[list]:
    """``states`` cut into runs of about :data:`MOVE_PAGE_BYTES` (at least one each)."""
    pages: list[list] = [[]]
    size = 0
    for state in states:
        nbytes = sum(a.nbytes for a in state[1].values())
        if pages[-1] and size + nbytes > MOVE_PAGE_BYTES:
            pages.append([])
            size = 0
        pages[-1].append(state)
        size += nbytes
    return [p for p in pages if p]


def plan_resize(current: PlacementMap, old: Sequence[str], new: Sequence[str],
                specs: Sequence[ps_pb2.TableSpec]) -> PlacementMap:
    """The map after resizing shards ``old`` (placed by ``current``) to ``new`` (addresses): each
    dense table's blocks (each sparse table's row buckets) stay where they are while their
    shard stays and holds no more than its even share (``units // len(new)``, one more for
    the shards holding most when it does not divide); the others go to the shards furthest
    below their share. Every shard ends with its share. Pure."""
    index = {a: i for i, a in enumerate(new)}
    moved: dict[Unit, int] = {}
    for spec in specs:
        rows = spec.kind == ps_pb2.SPARSE
        owners = [_owner(current, unit) for unit in _units([spec])]
        staying = [index.get(old[owner]) for owner in owners]
        held = [staying.count(i) for i in range(len(new))]
        base, extra = divmod(len(owners), len(new))
        share = [base] * len(new)  # the shards holding most get the units left over: fewest moves
        for i in sorted(range(len(new)), key=lambda k: (-held[k], k))[:extra]:
            share[i] += 1
        counts = [0] * len(new)
        pending = []
        for b, i in enumerate(staying):
            if i is not None and counts[i] < share[i]:
                moved[(spec.name, rows, b)] = i
                counts[i] += 1
            else:
                pending.append(b)
        for b in pending:
            i = min(range(len(new)), key=lambda k: (counts[k] - share[k], k))
            moved[(spec.name, rows, b)] = i
            counts[i] += 1
    return PlacementMap(current.version + 1, len(new), moved, list(new))


def resize(channels: Mapping[str, ShardChannel], old: Sequence[str], new: Sequence[str], timeout_s: float,
           retry: RetryPolicy = RetryPolicy(attempts=3), kill_after: str = "") -> PlacementMap:
    """Change the shards from ``old`` to ``new`` (addresses; ``channels`` holds one per address of
    either) while workers train; returns the last map installed. A resize left half done (the
    same ``new``) is finished. Every mode; dense blocks and sparse row buckets move. Async and
    ssp in batches: a dropped server's units bound for a staying one first, under the old
    list; then the new list with every other unit in place (ssp: a new shard knows the
    workers' clocks); then the rest of the plan. Sync: one map, at a step boundary.
    ``kill_after``: as :func:`move_units` (for the map that installs the new list),
    "settle-first" (in the middle of its settle loop: after the first new server settled,
    before the others) or "batch-settle" (after the gives of the first batch that follows).
    A dropped server that does not answer (a new server that died in the middle of its
    resize, say) is left out, if every unit it held has a copy a live server kept.
    Blocks (each call bounded by ``timeout_s``). Raises InvalidArgumentError (duplicate
    addresses, servers that are not ``old``), FailedPreconditionError (a dead server held
    units no live server kept: lost; nothing changed), PSError."""
    old, new = list(old), list(new)
    if len(set(old)) != len(old) or len(set(new)) != len(new) or not new:
        raise InvalidArgumentError("--servers and --to must each list distinct addresses, --to at least one")
    # shards new to the cluster first: no shard hands out the new map before they can serve it
    union = [a for a in new if a not in old] + old
    dead = _unreachable([a for a in old if a not in new], channels, timeout_s, retry)
    statuses = fan_out([(channels[a], channels[a].status, ps_pb2.StatusRequest()) for a in union if a not in dead],
                       timeout_s, retry)
    maps = [PlacementMap.from_proto(r.placement) for r in statuses if r.HasField("placement")]
    if not maps:
        raise FailedPreconditionError("no shard knows its topology yet: create a table first")
    newest = max(maps, key=lambda m: m.version)
    specs = {t.spec.name: t.spec for r in statuses for t in [*r.tables, *r.sparse_tables]}
    tables = list(specs.values())
    sync = any(r.mode == ps_pb2.SYNC for r in statuses)
    if list(newest.addresses) == new:
        topology = newest  # a resize to `new` was started: finish it
    else:
        placed = list(newest.addresses) or old
        if placed != old:
            raise InvalidArgumentError(f"the servers are {','.join(placed)}, not {','.join(old)}")
        if dead:
            _check_recoverable(newest, old, dead, tables, channels, sync, timeout_s, retry)
        target = plan_resize(newest, old, new, tables)
        if not sync:  # what a dropped server hands to a server that stays moves first, in batches
            drain = {u: old.index(new[_owner(target, u)]) for u in _units(tables)
                     if old[_owner(newest, u)] not in new and new[_owner(target, u)] in old}
            newest = _in_batches([None if a in dead else channels[a] for a in old], newest, drain, timeout_s, retry)
        topology = target if sync else _topology(newest, old, new, target, tables)
    ordered = [None if a in dead else channels[a] for a in union]
    indices = [new.index(a) if a in new else -1 for a in union]
    settled = settle(ordered, topology, timeout_s, retry, "" if kill_after == "batch-settle" else kill_after, indices,
                     tables, first=sum(1 for a in new if a not in old), sync=sync, clocks=ssp_clocks(statuses))
    if sync:
        return settled
    final = plan_resize(settled, new, new, tables)
    return _in_batches([channels[a] for a in new], settled, {u: _owner(final, u) for u in _units(tables)},
                       timeout_s, retry, "settle" if kill_after == "batch-settle" else "")


def _unreachable(addresses: Sequence[str], channels: Mapping[str, ShardChannel], timeout_s: float,
                 retry: RetryPolicy) -> set[str]:
    """Those of ``addresses`` (servers a resize drops) that do not answer a Status, retried by
    ``retry`` (UNAVAILABLE or DEADLINE_EXCEEDED to the end: a dead server). Blocks."""
    dead = set()
    for address in addresses:
        try:
            call(channels[address], channels[address].status, ps_pb2.StatusRequest(), timeout_s, retry)
        except (UnavailableError, DeadlineExceededError):
            dead.add(address)
    return dead


def _check_recoverable(current: PlacementMap, old: Sequence[str], dead: set[str], specs: Sequence[ps_pb2.TableSpec],
                       channels: Mapping[str, ShardChannel], sync: bool, timeout_s: float, retry: RetryPolicy) -> None:
    """A resize that drops ``dead`` servers may go on only if every unit ``current`` places on
    them has a copy kept by a live server: a target that died in the middle of a move (the
    sources keep what they gave until the move is released). Raises FailedPreconditionError,
    changing nothing, naming the units only a dead server held (lost with it: restore the
    cluster from a checkpoint), or in sync mode (a step boundary needs every server)."""
    names = ", ".join(sorted(dead))
    if sync:
        raise FailedPreconditionError(f"{names} do(es) not answer; in sync mode a resize needs every server (a step "
                                      "boundary): restore the cluster from its last checkpoint")
    live = [channels[a] for a in old if a not in dead]
    replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest(with_loads=True)) for ch in live], timeout_s, retry)
    kept = {(x.table, x.rows, int(x.block)) for r in replies for x in r.loads if x.kept}
    lost = [u for u in _units(specs) if old[_owner(current, u)] in dead and u not in kept]
    if lost:
        shown = ", ".join(f"{t!r} {'bucket' if rows else 'block'} {k}" for t, rows, k in lost[:5])
        raise FailedPreconditionError(
            f"{names} do(es) not answer and held {len(lost)} unit(s) no live server keeps a copy of ({shown}"
            f"{', ...' if len(lost) > 5 else ''}): they are lost with it; nothing changed. Restore the cluster "
            "from its last checkpoint (docs/failure-semantics.md)")


def _units(specs: Sequence[ps_pb2.TableSpec]) -> list[Unit]:
    """Every dense block and sparse row bucket of ``specs``, in order."""
    out: list[Unit] = []
    for spec in specs:
        if spec.kind == ps_pb2.SPARSE:
            out += [(spec.name, True, k) for k in range(ROW_BUCKETS)]
        else:
            blocks = -(-math.prod(spec.shape) // spec.block_elems) if spec.block_elems else 0
            out += [(spec.name, False, b) for b in range(blocks)]
    return out


def _topology(current: PlacementMap, old: Sequence[str], new: Sequence[str], target: PlacementMap,
              specs: Sequence[ps_pb2.TableSpec]) -> PlacementMap:
    """The map that installs an async resize's ``new`` shard list: every unit kept by the
    server holding it now, except those still on servers ``new`` drops (bound for a server
    new to the cluster), which go where ``target`` puts them. The other moves toward
    ``target`` follow in batches. Pure."""
    moved: dict[Unit, int] = {}
    for unit in _units(specs):
        holder = old[_owner(current, unit)]
        moved[unit] = new.index(holder) if holder in new else _owner(target, unit)
    return PlacementMap(current.version + 1, len(new), moved, list(new))


def ssp_clocks(statuses: Sequence[ps_pb2.StatusReply]) -> tuple[int, list[int]]:
    """Ssp mode: the clock a new shard starts its workers at, and those workers: the live
    workers of the placed shards (those with a map), at the least clock any of them has on
    any such shard. A worker's clock only grows, so each worker's real clock is at least that:
    the new shard's pulls wait for them at most as long as the staleness bound needs, and
    their next push there brings them up to date. ``(0, [])`` in other modes. Pure."""
    placed = [r for r in statuses if r.HasField("placement") and r.mode == ps_pb2.SSP]
    live = [w for r in placed for w in r.workers if w.live]
    if not live:
        return 0, []
    return min(int(w.clock) for w in live), sorted({int(w.worker_id) for w in live})


def _fault(kill_after: str, step: str) -> None:
    """Fault injection (tests): SIGKILL this process right after ``step``."""
    if kill_after == step:
        os.kill(os.getpid(), signal.SIGKILL)


def plan_rebalance(loads: Sequence[Mapping[Unit, int]], ratio: float) -> dict[Unit, int]:
    """Moves that bring the busiest shard's load to at most ``ratio`` times the mean, where
    ``loads[s]`` maps each unit (block or row bucket) on shard ``s`` to its load: each move
    takes from the busiest shard to the least busy the unit that evens them best. Stops when
    the ratio holds or no move helps (at most one move per unit). Pure."""
    held = [dict(x) for x in loads]
    total = [sum(x.values()) for x in held]
    mean = sum(total) / len(total) if total else 0.0
    moves: dict[Unit, int] = {}
    for _ in range(sum(len(x) for x in held)):
        hi = max(range(len(total)), key=lambda s: total[s])
        lo = min(range(len(total)), key=lambda s: total[s])
        gap = total[hi] - total[lo]
        if mean <= 0 or total[hi] <= ratio * mean or gap <= 0:
            break
        helpful = [(load, unit) for unit, load in held[hi].items() if 0 < load < gap and unit not in moves]
        if not helpful:
            break
        load, unit = min(helpful, key=lambda x: (abs(gap / 2 - x[0]), x[1]))
        moves[unit] = lo
        del held[hi][unit]
        held[lo][unit] = load
        total[hi] -= load
        total[lo] += load
    return moves


def rebalance(channels: Sequence[ShardChannel], by: str, ratio: float, timeout_s: float,
              retry: RetryPolicy = RetryPolicy(attempts=3)) -> dict:
    """Move dense blocks and sparse row buckets until the busiest shard's load (``by``: "bytes"
    of values and optimizer state, or "accesses": pushes and pulls counted per block, rows
    pushed and pulled per row bucket) is at most ``ratio`` times the mean
    (``plan_rebalance``), with :func:`move_units`. Returns the loads' max/mean ratio before
    and after, the units moved and the map. Blocks; raises InvalidArgumentError,
    PSError."""
    if by not in ("bytes", "accesses") or not ratio >= 1.0:
        raise InvalidArgumentError(f"rebalance by bytes or accesses, to a ratio >= 1 (got {by!r}, {ratio})")

    def measure() -> list[dict[Unit, int]]:
        replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest(with_loads=True)) for ch in channels],
                          timeout_s, retry)
        return [{(x.table, x.rows, int(x.block)): int(x.bytes if by == "bytes" else x.accesses) for x in r.loads
                 if not x.kept}
                for r in replies]

    def skew(loads: list[dict]) -> float:
        totals = [sum(x.values()) for x in loads]
        mean = sum(totals) / len(totals)
        return max(totals) / mean if mean > 0 else 1.0

    before = measure()
    moves = plan_rebalance(before, ratio)
    placement = move_units(channels, moves, timeout_s, retry) if moves else newest_placement(channels, timeout_s,
                                                                                             retry)
    after = measure()  # a unit's access count moves with it
    return {"by": by, "before": skew(before), "after": skew(after), "moved": len(moves),
            "placement": placement.to_json()}
