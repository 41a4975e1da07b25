"""Placement (issue 16): balance speed, migration throughput, step times during a move.

Real ``ps-server`` processes on loopback; one worker process (this one). Four measurements,
each against a baseline taken in the same run:

1. ``shards``: push-pull steps of one 16 MiB float32 table (SGD) on 1 shard and on 2 shards,
   interleaved; the ratio says whether 2 shards are slower than 1;
2. ``migration``: ``ps-admin move`` of half the blocks of a table with Adam (values and two
   moments travel) from shard 0 to shard 1 and back; GB/s = bytes of the moved blocks'
   values and optimizer state / seconds of the move (all steps: settle, take, release);
3. ``steps``: a worker's push-pull step times on a 4 MiB table before any move and while
   blocks of a second table move back and forth; p50 and p99 of each;
   ``migration-sync`` repeats it with servers in sync mode and one sync worker (each move
   settles at a step boundary: the worker's next step waits for it);
4. ``sparse-rebalance``: a skewed sparse workload (row ids drawn from a Zipf law, exponent
   1.2 and, more skewed, 2.0, over a million ids; pulls and pushes of 4096 ids a step) on 3
   shards; the load ratio (busiest shard's rows pushed and pulled / the mean; a message
   counts each distinct id once, as the client merges repeats) of the workload under the
   default placement (the baseline), then ``rebalance --by accesses`` (row buckets move),
   then the ratio of the same workload drawn again on the new placement (counted afresh).

Usage: ``python -m bench.placement_bench [--quick] [--only NAME] [--out FILE.json]``. Prints
JSON lines; writes them all to ``--out`` when given. Blocks for about a minute (``--quick``:
seconds).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np

from bench.servers import ps_servers
from launcher.placement_moves import move_blocks, newest_placement, rebalance
from ps._proto import ps_pb2
from worker import Client
from worker.client.transport import RetryPolicy, ShardChannel, fan_out


def _steps(client: Client, name: str, size: int, count: int) -> list[float]:
    grad = np.ones(size, np.float32) * 1e-6
    out = []
    for _ in range(count):
        start = time.perf_counter()
        client.push_pull({name: grad}, [name])
        out.append(time.perf_counter() - start)
    return out


def shards(quick: bool) -> dict:
    """16 MiB table: steps on 1 shard and on 2 shards, interleaved rounds; medians (s)."""
    size, rounds, per_round = 1 << 22, (2 if quick else 5), (5 if quick else 20)
    with ps_servers(1, "--mode", "async") as one, ps_servers(2, "--mode", "async") as two:
        with Client(one) as c1, Client(two) as c2:
            for c in (c1, c2):
                c.create("big", (size,), optimizer="sgd", lr=0.01)
                _steps(c, "big", size, 3)  # warm up
            times: dict[str, list[float]] = {"1 shard": [], "2 shards": []}
            for _ in range(rounds):
                times["1 shard"] += _steps(c1, "big", size, per_round)
                times["2 shards"] += _steps(c2, "big", size, per_round)
            blocks = [t["blocks"] for s in c2.status() for t in s["tables"]]
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"bench": "shards", "table_bytes": size * 4, "blocks_per_shard": blocks,
            "median_step_s": med, "ratio_2_over_1": med["2 shards"] / med["1 shard"]}


def migration_and_steps(quick: bool, mode: str = "async") -> list[dict]:
    """Move half the blocks of a 64 MiB Adam table back and forth; meanwhile a worker steps
    (``mode`` "sync": one sync worker, so every move settles at a step boundary)."""
    moving_elems = (1 << 22) if quick else (1 << 24)   # 16 MiB / 64 MiB of float32
    step_elems = 1 << 20                                 # 4 MiB
    extra = ("--num-workers", "1") if mode == "sync" else ()
    with ps_servers(2, "--mode", mode, *extra) as addresses:
        channels = [ShardChannel(a, 1 << 28) for a in addresses]
        try:
            with Client(addresses, observer=mode == "sync") as setup:
                setup.create("moving", (moving_elems,), optimizer="adam", lr=0.001)
                setup.create("steps", (step_elems,), optimizer="sgd", lr=0.01)
                num_blocks = setup.spec("moving").num_blocks
                block_bytes = setup.spec("moving").block_elems * 4
            with Client(addresses) as worker:
                _steps(worker, "steps", step_elems, 5)
                before = _steps(worker, "steps", step_elems, 40 if quick else 200)
                during: list[float] = []
                moves: list[tuple[int, float]] = []
                done = threading.Event()

                def mover() -> None:
                    for i in range(2 if quick else 6):  # bounded
                        current = newest_placement(channels, 60.0, RetryPolicy())
                        owned = current.owners("moving", num_blocks)
                        src = i % 2
                        picked = owned[src][: len(owned[src]) // 2 + 1]
                        start = time.perf_counter()
                        move_blocks(channels, {("moving", b): 1 - src for b in picked}, 60.0)
                        moves.append((len(picked), time.perf_counter() - start))
                    done.set()

                thread = threading.Thread(target=mover, daemon=True)
                thread.start()
                for _ in range(100_000):  # bounded: steps until the moves are done
                    if done.is_set():
                        break
                    during += _steps(worker, "steps", step_elems, 1)
                thread.join(120.0)
        finally:
            for ch in channels:
                ch.close()
    per_block = block_bytes * 3  # values + Adam's two moments (the step counter is 8 bytes)
    moved_bytes = sum(n for n, _ in moves) * per_block
    seconds = sum(s for _, s in moves)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None  # noqa: E731
    return [
        {"bench": "migration", "mode": mode, "moves": len(moves), "blocks_moved": sum(n for n, _ in moves),
         "bytes_moved": moved_bytes, "seconds": seconds, "gb_per_s": moved_bytes / seconds / 1e9},
        {"bench": "steps", "mode": mode, "table_bytes": step_elems * 4, "steps_before": len(before), "steps_during": len(during),
         "p50_before_s": pct(before, 50), "p99_before_s": pct(before, 99),
         "p50_during_s": pct(during, 50), "p99_during_s": pct(during, 99),
         "p99_ratio": (pct(during, 99) / pct(before, 99)) if during else None},
    ]


def _row_accesses(channels: list[ShardChannel]) -> list[int]:
    """Rows pushed and pulled so far on each shard, summed over its row buckets."""
    replies = fan_out([(ch, ch.status, ps_pb2.StatusRequest(with_loads=True)) for ch in channels], 60.0,
                      RetryPolicy())
    return [sum(x.accesses for x in r.loads if x.rows and not x.kept) for r in replies]


def _ratio(loads: list[int]) -> float:
    return max(loads) / (sum(loads) / len(loads))


def sparse_rebalance(quick: bool, exponent: float) -> dict:
    """Load ratio of a Zipf (``exponent``) sparse workload before and after ``rebalance --by accesses``."""
    num_shards, dim, batch, steps = 3, 16, 4096, (30 if quick else 200)

    def workload(client: Client, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for k in range(steps):
            ids = (rng.zipf(exponent, batch) - 1) % 1_000_000
            if k % 2:
                client.pull_rows("emb", ids)
            else:
                client.push_rows("emb", ids, np.full((batch, dim), 1e-3, np.float32))

    with ps_servers(num_shards, "--mode", "async") as addresses:
        channels = [ShardChannel(a, 1 << 28) for a in addresses]
        try:
            with Client(addresses) as worker:
                worker.create_sparse("emb", dim, optimizer="adagrad", lr=0.01)
                workload(worker, 1)
                before = _row_accesses(channels)
                start = time.perf_counter()
                result = rebalance(channels, "accesses", 1.1, 120.0)
                seconds = time.perf_counter() - start
                moved_at = _row_accesses(channels)
                workload(worker, 2)  # new draws from the same law, on the new placement
                after = [b - a for a, b in zip(moved_at, _row_accesses(channels))]
                buckets_moved = sum(1 for u in newest_placement(channels, 60.0, RetryPolicy()).moved if u[1])
        finally:
            for ch in channels:
                ch.close()
    return {"bench": "sparse-rebalance", "shards": num_shards, "zipf_exponent": exponent, "ids": 1_000_000,
            "ids_per_step": batch, "steps": steps, "accesses_before": before, "ratio_before": _ratio(before),
            "rebalance_planned_ratio_after": result["after"], "buckets_moved": buckets_moved,
            "rebalance_s": seconds, "accesses_after": after, "ratio_after": _ratio(after)}


BENCHES = {"shards": lambda quick: [shards(quick)], "migration": migration_and_steps,
           "migration-sync": lambda quick: migration_and_steps(quick, "sync"),
           "sparse-rebalance": lambda quick: [sparse_rebalance(quick, 1.2), sparse_rebalance(quick, 2.0)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few seconds: fewer steps, smaller tables")
    p.add_argument("--only", choices=sorted(BENCHES), default=None, help="run one measurement (default: all)")
    p.add_argument("--out", default=None, help="also write every result line to this JSON file")
    args = p.parse_args(argv)
    results = [r for name, bench in BENCHES.items() if args.only in (None, name) for r in bench(args.quick)]
    for r in results:
        print(json.dumps(r), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
