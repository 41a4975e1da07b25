"""A shard's memory against its state: peak and steady RSS of one ``ps-server`` process.

    python -m bench.memory                       # 256 MiB float32 table, Adam, every path
    python -m bench.memory --paths stream --mib 64 --steps 2

One fresh ``ps-server`` per path (``shm``: same-host shared memory; ``stream``: the TCP
data plane; ``grpc``: gRPC alone). This process is the worker: it creates one dense
float32 table of ``--mib`` MiB with Adam, then runs the issue's sequence, three whole-table
pushes and a pull, then ``--steps`` fused ``push_pull`` steps into a reused array.

The shard's **state** is its tables plus their optimizer state: for Adam the weights and
the two moments (three times the table) and one int64 step count per block. Read from
``/proc/<server pid>/status`` after each phase: ``VmRSS`` (steady) and ``VmHWM`` (the peak
since the process started). Before the steady phase the peak is reset (``5`` written to
``/proc/<pid>/clear_refs``), so the last column is the peak during steady pushes and pulls
alone. ``RssShmem`` is the shared memory counted in the RSS: on the ``shm`` path the
worker's push and pull areas, mapped by the shard (the worker's memory, counted in both
processes): the last column, (peak - RssShmem) / state, is the shard's own memory. Prints
a markdown table with peak / state; writes JSON beside the other results with ``--out``.

Bounded: every call has a deadline (``--timeout``), the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time

import numpy as np

from bench.servers import ps_servers
from ps.allocator import tune_malloc
from worker import Client

PATHS = {  # path: (server flags, Client keyword arguments)
    "shm": ((), {"local": True, "stream": False}),
    "stream": (("--no-local-plane",), {"local": False, "stream": True}),
    "grpc": (("--no-local-plane", "--no-stream-plane"), {"local": False, "stream": False}),
}
FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def proc_status(pid: int) -> dict[str, int]:
    """Memory fields of ``/proc/<pid>/status``, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in FIELDS:
                out[key] = int(rest.split()[0]) * 1024  # kB
    return out


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0). False where the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def state_bytes(nbytes: int, block_bytes: int) -> int:
    """Adam's state for a float32 table of ``nbytes``: weights, m, v, and an int64 step per block."""
    blocks = -(-nbytes // block_bytes)
    return 3 * nbytes + 8 * blocks


def measure_path(path: str, mib: int, steps: int, timeout_s: float, extra: tuple[str, ...] = ()) -> dict:
    """One fresh server; the phases' memory readings. Blocks (about a minute at 256 MiB)."""
    flags, kwargs = PATHS[path]
    n = (mib << 20) // 4
    procs: list = []
    phases: dict[str, dict[str, int]] = {}
    with contextlib.ExitStack() as stack:
        addresses = stack.enter_context(ps_servers(1, *flags, *extra, procs_out=procs))
        pid = procs[0].pid
        phases["idle"] = proc_status(pid)
        ps = stack.enter_context(Client(addresses, **kwargs, timeout_s=timeout_s, wait_timeout_s=timeout_s))
        if path == "stream" and not all(s is not None for s in getattr(ps, "_stream", [True])):
            raise RuntimeError("the TCP data plane is not in use")
        ps.create("w", shape=(n,), init="zeros", optimizer="adam", lr=1e-3)
        block_bytes = ps.spec("w").block_elems * 4
        phases["created"] = proc_status(pid)
        grad = np.full(n, 1e-3, dtype=np.float32)
        t0 = time.monotonic()
        for _ in range(3):
            ps.push({"w": grad})
        ps.pull("w")
        phases["3 pushes + pull"] = proc_status(pid)
        reset = reset_peak(pid)
        out = {"w": np.empty(n, dtype=np.float32)}
        for _ in range(steps):
            ps.push_pull({"w": grad}, out=out)
        phases["steady"] = proc_status(pid)
        wall = time.monotonic() - t0
        sample = ps.pull("w")["w"][:2]
    state = state_bytes(n * 4, block_bytes)
    peak_life = max(p["VmHWM"] for p in phases.values())
    return {"path": " ".join((path, *extra)), "table_bytes": n * 4, "state_bytes": state, "block_bytes": block_bytes,
            "phases": phases, "peak_bytes": peak_life, "steady_bytes": phases["steady"]["VmRSS"],
            "steady_peak_bytes": phases["steady"]["VmHWM"] if reset else None,
            "peak_over_state": peak_life / state, "steady_over_state": phases["steady"]["VmRSS"] / state,
            "steady_peak_over_state": phases["steady"]["VmHWM"] / state if reset else None,
            "wall_s": round(wall, 1), "weights_sample": [float(x) for x in sample]}


def table(rows: list[dict]) -> str:
    gb = lambda b: f"{b / 1e9:.2f}"  # noqa: E731
    lines = ["| path | state GB | idle RSS | after create | after 3 pushes + pull | steady RSS | peak (VmHWM) "
             "| **peak / state** | (peak - idle) / state | steady / state | peak in steady phase / state | RssShmem at end "
             "| (peak - RssShmem) / state |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ph = r["phases"]
        sp = r["steady_peak_over_state"]
        lines.append(f"| {r['path']} | {gb(r['state_bytes'])} | {gb(ph['idle']['VmRSS'])} | {gb(ph['created']['VmRSS'])} "
                     f"| {gb(ph['3 pushes + pull']['VmRSS'])} | {gb(r['steady_bytes'])} | {gb(r['peak_bytes'])} "
                     f"| **{r['peak_over_state']:.2f}** | {(r['peak_bytes'] - ph['idle']['VmRSS']) / r['state_bytes']:.2f} "
                     f"| {r['steady_over_state']:.2f} "
                     f"| {'-' if sp is None else f'{sp:.2f}'} | {gb(ph['steady'].get('RssShmem', 0))} "
                     f"| {(r['peak_bytes'] - ph['steady'].get('RssShmem', 0)) / r['state_bytes']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paths", default="grpc,stream,shm", help="comma-separated among " + ",".join(PATHS))
    p.add_argument("--mib", type=int, default=256, help="table size in MiB (float32)")
    p.add_argument("--steps", type=int, default=3, help="fused push_pull steps after the pushes and the pull")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline of each call, seconds")
    p.add_argument("--server-args", default="", help="extra ps-server flags, e.g. --no-malloc-tuning")
    p.add_argument("--out", default="", help="folder for a JSON record (default: print only)")
    args = p.parse_args()
    tune_malloc()  # the project's recommended worker setting, as in bench.peers.project
    rows = []
    for path in args.paths.split(","):
        print(f"memory: {path}, {args.mib} MiB with Adam ...", file=sys.stderr, flush=True)
        rows.append(measure_path(path, args.mib, args.steps, args.timeout, tuple(args.server_args.split())))
    text = table(rows)
    print(text)
    if args.out:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"memory-{stamp}.json"), "w") as f:
            json.dump({"settings": vars(args), "loadavg": os.getloadavg(), "rows": rows}, f, indent=1)
        print(f"wrote {args.out}/memory-{stamp}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
