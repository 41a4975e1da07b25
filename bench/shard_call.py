"""The shard's own cost of one fused PushPull, in process (no sockets, no worker).

    python -m bench.shard_call [--mode async] [--size 4KiB] [--calls 20000] [--warm 500]

Builds a :class:`~ps.shard.shard.Shard` with one SGD table of ``--size`` float32 and one
registered worker, and sends ``--calls`` PushPull headers (as bytes, as the data planes hand
them over) with the gradient payload through :meth:`ShardHandler.data`, the path every plane
takes. Prints the CPU microseconds per call (``process_time``, the least of 5 rounds).

On a busy shared machine CPU times move by tens of percent; instruction counts do not. For
those, run it under valgrind twice and take the difference per call, which leaves out the
start-up (imports):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.shard_call --calls 0 --warm 200
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.shard_call --calls 0 --warm 2200
    # ("Collected : N" of each; (N2 - N1) / 2000 = instructions per call)

Blocks while it runs; bounded by ``--calls``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.harness import SIZES
from ps._proto import ps_pb2
from ps.config import ServerConfig
from ps.serving.handler import Payload, ShardHandler
from ps.shard.shard import Shard
from ps.tables.optim import OptimizerSpec
from ps.tables.spec import TableSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="async", choices=("async", "ssp", "sync"))
    p.add_argument("--size", default="4KiB")
    p.add_argument("--calls", type=int, default=20000, help="timed calls (0: none)")
    p.add_argument("--warm", type=int, default=500, help="untimed calls first")
    p.add_argument("--block-elems", type=int, default=0, help="the table's block size (0: automatic)")
    args = p.parse_args()
    n = SIZES[args.size] // 4
    shard = Shard(ServerConfig(mode=args.mode, shard_index=0, num_shards=1, num_workers=1))
    shard.create_table(TableSpec("w", (n,), block_elems=args.block_elems, optimizer=OptimizerSpec("sgd", lr=0.001)))
    shard.register(0, session=5)
    table = shard.tables["w"]
    version = shard.placement.version
    header = ps_pb2.PushHeader(worker_id=0, num_parts=1, session=5, placement_version=version)
    for b in range(table.spec.num_blocks):
        header.blocks.add(table="w", block=b, dtype=table.wire_dtype,
                          count=min(table.spec.block_elems, n - b * table.spec.block_elems))
    header.then_pull.worker_id = 0
    header.then_pull.tables.append("w")
    header.then_pull.num_parts = 1
    header.then_pull.placement_version = version
    payload = Payload(np.full(n, 1e-3, np.float32).tobytes())
    handler = ShardHandler(shard)
    seq = 1

    def run(calls: int) -> None:
        nonlocal seq
        for _ in range(calls):
            header.seq, header.step = seq, seq - 1
            header.then_pull.step = seq if args.mode == "sync" else seq - 1
            seq += 1
            reply = handler.data("PushPull", header.SerializeToString(), payload, 10.0)
            if not hasattr(reply, "outcome"):
                raise RuntimeError(f"the shard refused a call: {reply}")

    run(args.warm)
    if args.calls:
        rounds = []
        for _ in range(5):
            t0 = time.process_time()
            run(max(1, args.calls // 5))
            rounds.append((time.process_time() - t0) / max(1, args.calls // 5) * 1e6)
        print(f"{args.mode} {args.size} in {table.spec.num_blocks} blocks: {min(rounds):.1f} CPU us per PushPull "
              f"(least of 5 rounds; median {sorted(rounds)[2]:.1f})")


if __name__ == "__main__":
    main()
