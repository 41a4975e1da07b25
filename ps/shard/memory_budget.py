"""``MemoryBudget``: the bytes one shard may hold in tables, and what a table costs.

A shard's tables live in its memory: dense blocks with their optimizer state and update
buffers, sparse rows with theirs. Without a bound one create (a ``(10**12,)`` table) or an
endless stream of new sparse ids grows the process until the machine kills it. The budget
(``ServerConfig.max_memory_bytes``, ``ps-server --max-memory``) is checked *before* memory
is allocated: a dense create that would pass it is refused with RESOURCE_EXHAUSTED, and a
sparse table grows its arrays only within it (past it, a table with ``max_rows`` evicts
its least used rows, any other refuses the push; ``ps.tables.sparse_table``).

What counts (bytes, per shard): for a dense table, its owned elements times the dtype's
size times ``1 + STATE_SLOTS[optimizer] + 1`` (values, the optimizer's state arrays, the
update scratch) plus one more in sync mode (the step's accumulator); for a sparse table,
every array it has allocated (``SparseTable.nbytes``). Not counted: gRPC and data-plane
buffers, a pull's copies, the transient copy while a sparse table's arrays grow.

The default budget is :data:`DEFAULT_FRACTION` of the machine's memory: physical RAM
(``os.sysconf``), or the container's cgroup limit when lower. Thread-safe.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable

from ps.errors import ResourceExhaustedError
from ps.tables.optim import STATE_SLOTS

#: the share of the machine's memory a shard's budget defaults to
DEFAULT_FRACTION = 0.5
#: update buffers per element beside values and optimizer state: the scratch of an update
WORK_BUFFERS = 1
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"64k"`` or ``"1073741824"`` (binary
    units: K = 1024). Raises ValueError for anything else, or less than one byte."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size: give bytes, or a number with K, M, G or T (e.g. 8G, 512M)")
    value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value < 1:
        raise ValueError(f"{text!r} is less than one byte")
    return value


def format_size(nbytes: int) -> str:
    """``nbytes`` for people: ``"3.7 TiB"``, ``"512.0 MiB"``, ``"100 B"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


def machine_memory() -> int:
    """Bytes of memory this process may use: physical RAM, or the cgroup (container) limit
    when that is lower. Reads ``os.sysconf`` and the cgroup files (I/O); never raises."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30  # no sysconf: assume a modest machine
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def default_budget() -> int:
    """:data:`DEFAULT_FRACTION` of :func:`machine_memory`, in bytes (I/O: see there)."""
    return int(machine_memory() * DEFAULT_FRACTION)


def dense_footprint(dtype_size: int, optimizer: str, elements: int, sync: bool) -> int:
    """Bytes ``elements`` elements of a dense table hold on a shard: values, ``optimizer``'s
    state (``STATE_SLOTS``), the update scratch and, in sync mode, the step's accumulator."""
    return elements * dtype_size * (1 + STATE_SLOTS[optimizer] + WORK_BUFFERS + int(sync))


class MemoryBudget:
    """The bytes a shard's tables may hold. Thread-safe; the constructor does no I/O.

    ``limit`` bytes (None: :func:`default_budget`, read when first needed). ``held()``
    returns the bytes the tables hold now; it must not block or take locks that are held
    while calling into the budget. A caller about to allocate reserves the bytes first
    (:meth:`reserve`, :meth:`try_reserve`) and releases the reservation once the memory is
    part of what ``held()`` counts (or was not allocated after all).
    """

    def __init__(self, limit: int | None, held: Callable[[], int]) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a memory budget must be >= 1 byte, got {limit}")
        self._limit = limit
        self._held = held
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """The budget in bytes."""
        if self._limit is None:
            self._limit = default_budget()
        return self._limit

    def used(self) -> int:
        """Bytes held plus reserved now."""
        with self._lock:
            return self._held() + self._reserved

    def available(self) -> int:
        """Bytes neither held nor reserved now (0 when over)."""
        return max(0, self.limit - self.used())

    def try_reserve(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` if they fit within the budget; False (nothing reserved) if not.
        Does not block on anything but the budget's own lock."""
        limit = self.limit
        with self._lock:
            if self._held() + self._reserved + nbytes > limit:
                return False
            self._reserved += nbytes
            return True

    def reserve(self, nbytes: int, what: str) -> None:
        """Reserve ``nbytes`` for ``what`` (e.g. "table 'w'"). Raises ResourceExhaustedError,
        naming the need, what is left and the flag, when they do not fit."""
        if not self.try_reserve(nbytes):
            raise self.refusal(nbytes, what)

    def check(self, nbytes: int, what: str) -> None:
        """Raises ResourceExhaustedError (like :meth:`reserve`) if ``nbytes`` more would not
        fit now; reserves nothing."""
        if self.used() + nbytes > self.limit:
            raise self.refusal(nbytes, what)

    def release(self, nbytes: int) -> None:
        """Give back a reservation (all or part of it)."""
        with self._lock:
            self._reserved = max(0, self._reserved - nbytes)

    def refusal(self, nbytes: int, what: str) -> ResourceExhaustedError:
        """The error for ``what`` needing ``nbytes`` more than fit."""
        limit = self.limit
        left = max(0, limit - self.used())
        return ResourceExhaustedError(
            f"{what} needs {format_size(nbytes)} on this shard, but only {format_size(left)} of its "
            f"{format_size(limit)} memory budget are left (ps-server --max-memory): use more shards, "
            "a smaller table or a cheaper optimizer, or raise --max-memory")

