"""CPU cost of one step: worker and server CPU milliseconds per step, robust to a busy machine.

    python -m bench.step_cost [--sizes 4KiB,16MiB] [--shards 1] [--steps 50]

Wall-clock rates swing with whatever else runs on a shared 2-core VM; the CPU time each
process spends per step does much less. For each path (``shm``: the shared-memory data
plane with the user's own arrays; ``buffers``: the same with ``Client.buffers``;
``stream``: the TCP data plane beside gRPC; ``tcp``: gRPC alone over TCP) this runs
``--steps`` fused steps and reads the worker's ``process_time`` and the servers'
``/proc/PID/stat`` utime+stime (Linux).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench.harness import SIZES
from bench.servers import ps_servers
from worker import Client


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cost(size: int, shards: int, path: str, steps: int, part_bytes: int = 16 << 20) -> dict:
    remote = path in ("tcp", "stream")  # gRPC alone, or gRPC with the TCP data plane
    flags = (["--no-local-plane"] if remote else []) + (["--no-stream-plane"] if path == "tcp" else [])
    with ps_servers(shards, *flags) as addresses:
        pids = _server_pids()
        with Client(addresses, local=not remote, stream=path == "stream", part_bytes=part_bytes) as ps:
            n = size // 4
            ps.create("w", shape=(n,), lr=0.001)
            grad = np.full(n, 1e-3, np.float32)
            out = {"w": np.empty(n, np.float32)}
            if path == "buffers":
                grads, weights = ps.buffers(["w"])
                grads["w"][:] = grad

                def step():
                    ps.push_pull(grads, out=weights)
            else:
                def step():
                    ps.push_pull({"w": grad}, out=out)
            for _ in range(3):
                step()
            c0, s0, t0 = time.process_time(), sum(_cpu_s(p) for p in pids), time.perf_counter()
            for _ in range(steps):
                step()
            wall = time.perf_counter() - t0
            worker = time.process_time() - c0
            server = sum(_cpu_s(p) for p in pids) - s0
    return {"path": path, "size": size, "shards": shards, "wall_ms": wall / steps * 1e3,
            "worker_cpu_ms": worker / steps * 1e3, "server_cpu_ms": server / steps * 1e3}


def _server_pids() -> list[int]:
    me = os.getpid()
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if ppid == me and b"launcher.server_cli" in cmd:
                pids.append(int(d))
    return pids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4KiB,1MiB,16MiB,128MiB")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="0: about 0.5 s worth per size")
    p.add_argument("--paths", default="shm,buffers,stream,tcp")
    p.add_argument("--part-mib", type=int, default=16, help="Client(part_bytes=...) in MiB (gRPC and stream)")
    args = p.parse_args()
    print("| path | size | shards | wall ms/step | worker CPU ms/step | servers CPU ms/step |")
    print("|---|---|---:|---:|---:|---:|")
    for size_name in args.sizes.split(","):
        size = SIZES[size_name]
        steps = args.steps or max(3, min(2000, int(0.5e9 / max(size, 200_000)) if size >= 1 << 20 else 1000))
        for path in args.paths.split(","):
            if path in ("tcp", "stream") and size >= 128 << 20:
                steps = min(steps, 3)
            r = cost(size, args.shards, path, steps, args.part_mib << 20)
            print(f"| {path} | {size_name} | {args.shards} | {r['wall_ms']:.2f} | {r['worker_cpu_ms']:.2f} | "
                  f"{r['server_cpu_ms']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
