"""The machine's memory ceiling, measured in the same run as the systems.

Issue 4 quotes its peers' numbers together with the ceiling of the machine they were
measured on: a NumPy copy of 128 MiB in one process ran at about 10 GB/s. This shared VM's
memory bandwidth moves with its neighbours (4.7-10 GB/s for the same copy on different
days), so a peer's quoted GB/s and this run's GB/s are only comparable as fractions of
their own run's ceiling. :func:`measure` gives this run's; the run's tables scale the
quoted numbers by it.

    python -m bench.ceiling
"""

from __future__ import annotations

import time

import numpy as np

#: the ceiling issue 4 measured beside its peer numbers (GB/s, NumPy copy of 128 MiB)
ISSUE_CEILING_GB_S = 10.0

SIZE = 128 << 20


def measure(repeats: int = 7) -> dict[str, float]:
    """GB/s of a 128 MiB NumPy copy into a warm buffer and into a fresh one (medians).

    Blocks for about ``repeats`` x 0.1 s; allocates 384 MiB while it runs.
    """
    src = np.ones(SIZE // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm: every page of dst is mapped
    warm, fresh = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        warm.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        new = src.copy()
        fresh.append(time.perf_counter() - t0)
        del new
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"copy_warm_gb_s": round(SIZE / median(warm) / 1e9, 2),
            "copy_fresh_gb_s": round(SIZE / median(fresh) / 1e9, 2)}


if __name__ == "__main__":
    print(measure())
