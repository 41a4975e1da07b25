"""A sparse table's rows on one shard: values, per-row optimizer state, eviction, admission.

:class:`SparseTable` stores the rows this shard owns in contiguous NumPy arrays indexed
by slot (``values`` is ``(capacity, dim)``; each optimizer state array is ``(capacity,
dim)`` or ``(capacity,)``), with a :class:`~ps.tables.row_index.RowIndex` from id to slot. Every
operation works on a whole batch of ids with array operations; no Python code runs per
row. Arrays grow by 1.25x when full (never past ``max_rows`` plus one request's new rows),
so allocated but unused rows stay under a quarter of the live ones.

Semantics:

- A row is created on the first push that touches it (initial values from the spec,
  fresh optimizer state), then updated. A read of a row that is not stored returns its
  initial values without storing anything, so reading is free of side effects on memory.
- Duplicate ids in one push are summed first; the optimizer then updates each touched
  row once. Rows not in a push do not change.
- ``max_rows`` > 0: when a push leaves more than ``max_rows`` rows stored, rows are
  evicted down to ``max_rows - max_rows // 32`` (the slack makes eviction amortised). The
  victims are the least recently used (``lru``: the oldest last read or push) or least
  frequently used (``lfu``: fewest reads plus pushes, the older first on ties), never a
  row of the push being applied unless that push alone created more than the target. An
  evicted row loses its values and optimizer state and reads as its initial row again.
- ``admit_after`` = k > 1: pushes are counted per id (:class:`~ps.tables.admission.AdmissionSketch`);
  a push to an id that is not stored and has been pushed fewer than k times (this push
  included) is dropped for that row and counted in ``not_admitted``. The k-th push stores
  and applies it.
- Sync steps: :meth:`accumulate` keeps each push's rows; :meth:`apply_accumulated` sums
  them per id, scales the sum (by 1 / contributing workers) and applies it once.
- ``budget`` (the shard's :class:`~ps.shard.memory_budget.MemoryBudget`): the arrays grow
  only within it. When new rows do not fit, a table with ``max_rows`` evicts its least used
  rows (as above) to make room; otherwise :meth:`apply` refuses the whole push with
  ResourceExhaustedError and changes nothing (its ids still count for admission), and
  :meth:`apply_accumulated` (a sync step, already acknowledged) stores the new rows that fit
  and counts the others as ``refused`` (they read as their initial rows).

Thread-safe: one lock per table guards its arrays (never held across the network path).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ps.tables.admission import AdmissionSketch
from ps.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from ps.tables.placement import ROW_BUCKETS, bucket_owners, row_buckets
from ps.tables.row_index import RowIndex
from ps.tables.sparse_optim import RowOptimizer, gather_rows, scatter_rows
from ps.tables.sparse_spec import SparseTableSpec
from ps.protocol.wire import dtype_refusal

if TYPE_CHECKING:
    from ps.shard.memory_budget import MemoryBudget

#: on overflow, evict this fraction of max_rows beyond what is needed
EVICT_SLACK = 1 / 32
#: index bytes a slot may cost: its id (8) and, at worst, its share of the buckets (int32
#: at as little as 0.315 load: ~13; ps.tables.row_index), rounded up
INDEX_SLOT_BYTES = 24
#: ids per message checked for placement on this shard (a misrouting client sends ~all wrong)
PLACEMENT_SAMPLE = 64
_COUNTERS = ("created", "evicted", "not_admitted", "pushed", "pulled", "refused")


def sum_duplicates(ids: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``ids`` and the per-id sums of ``grads`` rows (first axis).

    Returns the inputs themselves when ``ids`` is already strictly increasing (no copy).
    Equal ids are summed in an order fixed by the input (deterministic, not necessarily
    the order of appearance).
    """
    if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return ids, grads
    order = np.argsort(ids)
    s = ids[order]
    ordered = np.take(grads, order, axis=0)
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    if len(starts) == len(s):
        return s, ordered
    return s[starts], np.add.reduceat(ordered, starts, axis=0)


