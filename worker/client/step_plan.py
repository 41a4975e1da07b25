"""``StepPlanner``: how a step is cut into calls, the :class:`~worker.planes.part.Part` plan."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ps.tables.sparse_spec import SparseTableSpec
from worker.planes.local_plane import LOCAL_MAX_PARTS
from worker.planes.part import Part

if TYPE_CHECKING:
    from worker.client.table_directory import TableDirectory


#: in async mode, parts to a shard over gRPC or TCP are at most this big (or ``part_bytes``, if
#: smaller; or one block, where a table's blocks are bigger), so that a plane's few parts in flight (``worker.planes.in_flight``) overlap the
#: shard's update of one part with the transfer of the next. A whole 16 MiB part did not
#: overlap at all. Measured (bench.peers.project --part-kib, one shard, loopback, 2 cores),
#: GB/s at 16 / 128 MiB: TCP plane 2.0 / 2.5-2.7 with 16 MiB parts, 2.9-3.2 / 3.1-3.2 with
#: 2 MiB; gRPC 0.73-0.78 / 1.04-1.10 and 1.26-1.29 / 1.37-1.42. 1 MiB parts were slower again
#: and 4-8 MiB in between. The shard's peak RSS / state (bench.memory, 256 MiB Adam) over gRPC:
#: 1.46 with 16 MiB parts, 1.19 with 2 MiB. Sync and ssp steps keep ``part_bytes`` parts: all
#: of their parts are in flight at once, each holding a shard thread or connection.
PIPELINE_PART_BYTES = 2 << 20


class StepPlanner:
    """Plans the parts of dense, sparse and mixed steps, one shard's blocks at a time.

    Dense parts are formed the way a shard selects pull parts (block index modulo the
    number of parts), so part *k* of a fused step pulls exactly the blocks it pushed: a
    worker always reads its own update. Over gRPC and TCP the number of parts grows until
    every part fits ``part_bytes`` (a message limit); on the same-host plane parts are
    ``local_part_bytes`` big (smaller parts pipeline the worker's copies with the shard's
    work), and async parts over gRPC and TCP are at most :data:`PIPELINE_PART_BYTES` big, or
    one block where blocks are bigger (for the same reason). In sync and ssp mode every shard gets a part every step, because
    each step must hear from every worker. Rows go ``part_bytes`` at a time, as parts of the
    same step.

    Pure: no I/O. Dense plans are remembered per (tables, planes, mode), so a training
    loop plans once. Not thread-safe (one Client).
    """

    def __init__(self, directory: TableDirectory, num_shards: int, part_bytes: int, local_part_bytes: int) -> None:
        self._directory = directory
        self._num_shards = num_shards
        self._part_bytes = part_bytes
        self._local_part_bytes = local_part_bytes
        self._plans: dict[tuple, list[Part] | None] = {}

    def reshard(self, num_shards: int) -> None:
        """The cluster has ``num_shards`` shards now (a resize): plans are made again."""
        self._num_shards = num_shards
        self._plans.clear()

    def dense(self, push: tuple[str, ...] | None, pull: tuple[str, ...] | None, local: tuple[bool, ...],
              mode: str) -> list[Part] | None:
        """The parts of a step that pushes blocks of ``push`` and pulls ``pull`` (None: neither),
        ``local[shard]`` telling which shards are on a pipelined plane (same-host): part 0 of every
        shard, then part 1, ... so that every shard gets work early. None when a fused part
        cannot fit one message (then push, then pull)."""
        key = (push, pull, local, mode, len(self._directory.specs), self._directory.placement.version)
        if key not in self._plans:
            if len(self._plans) > 64:
                self._plans.clear()
            planned = self._plan(push, pull, local, mode)
            if planned is not None:
                planned.sort(key=lambda p: (p.part, p.shard))
            self._plans[key] = planned
        return self._plans[key]

    def _bytes(self, name: str, b: int) -> int:
        spec = self._directory.specs[name]
        start, stop = spec.block_range(b)
        return (stop - start) * np.dtype(spec.dtype).itemsize

    def _num_parts(self, blocks: list[tuple[str, int]], tables: list[str], bound: int) -> int | None:
        """Smallest n with every modulo-n group of ``blocks`` within ``bound`` bytes; None when
        even one block per table per part does not fit."""
        most = max((self._directory.specs[name].num_blocks for name in tables), default=1)
        n = max(1, -(-sum(self._bytes(name, b) for name, b in blocks) // bound))
        while True:
            sizes = [0] * n
            for name, b in blocks:
                sizes[b % n] += self._bytes(name, b)
            if max(sizes) <= bound:
                return n
            if n >= most:
                return None
            n = min(most, max(n + 1, int(n * 1.25)))

    def _plan(self, push, pull, local, mode) -> list[Part] | None:
        parts: list[Part] = []
        tables = sorted(set(push or ()) | set(pull or ()))
        for shard in range(self._num_shards):
            blocks = [(name, b) for name in tables for b in self._directory.blocks(name, shard)]
            if local[shard]:
                # no message limit here; in async mode parts queue on LOCAL_MAX_PARTS connections
                # (shard threads). Where a pull may wait for other workers (sync, ssp) a queued
                # part could wait on the one before it: every part gets its own connection.
                n = max(1, -(-sum(self._bytes(name, b) for name, b in blocks) // self._local_part_bytes))
                if mode != "async":
                    n = min(n, LOCAL_MAX_PARTS)
            else:
                bound = self._part_bytes
                if mode == "async":  # pipeline parts, though never smaller than a block
                    largest = max((self._bytes(name, b) for name, b in blocks), default=0)
                    bound = min(bound, max(PIPELINE_PART_BYTES, largest))
                n = self._num_parts(blocks, tables, bound)
            if n is None:
                if push is not None and pull is not None:
                    return None
                n = max(1, self._directory.specs[tables[0]].num_blocks)
            for k in range(n):
                mine = tuple(x for x in blocks if x[1] % n == k and x[0] in push) if push is not None else None
                pulled = tuple(x for x in blocks if x[1] % n == k and x[0] in pull) if pull is not None else ()
                if mine is not None and not mine and mode == "async":
                    mine = None  # nothing to apply here; sync and ssp need every part every step
                if mine is not None or pulled:
                    parts.append(Part(shard, k, n, mine, pull if pulled else None, pulled))
        return parts

    def with_rows(self, dense: list[Part], rows: Sequence[tuple[SparseTableSpec, np.ndarray, np.ndarray]],
                  ) -> list[Part]:
        """A push step: the pushing ``dense`` parts and ``rows`` (per sparse table: unique ids
        and their summed gradient rows), renumbered per shard. A shard's part that pushes
        no block goes only where the shard gets no rows either (sync and ssp)."""
        per_shard: list[list[Part]] = [[] for _ in range(self._num_shards)]
        for spec, ids, grads in rows:
            per_call = max(1, self._part_bytes // (spec.row_bytes + 8))
            for shard, positions in enumerate(self.row_positions(spec.name, ids)):
                for start in range(0, len(positions), per_call):
                    sel = positions[start:start + per_call]
                    per_shard[shard].append(Part(shard, 0, 0, table=spec.name, ids=ids[sel],
                                                 values=np.take(grads, sel, axis=0)))
        planned: list[list[Part]] = [[] for _ in range(self._num_shards)]
        for p in dense:
            if p.push or not per_shard[p.shard]:
                planned[p.shard].append(p)
        out = []
        for shard in range(self._num_shards):
            mine = planned[shard] + per_shard[shard]
            out += [Part(shard, k, len(mine), p.push, None, (), p.table, p.ids, p.values) for k, p in enumerate(mine)]
        return out

    def rows_pull(self, spec: SparseTableSpec, ids: np.ndarray) -> list[Part]:
        """The parts that pull rows ``ids`` (unique), ``part_bytes`` of rows at a time; each
        lands at its positions (``target``) in ``ids``."""
        per_call = max(1, self._part_bytes // max(spec.row_bytes, 8))
        return [Part(shard, 0, 1, table=spec.name, ids=ids[positions[i:i + per_call]],
                     target=positions[i:i + per_call])
                for shard, positions in enumerate(self.row_positions(spec.name, ids))
                for i in range(0, len(positions), per_call)]

    def replan(self, moved: Sequence[Part], local: tuple[bool, ...], mode: str) -> list[Part]:
        """The parts that redo, under the directory's (newer) placement map, what ``moved`` (parts
        a shard refused unapplied: reason MOVED) would have done: their gradient blocks and
        rows go to their owners now, ``part_bytes`` at a time (in sync mode numbered per shard,
        every shard getting one: a sync move refuses a step's pushes whole); their dense pulls pull those
        tables again whole; their row pulls go to the rows' owners, landing where they would
        have. Pure."""
        pulled = tuple(sorted({t for p in moved if p.pull for t in p.pull}))
        if mode == "sync" and pulled and all(p.push is not None and not p.table for p in moved):
            # a sync push-pull refused whole (a move settles between steps): fused again, so that no
            # shard sees the step's pull before its push (the pull would abstain from the step)
            fused = self.dense(tuple(sorted({name for p in moved for name, _ in p.push})), pulled, local, mode)
            if fused is not None:
                return fused
        out: list[Part] = []
        pushed = [x for p in moved if p.push for x in p.push]
        owners = self._directory.placement
        by_shard: list[list[tuple[str, int]]] = [[] for _ in range(self._num_shards)]
        for name, b in pushed:
            by_shard[owners.block_owner(name, b)].append((name, b))
        for shard, blocks in enumerate(by_shard):
            chunk: list[tuple[str, int]] = []
            size = 0
            for x in blocks:
                if chunk and size + self._bytes(*x) > self._part_bytes:
                    out.append(Part(shard, 0, 1, tuple(chunk)))
                    chunk, size = [], 0
                chunk.append(x)
                size += self._bytes(*x)
            if chunk:
                out.append(Part(shard, 0, 1, tuple(chunk)))
        if pulled:
            out += [Part(p.shard, p.part, p.num_parts, None, p.pull, p.pull_blocks)
                    for p in self.dense(None, pulled, local, mode) or ()]
        for p in moved:
            if not p.table:
                continue
            spec = self._directory.sparse_spec(p.table)
            if p.values is not None:
                out += self.with_rows([], [(spec, p.ids, p.values)])
            else:
                out += [Part(q.shard, 0, 1, table=q.table, ids=q.ids, target=p.target[q.target])
                        for q in self.rows_pull(spec, p.ids)]
        if mode == "sync" and any(p.pushes for p in moved):
            # a sync move settles between steps, so a step's pushes were refused whole: each shard
            # must hear once per step, its pushing parts numbered 0..n-1 (an empty one if none)
            per_shard = [[q for q in out if q.pushes and q.shard == s] or [Part(s, 0, 1, ())]
                         for s in range(self._num_shards)]
            out = [q for q in out if not q.pushes] + [
                Part(s, k, len(mine), q.push, None, (), q.table, q.ids, q.values)
                for s, mine in enumerate(per_shard) for k, q in enumerate(mine)]
        return out

    def row_positions(self, name: str, ids: np.ndarray) -> list[np.ndarray]:
        """Positions into ``ids`` per shard (each ascending)."""
        if self._num_shards == 1:
            return [np.arange(len(ids))]
        shard_of = self._directory.placement.row_shards(name, ids)
        small = np.uint8 if self._num_shards <= 256 else np.uint32  # a stable radix sort on small ints
        order = np.argsort(shard_of.astype(small), kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(self._num_shards + 1))
        return [order[bounds[s]:bounds[s + 1]] for s in range(self._num_shards)]
