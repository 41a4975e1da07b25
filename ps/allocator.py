"""Allocator settings that keep large tensor buffers warm (glibc only; a no-op elsewhere).

Every gRPC message, decoded payload and fresh pull result of several MiB is a new large
allocation. With glibc's defaults such blocks are mapped fresh and returned to the OS
when freed, so every step pays page faults and zero-filling again: on a 2-core VM a new
128 MiB buffer fills at ~1.5 GB/s while copying into a warm one runs at ~10 GB/s.
:func:`tune_malloc` makes the heap keep freed memory (trim threshold, top pad) and serve
blocks up to 32 MiB (glibc's ceiling for the mmap threshold) from it, so the next step
reuses warm pages. On the gRPC path this cut the worker's CPU per 16 MiB step from ~72 ms
to ~28 ms (``bench/README.md``). The cost: the process keeps its peak heap.

``ps-server`` calls it at start (``--no-malloc-tuning`` / ``PS_NO_MALLOC_TUNING`` turn
it off); a worker process may call it once before training.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30, top_pad: int = 64 << 20) -> bool:
    """Apply the settings to this process (bytes). Returns False where glibc's mallopt is absent.

    Not thread-safe against concurrent allocator tuning; call once at start.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(mallopt(opt, value) == 1 for opt, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
    if not ok:
        log.debug("mallopt refused a setting")
    return ok
