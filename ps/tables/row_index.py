"""``RowIndex``: a vectorised map from int64 row ids to dense slot numbers.

A sparse table keeps its rows in contiguous arrays indexed by *slot*; this index maps
ids to slots and hands out and takes back slots. It is an open-addressing hash table
with linear probing, written so that every operation works on a whole batch of ids at
once with NumPy (one probe round per array operation, over the ids still probing), so
no Python code runs per id.

Memory: ``buckets`` is an int32 array of slot numbers (-1 empty, -2 deleted), a power of
two in size, rebuilt (doubled) before it is ``MAX_LOAD`` full, so between about 6 and 13
bytes per live id (6.7 at 10^7 ids over 2 shards); ``slot_ids``
(int64, the id stored in each slot) is 8 bytes per allocated slot (grown by 1.25x). Any
int64 is a valid id (there is no reserved key): a bucket's key is ``slot_ids[bucket]``.

Not thread-safe: the owning table holds its lock around every call.
"""

from __future__ import annotations

import numpy as np

EMPTY = -1
DELETED = -2
#: the most buckets (live plus deleted) that may be in use before the table is rebuilt
MAX_LOAD = 0.7
MIN_BUCKETS = 1024
#: slots are int32 in the buckets
MAX_SLOTS = (1 << 31) - 1


def _hash(ids: np.ndarray, bits: int) -> np.ndarray:
    """Home bucket of each id: the top ``bits`` bits of SplitMix64(id)."""
    with np.errstate(over="ignore"):
        x = ids.view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(64 - bits)).astype(np.int64)


class RowIndex:
    """Batch id -> slot map with slot allocation. Not thread-safe."""

    def __init__(self) -> None:
        self._bits = 10
        self.buckets = np.full(MIN_BUCKETS, EMPTY, dtype=np.int32)
        self.slot_ids = np.zeros(0, dtype=np.int64)
        self.live = 0            # ids stored
        self.high = 0            # slots ever handed out: every slot < high is live or free
        self._deleted = 0        # DELETED buckets
        self._free = np.zeros(0, dtype=np.int64)  # freed slots, reused first (a stack)
        self._nfree = 0

    @property
    def free(self) -> int:
        """Freed slots below ``high``, reused by the next inserts."""
        return self._nfree

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays."""
        return self.buckets.nbytes + self.slot_ids.nbytes + self._free.nbytes

    # -- queries -----------------------------------------------------------------------

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """The slot of each id (int64), -1 where absent. ``ids`` int64, any order, repeats allowed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        out = np.full(len(ids), -1, dtype=np.int64)
        if self.live == 0 or len(ids) == 0:
            return out
        mask = len(self.buckets) - 1
        buckets, slot_ids = self.buckets, self.slot_ids
        pending = np.arange(len(ids))
        pos = _hash(ids, self._bits)
        want = ids
        while len(pending):
            b = buckets[pos]
            occupied = b >= 0
            hit = np.zeros(len(b), dtype=bool)
            hit[occupied] = slot_ids[b[occupied]] == want[occupied]
            out[pending[hit]] = b[hit]
            more = (b == DELETED) | (occupied & ~hit)
            pending, want = pending[more], want[more]
            pos = (pos[more] + 1) & mask
        return out

    def live_slots(self) -> np.ndarray:
        """Every live slot, ascending (int64). O(buckets)."""
        b = self.buckets[self.buckets >= 0]
        return np.sort(b.astype(np.int64))

    # -- updates -----------------------------------------------------------------------

    def insert(self, ids: np.ndarray) -> np.ndarray:
        """Store ``ids`` (unique, none present yet) and return the slot given to each.

        Freed slots are reused first; otherwise ``high`` grows (the caller grows its row
        arrays to at least ``high``). Raises OverflowError past ``MAX_SLOTS`` slots.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        k = len(ids)
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        if self.live + k > MAX_SLOTS:
            raise OverflowError(f"a shard holds at most {MAX_SLOTS} rows per table")
        if self.live + self._deleted + k > MAX_LOAD * len(self.buckets):
            self._rebuild(self.live + k)
        slots = self._allocate(k)
        self.slot_ids[slots] = ids
        self._place(ids, slots)
        self.live += k
        return slots

    def remove(self, slots: np.ndarray) -> None:
        """Forget the ids in ``slots`` (unique live slots) and free the slots for reuse."""
        slots = np.ascontiguousarray(slots, dtype=np.int64)
        if len(slots) == 0:
            return
        mask = len(self.buckets) - 1
        buckets = self.buckets
        pending = np.arange(len(slots))
        pos = _hash(self.slot_ids[slots], self._bits)
        found = np.empty(len(slots), dtype=np.int64)
        while len(pending):
            b = buckets[pos]
            hit = b == slots[pending]
            found[pending[hit]] = pos[hit]
            if (b[~hit] == EMPTY).any():
                raise KeyError("RowIndex.remove: a slot is not live")
            pending = pending[~hit]
            pos = (pos[~hit] + 1) & mask
        buckets[found] = DELETED
        self._deleted += len(slots)
        self.live -= len(slots)
        need = self._nfree + len(slots)
        if need > len(self._free):
            grown = np.empty(max(need, 2 * len(self._free)), dtype=np.int64)
            grown[: self._nfree] = self._free[: self._nfree]
            self._free = grown
        self._free[self._nfree : need] = slots
        self._nfree = need

    # -- internals ---------------------------------------------------------------------

    def _allocate(self, k: int) -> np.ndarray:
        reuse = min(k, self._nfree)
        taken = self._free[self._nfree - reuse : self._nfree][::-1].copy()
        self._nfree -= reuse
        fresh = np.arange(self.high, self.high + (k - reuse), dtype=np.int64)
        self.high += k - reuse
        if self.high > len(self.slot_ids):
            grown = np.zeros(max(self.high, len(self.slot_ids) * 5 // 4, 1024), dtype=np.int64)
            grown[: len(self.slot_ids)] = self.slot_ids
            self.slot_ids = grown
        if self._nfree == 0 and len(self._free) > 4096:
            self._free = np.zeros(0, dtype=np.int64)  # do not keep a big empty stack
        return np.concatenate([taken, fresh]) if reuse else fresh

    def _place(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Write ``slots`` into the first free bucket on each id's probe path."""
        mask = len(self.buckets) - 1
        buckets = self.buckets
        pending = np.arange(len(ids))
        pos = _hash(ids, self._bits)
        while len(pending):
            free = np.flatnonzero(buckets[pos] < 0)
            lost = np.ones(len(pending), dtype=bool)
            if len(free):
                # several ids may want the same free bucket this round: the first one wins
                _, first = np.unique(pos[free], return_index=True)
                win = free[first]
                self._deleted -= int(np.count_nonzero(buckets[pos[win]] == DELETED))
                buckets[pos[win]] = slots[pending[win]]
                lost[win] = False
            pending = pending[lost]
            pos = (pos[lost] + 1) & mask

    def _rebuild(self, live_after: int) -> None:
        """Re-hash every live id into a table sized for ``live_after`` ids; drops tombstones."""
        bits = self._bits
        while live_after > MAX_LOAD * (1 << bits) * 0.9:
            bits += 1
        live = self.buckets[self.buckets >= 0].astype(np.int64)
        self._bits = bits
        self.buckets = np.full(1 << bits, EMPTY, dtype=np.int32)
        self._deleted = 0
        self._place(self.slot_ids[live], live)