def unique_inverse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted unique ids, inverse)`` with ``unique[inverse] == ids``; like ``np.unique``
    with ``return_inverse`` but on a quicksort (several times faster for int64 here)."""
    if len(ids) == 0:
        return ids.copy(), np.zeros(0, dtype=np.int64)
    order = np.argsort(ids)
    s = ids[order]
    first = np.empty(len(s), dtype=bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    inverse = np.empty(len(s), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return s[first], inverse


class SparseTable:
    """The rows of one sparse table that one shard owns. Thread-safe."""

    def __init__(self, spec: SparseTableSpec, shard_index: int = 0, num_shards: int = 1,
                 budget: MemoryBudget | None = None) -> None:
        spec.validate()
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise InvalidArgumentError(f"shard {shard_index} of {num_shards} is impossible")
        self.spec = spec
        self.budget = budget  # the shard's memory budget: growth past it evicts or refuses (None: unbounded)
        self.shard_index = shard_index
        self.num_shards = num_shards
        #: the row buckets (``ps.tables.placement``) this shard holds: the default rule's at first;
        #: bucket moves change it (``take_buckets``/``put_buckets``, under the shard's lock)
        self.held = bucket_owners(spec.name, num_shards) == shard_index
        #: rows pushed or pulled per bucket here (ps-admin rebalance --by accesses; moves with the bucket)
        self.bucket_accesses = np.zeros(ROW_BUCKETS, dtype=np.int64)
        self.lock = threading.Lock()
        self.optimizer = RowOptimizer(spec.optimizer)
        self._dtype = np.dtype(spec.dtype)
        self._layout = self.optimizer.state_layout(spec.dim, self._dtype)
        self.index = RowIndex()
        self.values = np.zeros((0, spec.dim), dtype=self._dtype)
        self.state = {name: np.zeros((0, *shape), dtype=dt) for name, (shape, dt, _) in self._layout.items()}
        bounded = spec.max_rows > 0
        self.last_used = np.zeros(0, dtype=np.int64) if bounded else None
        self.hits = np.zeros(0, dtype=np.uint32) if bounded and spec.eviction == "lfu" else None
        self.sketch = AdmissionSketch() if spec.admit_after > 1 else None
        self.tick = 0
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    # -- sizes -------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows stored on this shard."""
        return self.index.live

    @property
    def nbytes(self) -> int:
        """Bytes this table holds: row values, optimizer state, index, eviction and admission data.

        Counts allocated capacity, not just live rows.
        """
        total = self.values.nbytes + sum(a.nbytes for a in self.state.values()) + self.index.nbytes
        for extra in (self.last_used, self.hits, self.sketch):
            total += extra.nbytes if extra is not None else 0
        return total

    @property
    def raw_row_bytes(self) -> int:
        """Bytes of one row's id, values and optimizer state, with no overhead."""
        state = sum(int(np.prod(shape, dtype=np.int64)) * dt.itemsize for shape, dt, _ in self._layout.values())
        return 8 + self.spec.row_bytes + state

    # -- checks ------------------------------------------------------------------------

    def check_ids(self, ids: np.ndarray, placed: bool = True) -> None:
        """Raises InvalidArgumentError for an id outside ``[0, num_rows)`` (a table that
        declares ``num_rows``), FailedPreconditionError when (``placed``) sampled ids are in
        row buckets this shard does not hold (a shard checks every id after its duplicate
        check instead: :meth:`elsewhere`)."""
        if len(ids) and self.spec.num_rows and (int(ids.min()) < 0 or int(ids.max()) >= self.spec.num_rows):
            bad = ids[(ids < 0) | (ids >= self.spec.num_rows)]
            raise InvalidArgumentError(f"{self.spec.name}: id {int(bad[0])} is outside [0, {self.spec.num_rows}), "
                                       f"the table's rows")
        if not placed or len(ids) == 0 or self.held.all():
            return
        sample = ids[:: max(1, len(ids) // PLACEMENT_SAMPLE)]
        wrong = self.elsewhere(sample, row_buckets(self.spec.name, sample))
        if wrong:
            raise FailedPreconditionError(wrong)

    def elsewhere(self, ids: np.ndarray, buckets: np.ndarray) -> str:
        """"" when every row of ``ids`` (their ``buckets``: ``row_buckets``) is in a bucket this
        shard holds, else a message naming the first that is not. Does not block; read it
        under the lock that guards bucket moves."""
        if len(buckets) == 0:
            return ""
        wrong = np.flatnonzero(~self.held[buckets])
        if not len(wrong):
            return ""
        return (f"{self.spec.name}: row {int(ids[wrong[0]])} (row bucket {int(buckets[wrong[0]])}) is not on "
                f"this shard")

    def count_accesses(self, buckets: np.ndarray) -> None:
        """Count one access per entry of ``buckets`` (a push's or pull's rows). Takes the table lock."""
        counts = np.bincount(buckets, minlength=ROW_BUCKETS)
        with self.lock:
            self.bucket_accesses += counts

    def bucket_loads(self) -> list[tuple[int, int, int]]:
        """``(bucket, bytes, accesses)`` of every held bucket with rows or accesses: bytes of its
        rows' values and optimizer state (``raw_row_bytes`` each). O(stored rows); takes the lock."""
        with self.lock:
            ids = self.index.slot_ids[self.index.live_slots()]
            rows = np.bincount(row_buckets(self.spec.name, ids), minlength=ROW_BUCKETS)
            accesses = self.bucket_accesses.copy()
            held = self.held.copy()
        per_row = self.raw_row_bytes
        return [(int(k), int(rows[k]) * per_row, int(accesses[k]))
                for k in np.flatnonzero(held & ((rows > 0) | (accesses > 0)))]

    def check_push(self, ids: np.ndarray, grads: np.ndarray, refuse_nonfinite: bool = True,
                   placed: bool = True) -> None:
        """Check a push fits the table (``placed``: and sampled rows are held here, see
        :meth:`check_ids`). Raises InvalidArgumentError or FailedPreconditionError."""
        spec = self.spec
        if ids.ndim != 1 or ids.dtype != np.int64:
            raise InvalidArgumentError(f"{spec.name}: ids must be a 1-D int64 array, got {ids.ndim}-D {ids.dtype}")
        if grads.dtype != self._dtype:
            raise dtype_refusal(spec.name, grads.dtype, spec.dtype)
        if grads.shape != (len(ids), spec.dim):
            raise InvalidArgumentError(
                f"{spec.name}: {len(ids)} ids need gradients of shape ({len(ids)}, {spec.dim}) (row width "
                f"{spec.dim}), got {grads.shape}"
            )
        if refuse_nonfinite and not np.isfinite(grads).all():
            raise InvalidArgumentError(f"{spec.name}: NaN or Inf in row gradients (refused)")
        self.check_ids(ids, placed)

    # -- reads -------------------------------------------------------------------------

    def read(self, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (int64, any order, repeats allowed) as a new ``(len(ids), dim)`` array.

        Rows not stored read as their initial values. Marks stored rows as used. Blocks on
        the table lock.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        with self.lock:
            self.tick += 1
            slots = self.index.lookup(ids)
            found = slots >= 0
            out = np.empty((len(ids), self.spec.dim), dtype=self._dtype)
            if found.all():
                np.take(self.values, slots, axis=0, out=out)
            else:
                out[found] = gather_rows(self.values, slots[found])
            self._touch(slots[found])
            self.counters["pulled"] += len(ids)
        if not found.all():
            missing = ~found
            out[missing] = self.spec.initial_rows(ids[missing])
        return out

    def list_rows(self, after: int | None, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored rows with ids > ``after`` (every stored row when None), ascending by
        id, at most ``limit`` (>= 1) of them: ``(ids, (n, dim) values)``, both new arrays.

        Does not mark rows as used. O(stored rows) per call plus sorting the selected ones;
        blocks on the table lock.
        """
        with self.lock:
            slots = self.index.live_slots()
            ids = self.index.slot_ids[slots]
            if after is not None:
                keep = ids > after
                slots, ids = slots[keep], ids[keep]
            if len(ids) > limit:
                first = np.argpartition(ids, limit - 1)[:limit]
                slots, ids = slots[first], ids[first]
            order = np.argsort(ids, kind="stable")
            slots, ids = slots[order], ids[order]
            return ids.astype(np.int64, copy=True), gather_rows(self.values, slots)

    # -- updates -----------------------------------------------------------------------

    def apply(self, ids: np.ndarray, grads: np.ndarray) -> None:
        """Apply one push now (async/ssp): sum duplicates, admit, create, update, evict.

        Blocks on the table lock.
        """
        uniq, summed = sum_duplicates(ids, grads)
        with self.lock:
            counts = self.sketch.add(uniq) if self.sketch is not None else None
            self._apply_unique(uniq, summed, counts)

    def accumulate(self, ids: np.ndarray, grads: np.ndarray) -> None:
        """Keep one push's rows for the current sync step (counted for admission now)."""
        uniq, summed = sum_duplicates(ids, grads)
        if len(uniq) == 0:
            return
        with self.lock:
            if self.sketch is not None:
                self.sketch.add(uniq)
            self._pending.append((uniq, summed))

    def apply_accumulated(self, scale: float) -> bool:
        """Apply ``scale`` times the per-id sum of the step's pushes; False if none pending."""
        with self.lock:
            pending, self._pending = self._pending, []
            if not pending:
                return False
            ids = np.concatenate([p[0] for p in pending])
            grads = np.concatenate([p[1] for p in pending]) if len(pending) > 1 else pending[0][1].copy()
            uniq, summed = sum_duplicates(ids, grads)
            summed *= scale
            counts = self.sketch.estimate(uniq) if self.sketch is not None else None
            self._apply_unique(uniq, summed, counts, refuse=False)  # acknowledged: store what fits
            return True

    def discard_accumulated(self) -> None:
        """Forget the rows kept for the current sync step (e.g. when it is rolled back)."""
        with self.lock:
            self._pending = []

    # -- internals (lock held) ---------------------------------------------------------

    def _apply_unique(self, uniq: np.ndarray, grads: np.ndarray, counts: np.ndarray | None,
                      refuse: bool = True) -> None:
        slots = self.index.lookup(uniq)
        missing = slots < 0
        not_admitted = 0
        if counts is not None and missing.any():
            refused = missing & (counts < self.spec.admit_after)
            if refused.any():
                not_admitted = int(np.count_nonzero(refused))
                keep = ~refused
                uniq, grads, slots, missing = uniq[keep], grads[keep], slots[keep], missing[keep]
        wanted = int(np.count_nonzero(missing))
        room = self._make_room(wanted, slots[~missing], refuse) if wanted else 0
        if room < wanted:  # sync: the rows that do not fit in the budget are not stored
            drop = np.flatnonzero(missing)[room:]
            keep = np.ones(len(uniq), dtype=bool)
            keep[drop] = False
            uniq, grads, slots, missing = uniq[keep], grads[keep], slots[keep], missing[keep]
            self.counters["refused"] += wanted - room
        self.tick += 1
        self.counters["pushed"] += len(uniq)
        self.counters["not_admitted"] += not_admitted
        if missing.any():
            new_ids = uniq[missing]
            new_slots = self.index.insert(new_ids)
            self._ensure_capacity(self.index.high)
            scatter_rows(self.values, new_slots, self.spec.initial_rows(new_ids))
            for name, (_, _, fill) in self._layout.items():
                self.state[name][new_slots] = fill
            if self.hits is not None:
                self.hits[new_slots] = 0
            slots[missing] = new_slots
            self.counters["created"] += len(new_ids)
        if len(slots):
            self.optimizer.apply(self.values, self.state, slots, grads)
        self._touch(slots)
        self._evict(slots)

    def _make_room(self, wanted: int, protect: np.ndarray, refuse: bool) -> int:
        """Make room for ``wanted`` new rows within the memory budget; returns how many fit
        (``wanted``, or fewer only when not ``refuse``). Grows the arrays if the budget allows
        (by the usual 1.25x, else just enough), else evicts (tables with ``max_rows``: the
        least used rows, never those in ``protect``). Raises ResourceExhaustedError, having
        changed nothing, when ``refuse`` and they do not all fit."""
        cap = len(self.values)
        free = cap - self.index.high + self.index.free
        if wanted <= free:
            return wanted
        need = self.index.high + wanted - self.index.free
        if self._grow(need):
            return wanted
        if self.spec.max_rows:
            free += self._evict_rows(wanted - free, protect, all_or_nothing=refuse)
            if wanted <= free:
                return wanted
        if not refuse and self.budget is not None:  # grow by what the budget has left
            more = min(need - cap, self.budget.available() // self._slot_bytes)
            if more > 0 and self._grow(cap + more):
                free += more
            return min(wanted, free)
        if refuse:
            raise (self.budget.refusal((need - cap) * self._slot_bytes, f"sparse table {self.spec.name!r}'s "
                                       f"{wanted} new rows") if self.budget is not None else
                   ResourceExhaustedError(f"sparse table {self.spec.name!r}: no memory for {wanted} new rows"))
        return free

    @property
    def _slot_bytes(self) -> int:
        """Bytes one more slot of capacity costs: values, optimizer state, eviction data, and
        an allowance for the index (its id per slot and, at worst, its buckets)."""
        extra = INDEX_SLOT_BYTES + (8 if self.last_used is not None else 0) + (4 if self.hits is not None else 0)
        state = sum(int(np.prod(shape, dtype=np.int64)) * dt.itemsize for shape, dt, _ in self._layout.values())
        return self.spec.row_bytes + state + extra

    def _grow(self, need: int) -> bool:
        """Grow the arrays to hold ``need`` slots (more, by the usual 1.25x, where the budget
        allows). False, with nothing changed, if even ``need`` does not fit the budget."""
        cap = len(self.values)
        for target in dict.fromkeys((self._capacity_for(need), need)):
            extra = (target - cap) * self._slot_bytes
            if self.budget is not None and not self.budget.try_reserve(extra):
                continue
            try:
                self._ensure_capacity(need, target)
                return True
            except MemoryError:
                continue
            finally:
                if self.budget is not None:
                    self.budget.release(extra)  # now part of nbytes (or not allocated)
        return False

    def _evict_rows(self, k: int, protect: np.ndarray, all_or_nothing: bool = False) -> int:
        """Evict up to ``k`` of the least used rows (as for ``max_rows``), none in ``protect``;
        returns how many. ``all_or_nothing``: none unless ``k`` can go."""
        live = self.index.live_slots()
        protected = np.zeros(len(self.values), dtype=bool)
        protected[protect] = True
        live = live[~protected[live]]
        if all_or_nothing and len(live) < k:
            return 0
        k = min(k, len(live))
        if k <= 0:
            return 0
        victims = live if k >= len(live) else live[np.argpartition(self._scores(live), k - 1)[:k]]
        self.index.remove(victims)
        self.counters["evicted"] += len(victims)
        return len(victims)

    def _scores(self, live: np.ndarray) -> np.ndarray:
        """Eviction order of ``live`` slots: lowest first (lru: oldest use; lfu: fewest uses, then oldest)."""
        assert self.last_used is not None
        score = self.last_used[live].copy()
        if self.hits is not None:
            score = (self.hits[live].astype(np.int64) << 32) | (score & 0xFFFFFFFF)
        return score

    def _touch(self, slots: np.ndarray) -> None:
        if self.last_used is not None:
            self.last_used[slots] = self.tick
        if self.hits is not None:
            self.hits[slots] += np.uint32(1)

    def _evict(self, protect: np.ndarray) -> None:
        max_rows = self.spec.max_rows
        if not max_rows or self.index.live <= max_rows:
            return
        target = max_rows - int(max_rows * EVICT_SLACK)
        live = self.index.live_slots()
        k = len(live) - target
        score = self._scores(live)
        protected = np.zeros(len(self.values), dtype=bool)
        protected[protect] = True
        score[protected[live]] = np.iinfo(np.int64).max  # the push being applied goes last
        victims = live if k >= len(live) else live[np.argpartition(score, k - 1)[:k]]
        self.index.remove(victims)
        self.counters["evicted"] += len(victims)

    def _capacity_for(self, rows: int) -> int:
        """The capacity to grow to for ``rows`` slots: 1.25x (at least 1024 slots), capped
        near ``max_rows``."""
        new = max(rows, len(self.values) * 5 // 4, 1024)
        if self.spec.max_rows:
            new = max(rows, min(new, self.spec.max_rows + 1024))
        return new

    def _ensure_capacity(self, rows: int, new: int | None = None) -> None:
        """Hold at least ``rows`` slots, growing to ``new`` (default :meth:`_capacity_for`).
        Raises MemoryError with nothing changed when the allocation fails."""
        cap = len(self.values)
        if rows <= cap:
            return
        new = self._capacity_for(rows) if new is None else new
        values = _grown(self.values, new)  # all allocated before any is replaced
        state = {k: _grown(v, new) for k, v in self.state.items()}
        last_used = _grown(self.last_used, new) if self.last_used is not None else None
        hits = _grown(self.hits, new) if self.hits is not None else None
        self.values, self.state, self.last_used, self.hits = values, state, last_used, hits

    # -- bucket moves (ps.shard.moves) -------------------------------------------------

    def take_buckets(self, buckets: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
        """Stop holding row buckets ``buckets`` (held ones; others are skipped) and answer,
        per bucket, its rows with everything kept per row: ``ids``, ``values``,
        ``state.<name>``, ``last_used``/``hits`` when bounded, and ``accesses`` (0-d). The
        rows leave this table. Blocks on the table lock; O(stored rows)."""
        with self.lock:
            live = self.index.live_slots()
            ids = self.index.slot_ids[live]
            order = np.lexsort((ids, row_buckets(self.spec.name, ids)))  # by bucket, then id
            live, ids = live[order], ids[order]
            of = row_buckets(self.spec.name, ids)
            out: dict[int, dict[str, np.ndarray]] = {}
            gone = []
            for bucket in buckets:
                if not self.held[bucket]:
                    continue
                lo, hi = np.searchsorted(of, [bucket, bucket + 1])
                slots = live[lo:hi]
                arrays = self._row_arrays(ids[lo:hi].copy(), slots)
                arrays["accesses"] = np.array(self.bucket_accesses[bucket], dtype=np.int64)
                out[int(bucket)] = arrays
                gone.append(slots)
                self.held[bucket] = False
                self.bucket_accesses[bucket] = 0
            if gone:
                self.index.remove(np.concatenate(gone))
            return out

    def _row_arrays(self, ids: np.ndarray, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Lock held: copies of rows ``slots`` (ids ``ids``): ``ids``, ``values``,
        ``state.<name>``, and ``last_used``/``hits`` when bounded."""
        out = {"ids": ids, "values": self.values[slots]}
        for name, arr in self.state.items():
            out[f"state.{name}"] = arr[slots]
        if self.last_used is not None:
            out["last_used"] = self.last_used[slots]
        if self.hits is not None:
            out["hits"] = self.hits[slots]
        return out

    def table_extras(self) -> dict[str, np.ndarray]:
        """What a bucket move carries once per table: the use clock ``tick`` and the admission
        ``sketch`` (when the table admits). Copies; takes the table lock."""
        with self.lock:
            out = {"tick": np.array(self.tick, dtype=np.int64)}
            if self.sketch is not None:
                out["sketch"] = self.sketch.counts.copy()
            return out

    def put_buckets(self, bucket: int, arrays: Mapping[str, np.ndarray]) -> bool:
        """Hold row bucket ``bucket`` with the rows of :meth:`take_buckets`'s ``arrays`` (plus,
        optionally, :meth:`table_extras`' ``tick`` and ``sketch``: the clock is the later, the
        sketch the larger count per cell, so it never under-counts). False, changing nothing,
        if it is held already. Blocks on the table lock. Raises InvalidArgumentError (arrays
        that do not fit the table, rows of another bucket), ResourceExhaustedError (no room in
        the memory budget)."""
        name = self.spec.name
        if not 0 <= bucket < ROW_BUCKETS:
            raise InvalidArgumentError(f"{name}: no row bucket {bucket}")
        ids = np.asarray(arrays.get("ids", np.zeros(0, dtype=np.int64)))
        if ids.ndim != 1 or ids.dtype != np.int64:
            raise InvalidArgumentError(f"{name}: bucket {bucket} moved with ids that are not 1-D int64")
        if len(ids) and bool(np.any(row_buckets(name, ids) != bucket)):
            raise InvalidArgumentError(f"{name}: bucket {bucket} moved with rows of other buckets")
        if len(np.unique(ids)) != len(ids):
            raise InvalidArgumentError(f"{name}: bucket {bucket} moved with a row twice")
        _check_array(name, "values", arrays.get("values"), (len(ids), self.spec.dim), self._dtype)
        for key, (shape, dt, _) in self._layout.items():
            _check_array(name, f"state.{key}", arrays.get(f"state.{key}"), (len(ids), *shape), dt)
        for key in ("tick", "accesses"):
            if key in arrays and (np.shape(arrays[key]) != () or np.asarray(arrays[key]).dtype.kind not in "iu"):
                raise InvalidArgumentError(f"{name}: bucket {bucket} moved with a {key} that is not one integer")
        sketch = arrays.get("sketch")
        if sketch is not None and (self.sketch is None or np.shape(sketch) != self.sketch.counts.shape):
            raise InvalidArgumentError(f"{name}: bucket {bucket} moved with an admission sketch that does not fit")
        with self.lock:
            if self.held[bucket]:
                return False
            if len(ids):
                if bool(np.any(self.index.lookup(ids) >= 0)):
                    raise InvalidArgumentError(f"{name}: bucket {bucket} moved with rows already stored here")
                self._make_room(len(ids), np.zeros(0, dtype=np.int64), refuse=True)
                slots = self.index.insert(ids)
                self._ensure_capacity(self.index.high)
                self.values[slots] = arrays["values"]
                for key in self.state:
                    self.state[key][slots] = arrays[f"state.{key}"]
                if self.last_used is not None:
                    self.last_used[slots] = np.asarray(arrays.get("last_used", np.zeros(len(ids))), dtype=np.int64)
                if self.hits is not None:
                    self.hits[slots] = np.asarray(arrays.get("hits", np.zeros(len(ids))), dtype=np.uint32)
            if "tick" in arrays:
                self.tick = max(self.tick, int(np.asarray(arrays["tick"])))
            if sketch is not None:
                np.maximum(self.sketch.counts, np.asarray(sketch, dtype=np.uint32), out=self.sketch.counts)
            self.bucket_accesses[bucket] = int(np.asarray(arrays.get("accesses", 0)))
            self.held[bucket] = True
            return True

    # -- checkpoints -------------------------------------------------------------------

    def export_state(self) -> dict[str, np.ndarray]:
        """A consistent copy of the table's state as named arrays, rows ordered by id.

        Keys: ``ids`` (n,) int64, ``values`` (n, dim), ``state.<name>`` per optimizer state
        array, ``last_used``/``hits`` when bounded, ``sketch`` with admission, ``tick`` and
        ``counter.<name>`` (0-d int64). Pending sync sums are not included (checkpoint
        between steps). Blocks on the table lock; copies every live row.
        """
        with self.lock:
            live = self.index.live_slots()
            ids = self.index.slot_ids[live]
            order = np.argsort(ids)
            live, ids = live[order], ids[order]
            out = self._row_arrays(ids, live)
            if self.sketch is not None:
                out["sketch"] = self.sketch.counts.copy()
            out["tick"] = np.array(self.tick, dtype=np.int64)
            for name, value in self.counters.items():
                out[f"counter.{name}"] = np.array(value, dtype=np.int64)
            return out

    @classmethod
    def restore(cls, spec: SparseTableSpec,
                arrays: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                shard_index: int, num_shards: int, owners: np.ndarray | None = None) -> SparseTable:
        """Rebuild shard ``shard_index`` of ``num_shards`` from exported states.

        ``owners``: the shard of each row bucket (``PlacementMap.bucket_owners``; None: the
        default rule on ``num_shards``): the buckets, and rows, this shard holds.

        ``arrays`` is one :meth:`export_state` dict or a sequence of them (every shard of a
        checkpoint, any shard count): only the rows this shard owns are kept, so a table
        saved on N shards restores onto M. Admission sketches are summed (still never
        under-counting); counters are summed onto shard 0 (cluster totals are kept); the
        use clock is the latest. Raises InvalidArgumentError when the arrays do not fit
        ``spec`` (another width, dtype or optimizer) or an id appears twice.
        """
        sources = [arrays] if isinstance(arrays, Mapping) else list(arrays)
        table = cls(spec, shard_index, num_shards)
        if owners is not None:
            table.held = np.asarray(owners) == shard_index
        ids_parts, keep_parts = [], []
        for src in sources:
            ids = check_rows(spec, table._layout, src)
            ids_parts.append(ids)
            keep_parts.append(table.held[row_buckets(spec.name, ids)])
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
        keep = np.concatenate(keep_parts) if keep_parts else np.zeros(0, dtype=bool)
        ordered = np.sort(ids)
        if bool(np.any(ordered[1:] == ordered[:-1])):
            raise InvalidArgumentError(f"{spec.name}: a row id appears in more than one checkpoint shard")

        def gather(key: str, default_fill=None) -> np.ndarray:
            parts = []
            for src, k in zip(sources, keep_parts):
                if key in src:
                    parts.append(np.asarray(src[key])[k])
                else:
                    parts.append(np.full(int(k.sum()), default_fill))
            return np.concatenate(parts)

        own = ids[keep]
        slots = table.index.insert(own)
        table._ensure_capacity(table.index.high)
        if len(own):
            table.values[slots] = gather("values")
            for name in table.state:
                table.state[name][slots] = gather(f"state.{name}")
            if table.last_used is not None:
                table.last_used[slots] = gather("last_used", 0).astype(np.int64)
            if table.hits is not None:
                table.hits[slots] = gather("hits", 0).astype(np.uint32)
        table.tick = max([int(np.asarray(s.get("tick", 0))) for s in sources] or [0])
        if table.sketch is not None:
            for src in sources:
                if "sketch" in src:
                    table.sketch.merge(AdmissionSketch(counts=np.asarray(src["sketch"])))
        if shard_index == 0:
            for name in _COUNTERS:
                table.counters[name] = sum(int(np.asarray(s.get(f"counter.{name}", 0))) for s in sources)
        return table


def check_rows(spec: SparseTableSpec, layout: Mapping, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Check saved rows of ``spec``'s table (``ids``, ``values``, ``state.<name>`` per the
    optimizer's ``layout``: ``RowOptimizer.state_layout``) fit together; returns the ids.
    Raises InvalidArgumentError."""
    ids = np.asarray(arrays["ids"])
    if ids.ndim != 1 or ids.dtype != np.int64:
        raise InvalidArgumentError(f"{spec.name}: checkpoint ids must be 1-D int64, got {ids.dtype}")
    _check_array(spec.name, "values", arrays.get("values"), (len(ids), spec.dim), np.dtype(spec.dtype))
    for name, (shape, dt, _) in layout.items():
        _check_array(spec.name, f"state.{name}", arrays.get(f"state.{name}"), (len(ids), *shape), dt)
    return ids


def _grown(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def _check_array(table: str, key: str, array, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if array is None:
        raise InvalidArgumentError(f"{table}: checkpoint lacks {key!r} (another optimizer?)")
    array = np.asarray(array)
    if array.shape != shape or array.dtype != dtype:
        raise InvalidArgumentError(
            f"{table}: checkpoint {key!r} is {array.dtype.name}{list(array.shape)}, "
            f"expected {dtype.name}{list(shape)}"
        )
