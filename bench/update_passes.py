"""The shard's update of a pushed gradient, alone: what its passes over memory cost, and what
a compiled update would save (issue 14, "what it would take").

    python -m bench.update_passes [--sizes 1MiB,16MiB,128MiB] [--rounds 5]

For a float32 SGD table of each size, cut into the project's blocks
(:func:`~ps.tables.spec.balanced_block_elems`), one step here is what the shard's TCP plane
does to the bytes of one fused push-pull, block after block, with no message, socket or
bookkeeping around it: copy the gradient into a receive buffer (as the kernel's
``recv_into`` does, which leaves it in the cache), check it, update the block, copy the new
weights into a send buffer. Every row makes the same receive copy; they differ in the rest:

- ``project``: the shard's own calls: ``np.isfinite`` as :meth:`Shard._validate
  <ps.shard.shard.Shard>` checks, :meth:`DenseTable.apply
  <ps.tables.dense_table.DenseTable.apply>` (the optimizer's ``multiply`` into a scratch and
  ``subtract``) and :meth:`~ps.tables.dense_table.DenseTable.read_if_newer` into the send
  buffer;
- ``project, no check``: the same without the finite check (``--nonfinite allow``);
- ``check as a sum of squares``: the check as one BLAS read (``np.dot(g, g)`` is finite only
  when every value is), the rest the project's;
- ``compiled``: ``bench/update_kernel.c``, built here with the system's C compiler (``cc``;
  skipped when there is none): a read-only check, then one pass that updates the weights and
  writes the send buffer;
- ``numexpr`` and ``numba``: the same with those libraries, when installed (they are not
  dependencies of the project).

Prints a Markdown table: milliseconds per step (the least of ``--rounds``), GB/s of gradient
bytes, and each row against ``project``. Single-threaded; blocks while it runs (a few
seconds per size). From 16 MiB up the table is larger than the caches, as on a shard.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.harness import SIZES
from ps.tables.dense_table import Block, DenseTable
from ps.tables.optim import OptimizerSpec
from ps.tables.spec import TableSpec

LR = 0.001
KERNEL = Path(__file__).with_name("update_kernel.c")
_all_true = np.logical_and.reduce  # ndarray.all() without its Python wrapper, as the shard calls it

Step = Callable[[], None]


class Case:
    """One table of ``nbytes`` float32 with SGD: per block, the pushed gradient as it arrives,
    a receive buffer and a send buffer."""

    def __init__(self, nbytes: int) -> None:
        spec = TableSpec("w", (nbytes // 4,), optimizer=OptimizerSpec("sgd", lr=LR))
        self.table = DenseTable.create(spec, range(spec.num_blocks))
        self.blocks = [self.table.blocks[i] for i in sorted(self.table.blocks)]
        self.arriving = [np.full(b.values.size, 1e-3, np.float32) for b in self.blocks]
        self.received = [np.empty_like(g) for g in self.arriving]
        self.out = [np.empty_like(b.values) for b in self.blocks]

    def receive(self) -> list[np.ndarray]:
        """Copy every block's gradient into its receive buffer, as ``recv_into`` would."""
        for src, dst in zip(self.arriving, self.received):
            np.copyto(dst, src)
        return self.received


def isfinite_all(g: np.ndarray) -> bool:
    return bool(_all_true(np.isfinite(g), axis=None))


def sum_of_squares_finite(g: np.ndarray) -> bool:
    """Exact: NaN or an infinity makes the sum non-finite; so may values too large to square,
    which the exact check then decides."""
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(np.dot(g, g)):
            return True
    return isfinite_all(g)


def stepper(case: Case, check: Callable[[np.ndarray], bool] | None,
            update: Callable[[Block, np.ndarray, np.ndarray], None]) -> Step:
    """A step of ``case``: receive, ``check`` every gradient (None: no check; a failed check
    raises ValueError before any block changes), then ``update(block, grad, send_slot)``."""

    def step() -> None:
        grads = case.receive()
        if check is not None and not all(check(g) for g in grads):
            raise ValueError("non-finite")
        for block, g, out in zip(case.blocks, grads, case.out):
            update(block, g, out)

    return step


