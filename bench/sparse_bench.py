"""Sparse tables: pull_rows / push_rows throughput over a 10^7-row table, and memory per row.

    python -m bench.sparse_bench [--rows 10000000] [--dim 16] [--optimizer adagrad]
                                 [--batches 1000,100000] [--seconds 5] [--json FILE]

Starts 2 real ``ps-server`` processes (async mode) and 2 bare gRPC *echo* processes,
fills one sparse table with ``--rows`` distinct random 64-bit ids (placed on the 2
shards by ``row_shards``), then for each batch size times, from one worker process,

- ``pull_rows(ids)`` and ``push_rows(ids, grads)`` of ``batch`` distinct ids drawn
  uniformly from the live rows (rows/s = ids per call / seconds per call), and
- the echo baseline in the same run: the same bytes each way (ids out and row values
  back for a pull; ids and values out and a tiny ack back for a push), split over the 2
  echo processes the same way, with no work on the far side: the transport's limit.

Memory per live row is reported two ways: the table's allocated bytes (Status ``bytes``:
values, optimizer state, id index, all at allocated capacity) / live rows, and the
growth of the servers' resident set size / live rows; both against the raw bytes of a
row (8-byte id + values + optimizer state). Prints a table and one JSON object.
Blocks for the whole run (about a minute at 10^7 rows); stops every process it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import numpy as np

from bench.servers import REPO, readline, stop

ECHO = "/bench.Echo/"


# -- the echo baseline ------------------------------------------------------------------


def serve_echo() -> None:
    """Run a bare gRPC echo server on a free port; print ``echo listening on PORT``; block."""
    row_bytes = int(os.environ.get("ECHO_ROW_BYTES", "64"))
    blob = bytes(row_bytes * 200_000)

    def sink(request: bytes, context) -> bytes:            # a push: take the bytes, ack
        return b"ok"

    def source(request: bytes, context) -> bytes:          # a pull: ids in, rows out
        return blob[: (len(request) // 8) * row_bytes]

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Sink": grpc.unary_unary_rpc_method_handler(sink),
        "Source": grpc.unary_unary_rpc_method_handler(source),
    })
    opts = [("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=opts)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"echo listening on {port}", flush=True)
    server.wait_for_termination(timeout=3600)


@contextlib.contextmanager
def processes(commands: list[list[str]], prefix: str, env: dict | None = None,
              timeout_s: float = 30.0) -> Iterator[list[tuple[str, int]]]:
    """Start each command; wait (bounded) for its ``<prefix> ... ADDRESS`` line; yield (address, pid)."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env) for cmd in commands]
    try:
        out = []
        for p in procs:
            line = readline(p, timeout_s)
            if not line.startswith(prefix):
                raise RuntimeError(f"unexpected first line {line!r}")
            last = line.rsplit(" ", 1)[1].strip()
            out.append((last if ":" in last else f"127.0.0.1:{last}", p.pid))
        yield out
    finally:
        stop(procs)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- timing -------------------------------------------------------------------------------


def time_calls(fn: Callable[[], None], seconds: float, min_calls: int = 5) -> tuple[int, float]:
    """Warm up once, then call ``fn`` until ``seconds`` and ``min_calls`` passed: (calls, median s)."""
    fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return len(times), statistics.median(times)


