"""py-spy profiles of the worker and the server while fused steps run on one path.

    python -m bench.profile_step --path stream --size 1MiB --tag before
    python -m bench.profile_step --path shm --size 4KiB --tag before --seconds 8

Starts one ``ps-server`` (flags of the path as in :mod:`bench.peers.project`), creates a
float32 table of ``--size`` with SGD, runs ``push_pull(grads, out=)`` steps in this process
for ``--seconds`` while two ``py-spy record --native -r RATE -f raw`` processes sample this
process (the worker) and the server. Writes ``bench/profiles/<size>-<tag>-<path>-client.txt``
and ``-server.txt`` (collapsed stacks; summarise with ``python -m bench.profile_summary
FILE --busy``) and prints the step rate under the profiler (py-spy pauses each process to
sample it, so that rate is below an unprofiled run's). Needs ``py-spy`` (the ``bench``
extra) and the right to ptrace (root, or ``kernel.yama.ptrace_scope=0``). Bounded: the
steps stop at ``--seconds``, py-spy at ``--seconds`` + 2 s, the server is stopped after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from bench.harness import SIZES
from bench.memory import PATHS
from bench.servers import ps_servers
from ps.allocator import tune_malloc
from worker import Client

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")


def profile(path: str, size_name: str, tag: str, seconds: float, rate: int, out_dir: str) -> dict:
    """Profile ``seconds`` of steps; returns the files and the step rate. Blocks."""
    flags, kwargs = PATHS[path]
    n = SIZES[size_name] // 4
    procs: list = []
    files = {who: os.path.join(out_dir, f"{size_name}-{tag}-{path}-{who}.txt") for who in ("client", "server")}
    with ps_servers(1, *flags, procs_out=procs) as addresses, \
            Client(addresses, **kwargs, timeout_s=60, wait_timeout_s=60) as ps:
        ps.create("w", shape=(n,), lr=0.001)
        grad = np.full(n, 1e-3, dtype=np.float32)
        out = {"w": np.empty(n, dtype=np.float32)}
        for _ in range(20):  # warm: connections, buffers, caches
            ps.push_pull({"w": grad}, out=out)
        pids = {"client": os.getpid(), "server": procs[0].pid}
        spies = [subprocess.Popen(["py-spy", "record", "--native", "-r", str(rate), "-f", "raw", "-d",
                                   str(int(seconds)), "-p", str(pids[who]), "-o", files[who]],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for who in ("client", "server")]
        try:
            time.sleep(0.5)  # py-spy attaches (not a wait for a server: the profiler has no ready signal)
            steps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                ps.push_pull({"w": grad}, out=out)
                steps += 1
            wall = time.perf_counter() - t0
            for spy in spies:
                _, err = spy.communicate(timeout=seconds + 10)
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.strip()[-300:]}")
        finally:
            for spy in spies:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait(5)
    return {"path": path, "size": size_name, "steps": steps, "steps_per_s": steps / wall, "files": files}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", choices=list(PATHS), default="stream")
    p.add_argument("--size", choices=list(SIZES), default="1MiB")
    p.add_argument("--tag", default="before", help="part of the file names: before, after, ...")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install -e '.[bench]'")
    tune_malloc()  # as bench.peers.project
    os.makedirs(args.out, exist_ok=True)
    r = profile(args.path, args.size, args.tag, args.seconds, args.rate, args.out)
    print(f"{r['path']} {r['size']}: {r['steps']} steps, {r['steps_per_s']:,.0f} steps/s under the profiler; "
          f"wrote {r['files']['client']} and {r['files']['server']}")


if __name__ == "__main__":
    main()
