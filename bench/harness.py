"""The step-timing harness every system under test shares.

A *step* pushes a float32 gradient of ``size`` bytes, applies SGD on the server(s) and
pulls the whole weights back; GB/s counts both directions: ``2 * size / step time``.
:func:`time_steps` runs warm-up steps, then steps until both a minimum count and a
minimum time are reached, and reports the mean rate and the median step. Each system
module runs :func:`main_for` with its own ``make_stepper`` and prints one JSON line per
size, so the orchestrator (``bench.run``) never shares a process with a system under test.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

#: sizes of the issue's table, in bytes
SIZES = {"4KiB": 4 << 10, "1MiB": 1 << 20, "16MiB": 16 << 20, "128MiB": 128 << 20}


@dataclass
class Result:
    system: str
    size: str
    nbytes: int
    steps: int
    seconds: float
    steps_per_s: float
    gb_per_s: float
    median_step_ms: float
    note: str = ""


def time_steps(step: Callable[[], None], nbytes: int, min_time_s: float, min_steps: int = 3,
               warmup: int = 2, max_steps: int = 1_000_000) -> tuple[int, float, float]:
    """Run ``step`` and return (steps, seconds, median step seconds). Bounded by time and count."""
    for _ in range(warmup):
        step()
    times = []
    start = time.perf_counter()
    now = start
    while (now - start < min_time_s or len(times) < min_steps) and len(times) < max_steps:
        t0 = now
        step()
        now = time.perf_counter()
        times.append(now - t0)
    return len(times), now - start, statistics.median(times)


def measure(system: str, size_name: str, step: Callable[[], None], min_time_s: float, note: str = "") -> Result:
    nbytes = SIZES[size_name]
    # big sizes: fewer warm-up and minimum steps, so slow peers stay within the time budget
    warmup, min_steps = (1, 2) if nbytes >= 64 << 20 else (2, 3)
    steps, seconds, median = time_steps(step, nbytes, min_time_s, min_steps, warmup)
    rate = steps / seconds
    return Result(system, size_name, nbytes, steps, seconds, rate, 2 * nbytes * rate / 1e9, median * 1e3, note)


def arg_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated among " + ",".join(SIZES))
    p.add_argument("--seconds", type=float, default=2.0, help="minimum measured time per size")
    p.add_argument("--shards", default="1", help="server processes; a list like 1,2 where supported")
    return p


def emit(result: Result) -> None:
    print("RESULT " + json.dumps(asdict(result)), flush=True)


def emit_skip(system: str, why: str) -> None:
    print("SKIP " + json.dumps({"system": system, "why": why}), flush=True)


def loopback_only() -> bool:
    """True inside a network namespace whose only interface is ``lo`` (``unshare --net``)."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return False
    return names == ["lo"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure_interleaved(size_name: str, steps: list[tuple[str, Callable[[], None]]], min_time_s: float,
                        rounds: int = 4) -> list[Result]:
    """Measure several systems in alternating rounds (A B A B ...), each for ``min_time_s`` in all.

    On a shared, noisy machine a comparison of two configurations measured one after
    the other mostly measures the neighbours; alternating rounds exposes both to the
    same noise. Rates are total steps over total time per system.
    """
    nbytes = SIZES[size_name]
    for _, step in steps:
        step()
        step()
    done = {name: [] for name, _ in steps}
    for _ in range(rounds):
        for name, step in steps:
            n, seconds, _ = time_steps(step, nbytes, min_time_s / rounds, min_steps=1, warmup=0)
            done[name].append((n, seconds))
    out = []
    for name, _ in steps:
        n = sum(k for k, _ in done[name])
        seconds = sum(t for _, t in done[name])
        per_round = [k / t for k, t in done[name]]
        out.append(Result(name, size_name, nbytes, n, seconds, n / seconds, 2 * nbytes * n / seconds / 1e9,
                          seconds / n * 1e3, note="interleaved; per-round steps/s " +
                          ", ".join(f"{r:.1f}" for r in per_round)))
    return out
