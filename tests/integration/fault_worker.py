"""A worker process for the fault tests: pushes known integer gradients (exact in float32).

``--oracle rows`` (async): table ``w`` has one row per worker; worker i pushes a gradient
that is 1 on its row and 0 elsewhere, with plain SGD at lr 1, until its row reads
``-target``. A restarted worker first reads how far its row got, so the cluster's final
state is exactly ``-target`` on every row unless a push was lost or applied twice.

``--oracle steps`` (sync): table ``w`` is a vector; every worker pushes ones each step,
so every applied step subtracts exactly 1 (the mean of ones) and ``w == -version``.

Prints ``joined <clock>``, then ``step <n>`` after each acknowledged push, and
``done <stats as JSON>`` at the end. Run as ``python -m tests.integration.fault_worker``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

from worker import Client


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--servers", required=True)
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--oracle", choices=["rows", "steps"], required=True)
    p.add_argument("--target", type=int, required=True)
    p.add_argument("--rows", type=int, default=3)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--block", type=int, default=16)
    p.add_argument("--sleep", type=float, default=0.02)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    with Client(args.servers, worker_id=args.id, connect_timeout_s=30) as ps:
        if args.oracle == "rows":
            ps.create("w", shape=(args.rows, args.width), lr=1.0, block_elems=args.block)
            count = int(round(-float(ps.pull("w")["w"][args.id, 0])))
            print(f"joined {count}", flush=True)
            grad = np.zeros((args.rows, args.width), np.float32)
            grad[args.id] = 1.0
            while count < args.target:
                ps.push({"w": grad})
                count += 1
                print(f"step {count}", flush=True)
                time.sleep(args.sleep)
        else:
            ps.create("w", shape=(args.width,), lr=1.0, block_elems=args.block)
            print(f"joined {ps.clock}", flush=True)
            ones = np.ones(args.width, np.float32)
            while ps.clock < args.target:
                ps.pull("w")
                ps.push({"w": ones})
                print(f"step {ps.clock}", flush=True)
                time.sleep(args.sleep)
        print(f"done {json.dumps(ps.stats)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
