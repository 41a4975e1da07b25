"""The sparse side of one shard: its sparse tables and the row verbs, without networking.

:class:`SparseRows` is a part of a :class:`~ps.shard.shard.Shard` (``shard.rows``) that goes
through the shard's :class:`~ps.shard.sequencer.Sequencer` (consistency gate, dedup table,
counters, lock), so a ``PushRows`` message is one *part* of a worker's push for a step
exactly like a dense ``Push`` message: a worker's step on a shard may be any mix of dense
and row messages, and ``num_parts`` counts them all. In sync mode row pushes are kept per
table and applied, summed per id and scaled by 1 / contributors, when the step completes
(:meth:`apply_step`, a :class:`~ps.shard.sequencer.StepPart`); in async and ssp modes they
apply on arrival.

Thread-safe. The sequencer's lock guards the bookkeeping and is never held while arrays
are touched; each sparse table has its own lock for that.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ps.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Reason,
    ResourceExhaustedError,
)
from ps.tables.placement import row_buckets
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.sparse_table import SparseTable, sum_duplicates
from ps.tables.spec import exists_alike
from ps.shard.consistency import Wait
from ps.shard.membership import Membership
from ps.shard.memory_budget import MemoryBudget
from ps.shard.sequencer import PushResult, Sequencer

if TYPE_CHECKING:
    from ps.tables.placement_map import PlacementMap

log = logging.getLogger(__name__)


class RowPlacer(Protocol):
    """What the row verbs need of the shard's placement (``ps.shard.shard.Shard``; every
    method but ``done_admitted`` with the sequencer's lock held): the MOVED refusal of a
    call, the map, and the admission of a push (held at a sync move's step boundary, or
    refused, or counted per map version for a bucket move to wait for)."""

    retired: bool

    def moved_error(self, version: int, what: str = "") -> FailedPreconditionError | None: ...

    def current_placement(self) -> PlacementMap | None: ...

    def admit_push(self, step: int, placement_version: int, elsewhere: str, admitted: list[int]) -> Wait | None: ...

    def done_admitted(self, version: int) -> None: ...


def clip_rows(grads: np.ndarray, max_norm: float) -> np.ndarray:
    """Each row scaled down to L2 norm <= ``max_norm`` (norms in float64); ``grads`` is not
    modified (it may be a read-only view of the received bytes)."""
    norms = np.sqrt(np.einsum("ij,ij->i", grads, grads, dtype=np.float64))
    over = norms > max_norm
    if not over.any():
        return grads
    scale = np.ones(len(grads))
    scale[over] = max_norm / norms[over]
    return (grads * scale[:, None]).astype(grads.dtype, copy=False)


class SparseRows:
    """Sparse tables of one shard. Thread-safe; construction does no I/O. ``dense``: the
    shard's dense tables (a name is either kind, never both); ``budget``: the shard's memory
    budget, within which every table grows (None: unbounded)."""

    def __init__(self, steps: Sequencer, membership: Membership, dense: Mapping[str, object],
                 budget: MemoryBudget | None = None) -> None:
        self._steps = steps
        self.budget = budget  # every table grows within it (ps.shard.memory_budget)
        self._members = membership
        self._dense = dense
        self.tables: dict[str, SparseTable] = {}
        self._pending: set[SparseTable] = set()   # sync: tables with rows kept for this step
        #: the shard's placement (MOVED refusals, the map, admitted pushes); None: rows are
        #: checked against the tables' default placement only (a shard without moves)
        self.placer: RowPlacer | None = None

    # -- tables -------------------------------------------------------------------------

    def create(self, spec: SparseTableSpec) -> bool:
        """Create the sparse table, or accept an identical spec. Returns True if created.

        Raises AlreadyExistsError for another spec (or a dense table) under the same
        name, FailedPreconditionError before the shard's topology is known.
        """
        spec.validate()
        with self._steps.lock:
            if self._members.topology is None:
                raise FailedPreconditionError("shard topology unknown: register or give it with the request")
            if exists_alike(spec, self.tables, self._dense, "dense"):
                return False
            index, count = self._members.topology
            table = SparseTable(spec, index, count, self.budget)  # rows are lazy: cheap
            placement = self.placer.current_placement() if self.placer is not None else None
            if placement is not None:  # after a resize the map may differ from the topology's rule
                table.held = placement.bucket_owners(spec.name) == (-1 if self.placer.retired else index)
            self.tables[spec.name] = table
            return True

    def adopt(self, table: SparseTable) -> None:
        """Install a restored table (e.g. from a checkpoint), replacing one of the same name."""
        table.budget = self.budget
        with self._steps.lock:
            self.tables[table.spec.name] = table

    def table(self, name: str) -> SparseTable:
        """Raises NotFoundError for an unknown table, FailedPreconditionError for a dense one."""
        table = self.tables.get(name)
        if table is None:
            if name in self._dense:
                raise FailedPreconditionError(f"table {name!r} is dense: use pull/push, not the row verbs")
            raise NotFoundError(f"unknown table {name!r}", reason=Reason.UNKNOWN_TABLE)
        return table

    # -- push and pull ------------------------------------------------------------------

    def push(self, worker: int, seq: int, step: int, part: int, num_parts: int, name: str,
             ids: np.ndarray, grads: np.ndarray, timeout_s: float, session: int = 0,
             placement_version: int = 0) -> PushResult:
        """Apply, keep for the sync step, or drop one row push (one part of a worker's step).

        ``ids`` int64 (n,), ``grads`` (n, dim) of the table's dtype; duplicates are summed.
        Follows the shard's config like a dense push: ``nonfinite`` (refuse, skip the whole
        message, or allow) and ``clip_norm`` (each row's summed gradient scaled to L2 norm
        <= clip_norm, so the result does not depend on the shard count or message split).
        Blocks up to ``timeout_s`` in sync mode. Raises InvalidArgumentError (row width,
        dtype, lengths, non-finite values, part numbers), NotFoundError (unknown table),
        FailedPreconditionError (dense table, unregistered worker, rows placed on another
        shard, second contribution to a step, a fenced ``session``: see ``Membership.admit_push``),
        DeadlineExceededError, ResourceExhaustedError (async/ssp: new rows that the memory
        budget has no room for, in a table without ``max_rows``; see ``SparseTable``). A push
        not seen before that was planned with another placement map (``placement_version``; 0:
        not checked) is refused unapplied: FailedPreconditionError, reason MOVED. A refused
        push changes nothing. Exactly once per ``(worker, seq)``.
        """
        steps = self._steps
        deadline = steps.clock() + min(timeout_s, steps.config.sync_timeout_s)
        try:
            if seq < 1:
                raise InvalidArgumentError(f"sequence numbers start at 1, got {seq}")
            table = self.table(name)
            table.check_push(ids, grads, refuse_nonfinite=steps.config.nonfinite == "refuse",
                             placed=self.placer is None)
        except Exception:
            with steps.lock:
                steps.counters["refused"] += 1
            raise
        buckets = row_buckets(name, ids) if self.placer is not None else None
        skip = steps.config.nonfinite == "skip" and not np.isfinite(grads).all()
        if steps.config.clip_norm and not skip:
            ids, grads = sum_duplicates(ids, grads)
            grads = clip_rows(grads, steps.config.clip_norm)

        def update(accumulate: bool) -> None:
            if accumulate:
                table.accumulate(ids, grads)
            else:
                table.apply(ids, grads)

        def remember() -> None:
            self._pending.add(table)

        admitted: list[int] = []

        def admit() -> Wait | None:  # lock held: after the duplicate check, before anything is applied
            if self.placer is None:
                return None
            # held at a sync move's step boundary as a dense push is (no row sum pending when
            # buckets move), else refused if placed elsewhere, else counted: a give waits for it
            return self.placer.admit_push(step, placement_version, table.elsewhere(ids, buckets), admitted)

        try:
            result = steps.run_push(worker, seq, step, part, num_parts, deadline, skip=skip, update=update,
                                    remember=remember, session=session, admit=admit)
        finally:
            if admitted:
                self.placer.done_admitted(admitted[0])
        if result.outcome in ("applied", "accumulated"):
            with steps.lock:
                steps.counters["row_pushes"] += 1
            if buckets is not None:
                table.count_accesses(buckets)
        return result

    def _check_placement(self, version: int, table: SparseTable, ids: np.ndarray,
                         buckets: np.ndarray | None) -> None:
        """Lock held: raise MOVED for a call planned with another map than the shard's, or
        naming rows in buckets the shard does not hold (moved away, or not arrived yet)."""
        if self.placer is None:
            return
        refusal = self.placer.moved_error(version, table.elsewhere(ids, buckets) if buckets is not None else "")
        if refusal is not None:
            raise refusal

    def pull(self, worker: int, step: int, name: str, ids: np.ndarray, timeout_s: float,
             placement_version: int = 0) -> tuple[int, np.ndarray]:
        """Rows ``ids`` of table ``name`` as ``(version, (len(ids), dim) array)``.

        Rows never pushed (or evicted, or not admitted) read as their initial values. Waits
        (bounded) in sync mode for version >= ``step`` and in ssp mode for the staleness
        bound; readers with ``worker < 0`` never wait. Raises NotFoundError,
        FailedPreconditionError (dense table, rows placed elsewhere; reason MOVED: planned with
        another placement map than this shard's), InvalidArgumentError, DeadlineExceededError.
        """
        steps = self._steps
        deadline = steps.clock() + min(timeout_s, steps.config.sync_timeout_s)
        table = self.table(name)
        if ids.ndim != 1 or ids.dtype != np.int64:
            raise InvalidArgumentError(f"{name}: ids must be a 1-D int64 array")
        reply_bytes = len(ids) * table.spec.dim * np.dtype(table.spec.dtype).itemsize
        if reply_bytes > steps.config.max_message_bytes:  # checked before anything is allocated
            raise ResourceExhaustedError(f"{name}: {len(ids)} rows of {table.spec.dim} would make a reply of "
                                         f"{reply_bytes} bytes, over max-message-bytes "
                                         f"{steps.config.max_message_bytes}: pull fewer ids per call")
        table.check_ids(ids, placed=self.placer is None)
        buckets = row_buckets(name, ids) if self.placer is not None else None
        with steps.lock:
            version = steps.await_pull(  # a map installed while the pull waits redirects it at once
                worker, step, deadline, lambda: self._check_placement(placement_version, table, ids, buckets))
        values = table.read(ids)
        with steps.lock:
            self._check_placement(placement_version, table, ids, buckets)  # a bucket may have moved meanwhile
            steps.counters["row_pulls"] += 1
        if buckets is not None:
            table.count_accesses(buckets)
        return version, values

    def list(self, name: str, after: int | None, max_rows: int) -> tuple[int, np.ndarray, np.ndarray]:
        """One page of table ``name``'s stored rows: ``(version, ids, values)``, ascending by
        id, ids > ``after`` (all when None), at most ``max_rows`` (0: no count limit) and
        no more than fit half of ``max_message_bytes``. Never waits: it reads the rows as
        they are (an export). Raises NotFoundError, FailedPreconditionError (dense table),
        InvalidArgumentError (negative ``max_rows``).
        """
        steps = self._steps
        table = self.table(name)
        if max_rows < 0:
            raise InvalidArgumentError(f"{name}: max_rows must be >= 0, got {max_rows}")
        fit = max(1, (steps.config.max_message_bytes // 2) // (8 + table.spec.row_bytes))
        ids, values = table.list_rows(after, min(max_rows, fit) if max_rows else fit)
        with steps.lock:
            version = steps.gate.version
        return version, ids, values

    # -- sync steps and status ----------------------------------------------------------

    def apply_step(self, scale: float) -> None:
        """Sync: apply every table's kept rows for the completed step (called by the sequencer)."""
        with self._steps.lock:
            pending, self._pending = self._pending, set()
        for table in pending:
            table.apply_accumulated(scale)

    def discard_step(self) -> None:
        """Forget every table's rows kept for the open sync step (e.g. on a restore)."""
        with self._steps.lock:
            pending, self._pending = self._pending, set()
        for table in pending:
            table.discard_accumulated()

    def status(self) -> list[tuple[SparseTableSpec, int, int, int]]:
        """``(spec, rows, bytes, evicted)`` per sparse table, for the Status call."""
        return [(t.spec, t.rows, t.nbytes, t.counters["evicted"]) for t in list(self.tables.values())]

    def counters(self) -> dict[str, int]:
        """Row counters summed over this shard's sparse tables: ``rows_created``, ``rows_evicted``,
        ``rows_not_admitted`` (row pushes dropped by admission), ``rows_pushed``, ``rows_pulled``."""
        out: dict[str, int] = {}
        for t in list(self.tables.values()):
            for k, v in t.counters.items():
                out[f"rows_{k}"] = out.get(f"rows_{k}", 0) + v
        return out

    def names(self) -> Sequence[str]:
        return list(self.tables)