def project(case: Case, check: Callable[[np.ndarray], bool] | None = isfinite_all) -> Step:
    table = case.table

    def update(block: Block, g: np.ndarray, out: np.ndarray) -> None:
        table.apply(block, g)
        table.read_if_newer(block, None, out)

    return stepper(case, check, update)


def compiled(case: Case, lib: ctypes.CDLL) -> Step:
    finite, kernel, lr = lib.all_finite_f32, lib.sgd_update_f32, ctypes.c_float(LR)

    def update(block: Block, g: np.ndarray, out: np.ndarray) -> None:
        with block.lock:
            kernel(block.values.ctypes.data, g.ctypes.data, g.size, lr, out.ctypes.data)

    return stepper(case, lambda g: bool(finite(g.ctypes.data, g.size)), update)


def with_numexpr(case: Case, ne) -> Step:
    lr = np.float32(LR)

    def update(block: Block, g: np.ndarray, out: np.ndarray) -> None:
        with block.lock:
            ne.evaluate("w - lr * g", local_dict={"w": block.values, "g": g, "lr": lr}, out=block.values)
            np.copyto(out, block.values)

    return stepper(case, isfinite_all, update)


def with_numba(case: Case, numba) -> Step:
    @numba.njit(cache=False)
    def finite(g):
        for i in range(g.size):
            if not np.isfinite(g[i]):
                return False
        return True

    @numba.njit(cache=False)
    def kernel(w, g, lr, out):
        for i in range(w.size):
            v = w[i] - lr * g[i]
            w[i] = v
            out[i] = v

    lr = np.float32(LR)

    def update(block: Block, g: np.ndarray, out: np.ndarray) -> None:
        with block.lock:
            kernel(block.values, g, lr, out)

    return stepper(case, finite, update)


def build_kernel(folder: str) -> ctypes.CDLL | str:
    """``bench/update_kernel.c`` built into ``folder`` and loaded, or why not (a message).
    Blocks while the compiler runs (bounded: 60 s)."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return "no C compiler (cc) on PATH"
    library = os.path.join(folder, "update_kernel.so")
    done = subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", library, str(KERNEL)], capture_output=True,
                          text=True, timeout=60)
    if done.returncode:
        return f"cc failed: {done.stderr.strip()[:200]}"
    lib = ctypes.CDLL(library)
    lib.all_finite_f32.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.all_finite_f32.restype = ctypes.c_int
    lib.sgd_update_f32.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_float,
                                   ctypes.c_void_p]
    lib.sgd_update_f32.restype = None
    return lib


def least_ms(step: Step, rounds: int, min_round_s: float = 0.2) -> float:
    """The least of ``rounds`` rounds' mean step time (ms); each round runs at least
    ``min_round_s`` seconds and 2 steps. Blocks while it runs."""
    step()  # warm: pages touched, JIT compiled
    best = float("inf")
    for _ in range(rounds):
        steps, start = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - start < min_round_s:
            step()
            steps += 1
        best = min(best, (time.perf_counter() - start) / steps * 1e3)
    return best


def rows(case: Case, lib: ctypes.CDLL | str) -> list[tuple[str, Step | str]]:
    """Every row for ``case``: a step to time, or why it is skipped."""
    out: list[tuple[str, Step | str]] = [
        ("project", project(case)),
        ("project, no check", project(case, None)),
        ("check as a sum of squares", project(case, sum_of_squares_finite)),
        ("compiled (C)", lib if isinstance(lib, str) else compiled(case, lib)),
    ]
    for name, make in (("numexpr", with_numexpr), ("numba", with_numba)):
        try:
            module = __import__(name)
        except ImportError:
            out.append((name, f"{name} is not installed"))
        else:
            out.append((name, make(case, module)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1MiB,16MiB,128MiB", help="comma-separated among " + ",".join(SIZES))
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ps-bench-kernel-") as folder:
        lib = build_kernel(folder)
        print("| size | row | ms per step | GB/s | against project |")
        print("|---|---|---:|---:|---:|")
        for size in args.sizes.split(","):
            nbytes = SIZES[size]
            base = None
            for name, step in rows(Case(nbytes), lib):
                if isinstance(step, str):
                    print(f"| {size} | {name} | skipped: {step} | | |")
                    continue
                ms = least_ms(step, args.rounds)
                base = base or ms
                print(f"| {size} | {name} | {ms:.3f} | {nbytes / ms / 1e6:.2f} | {base / ms:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
