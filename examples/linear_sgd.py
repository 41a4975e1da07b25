"""The classic first example: a Linear(100, 10) layer trained with SGD on squared error.

Start two shards first (or pass nothing, and this script starts two in-process)::

    ps-server --port 50051 --mode sync --num-workers 2 &
    ps-server --port 50052 --mode sync --num-workers 2 &
    python examples/linear_sgd.py --servers 127.0.0.1:50051,127.0.0.1:50052 --rank 0 &
    python examples/linear_sgd.py --servers 127.0.0.1:50051,127.0.0.1:50052 --rank 1

Each worker fits its own half of a synthetic regression problem y = x @ W_true + noise.
"""

from __future__ import annotations

import argparse
import contextlib
import threading

import numpy as np

from worker import Client


def train_worker(servers: list[str], rank: int, num_workers: int, steps: int = 200) -> float:
    """Train through the cluster; returns the final mean squared error on this worker's data."""
    rng = np.random.default_rng(0)
    w_true = rng.standard_normal((100, 10)).astype(np.float32)
    x = rng.standard_normal((4000, 100)).astype(np.float32)
    y = x @ w_true + 0.01 * rng.standard_normal((4000, 10)).astype(np.float32)
    x, y = x[rank::num_workers], y[rank::num_workers]            # this worker's shard of the data

    with Client(servers, worker_id=rank) as ps:                   # connects; registers this worker
        ps.create("w", shape=(100, 10), init="zeros", optimizer="sgd", lr=0.1)   # idempotent
        ps.create("b", shape=(10,), init="zeros", optimizer="sgd", lr=0.1)
        for step in range(steps):
            batch = np.random.default_rng([rank, step]).integers(0, len(x), 64)
            xb, yb = x[batch], y[batch]
            params = ps.pull(["w", "b"])                          # in sync mode waits for this step
            err = xb @ params["w"] + params["b"] - yb             # forward: squared error 0.5 * err^2
            ps.push({"w": xb.T @ err / len(xb), "b": err.mean(axis=0)})   # gradients, exactly once
        params = ps.pull(["w", "b"])
    return float(np.mean((x @ params["w"] + params["b"] - y) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="", help="comma-separated HOST:PORT; empty: start two in-process")
    parser.add_argument("--rank", type=int, default=None, help="this worker's rank; omit to run every rank")
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        servers = [s for s in args.servers.split(",") if s]
        if not servers:
            from ps import Mode, ServerConfig, ShardServer

            for _ in range(2):
                shard = ShardServer(ServerConfig(port=0, mode=Mode.SYNC, num_workers=args.num_workers))
                servers.append(stack.enter_context(shard).address)
        ranks = [args.rank] if args.rank is not None else range(args.num_workers)
        results: dict[int, float] = {}
        threads = [threading.Thread(target=lambda r=r: results.__setitem__(
            r, train_worker(servers, r, args.num_workers))) for r in ranks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        for rank, mse in sorted(results.items()):
            print(f"worker {rank}: mean squared error {mse:.5f}")


if __name__ == "__main__":
    main()