def spread_ids(n: int, seed: int) -> np.ndarray:
    """``n`` distinct ids spread over the whole int64 range (SplitMix64 is a bijection)."""
    x = np.arange(n, dtype=np.uint64) + np.uint64(seed << 40)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return x.view(np.int64)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="live rows to fill the table with")
    p.add_argument("--dim", type=int, default=16, help="row width (float32 elements)")
    p.add_argument("--optimizer", default="adagrad", help="sgd | momentum | adagrad | adam")
    p.add_argument("--batches", default="1000,100000", help="ids per call, comma-separated")
    p.add_argument("--seconds", type=float, default=5.0, help="minimum timing per measurement")
    p.add_argument("--fill-batch", type=int, default=250_000, help="ids per push while filling")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_echo:
        serve_echo()
        return 0

    from ps.tables.optim import OptimizerSpec
    from ps.tables.sparse_optim import RowOptimizer
    from worker import Client

    row_bytes = args.dim * 4
    layout = RowOptimizer(OptimizerSpec(args.optimizer)).state_layout(args.dim, np.dtype("float32"))
    state_bytes = sum(int(np.prod(shape)) * dt.itemsize for shape, dt, _ in layout.values())
    raw = 8 + row_bytes + state_bytes
    batches = [int(b) for b in args.batches.split(",")]
    server_cmd = [sys.executable, "-m", "launcher.server_cli", "--port", "0", "--log-level", "WARNING",
                  "--mode", "async"]
    echo_cmd = [sys.executable, "-m", "bench.sparse_bench", "--serve-echo"]
    env = dict(os.environ, ECHO_ROW_BYTES=str(row_bytes))
    result: dict = {"rows": args.rows, "dim": args.dim, "optimizer": args.optimizer, "shards": 2,
                    "servers": "2 ps-server processes on loopback; 1 client process",
                    "raw_bytes_per_row": raw, "cpus": os.cpu_count()}
    with processes([server_cmd, server_cmd], "ps-server listening on ") as servers, \
            processes([echo_cmd, echo_cmd], "echo listening on ", env=env) as echoes:
        rss0 = sum(rss_bytes(pid) for _, pid in servers)
        with Client([a for a, _ in servers], worker_id=0, timeout_s=120, wait_timeout_s=600) as ps:
            ps.create_sparse("emb", args.dim, optimizer=args.optimizer, lr=0.01)
            ids = spread_ids(args.rows, seed=1)
            grads = np.full((args.fill_batch, args.dim), 0.01, np.float32)
            t0 = time.perf_counter()
            for start in range(0, args.rows, args.fill_batch):
                chunk = ids[start:start + args.fill_batch]
                ps.push_rows("emb", chunk, grads[: len(chunk)])
            fill_s = time.perf_counter() - t0
            status = ps.status()
            tables = [next(t for t in s["sparse_tables"] if t["name"] == "emb") for s in status]
            live = sum(t["rows"] for t in tables)
            table_bytes = sum(t["bytes"] for t in tables)
            rss1 = sum(rss_bytes(pid) for _, pid in servers)
            result.update(fill_seconds=fill_s, fill_rows_per_s=args.rows / fill_s, live_rows=live,
                          rows_per_shard=[t["rows"] for t in tables],
                          table_bytes_per_row=table_bytes / live, rss_bytes_per_row=(rss1 - rss0) / live,
                          table_ratio_to_raw=table_bytes / live / raw, rss_ratio_to_raw=(rss1 - rss0) / live / raw,
                          server_rss_gib=rss1 / 2**30)
            rng = np.random.default_rng(0)
            channels = [grpc.insecure_channel(a, options=[("grpc.max_receive_message_length", 256 << 20),
                                                          ("grpc.max_send_message_length", 256 << 20)])
                        for a, _ in echoes]
            sinks = [c.unary_unary(ECHO + "Sink") for c in channels]
            sources = [c.unary_unary(ECHO + "Source") for c in channels]
            result["batches"] = []
            for batch in batches:
                pick = np.unique(ids[rng.integers(0, args.rows, batch * 2)])[:batch]
                pick = rng.permutation(pick)
                g = np.full((len(pick), args.dim), 1e-3, np.float32)
                halves = np.array_split(pick, 2)
                push_payloads = [h.tobytes() + bytes(len(h) * row_bytes) for h in halves]
                pull_payloads = [h.tobytes() for h in halves]

                def echo(stubs, payloads):
                    fs = [s.future(b, timeout=60) for s, b in zip(stubs, payloads)]
                    for f in fs:
                        f.result()

                n_pull, t_pull = time_calls(lambda: ps.pull_rows("emb", pick), args.seconds)
                n_push, t_push = time_calls(lambda: ps.push_rows("emb", pick, g), args.seconds)
                _, e_pull = time_calls(lambda: echo(sources, pull_payloads), args.seconds / 2)
                _, e_push = time_calls(lambda: echo(sinks, push_payloads), args.seconds / 2)
                result["batches"].append({
                    "batch": len(pick), "pull_rows_per_s": len(pick) / t_pull, "push_rows_per_s": len(pick) / t_push,
                    "pull_ms": t_pull * 1e3, "push_ms": t_push * 1e3, "echo_pull_rows_per_s": len(pick) / e_pull,
                    "echo_push_rows_per_s": len(pick) / e_push, "pull_vs_echo": e_pull / t_pull,
                    "push_vs_echo": e_push / t_push, "calls": [n_pull, n_push],
                })
            for c in channels:
                c.close()
            assert ps.status()[0]["sparse_tables"][0]["rows"] == tables[0]["rows"], "rows were lost"
    print(report(result))
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def report(r: dict) -> str:
    lines = [
        f"sparse table: {r['live_rows']:,} live rows (per shard {r['rows_per_shard']}), dim {r['dim']} float32, "
        f"{r['optimizer']}; {r['servers']}; {r['cpus']} CPUs",
        f"fill: {r['fill_rows_per_s']:,.0f} new rows/s ({r['fill_seconds']:.1f} s)",
        f"memory per live row: raw {r['raw_bytes_per_row']} B (id + values + optimizer state); "
        f"table {r['table_bytes_per_row']:.1f} B ({r['table_ratio_to_raw']:.2f}x raw); "
        f"server RSS growth {r['rss_bytes_per_row']:.1f} B ({r['rss_ratio_to_raw']:.2f}x raw); "
        f"servers' RSS {r['server_rss_gib']:.2f} GiB",
        "",
        "| ids/call | pull_rows rows/s | push_rows rows/s | pull ms | push ms | echo pull rows/s | echo push rows/s "
        "| pull/echo | push/echo |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b in r["batches"]:
        lines.append(
            f"| {b['batch']:,} | {b['pull_rows_per_s']:,.0f} | {b['push_rows_per_s']:,.0f} | {b['pull_ms']:.2f} "
            f"| {b['push_ms']:.2f} | {b['echo_pull_rows_per_s']:,.0f} | {b['echo_push_rows_per_s']:,.0f} "
            f"| {b['pull_vs_echo']:.2f} | {b['push_vs_echo']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
