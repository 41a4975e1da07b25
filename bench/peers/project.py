"""This project: ``ps-server`` processes and one :class:`worker.Client` per cluster in this process.

Paths: ``shm`` (the same-host shared-memory data plane, the default for loopback
servers), ``tcp`` (gRPC over loopback TCP only: ``Client(local=False, stream=False)``,
servers with ``--no-local-plane --no-stream-plane``), ``stream`` (the raw TCP data plane
that workers on other hosts use: ``Client(local=False)``, servers with
``--no-local-plane``) and ``uds`` (gRPC over a unix socket, servers started with
``--uds``). APIs: ``fused`` is one ``push_pull(grads, out=weights)`` per step (the
worker's own arrays, reused); ``split`` is ``push(grads)`` then ``pull(names)`` into
fresh arrays (the plain API); ``buffers`` is ``push_pull(grads, out=weights)`` with
``grads, weights = client.buffers(names)``: the gradient is computed into, and the
weights read from, the worker's shared memory, so the worker copies nothing (the
zero-copy pattern of Ray's object store).

The worker process calls :func:`ps.allocator.tune_malloc` (as ``ps-server`` does).

``--shards 1,2`` runs a cluster of each size side by side and measures them in
alternating rounds, so that their ratio is not the machine's noise. ``--block-elems N``
fixes the table's block size (the automatic one splits a 1 MiB table over two shards).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from bench.harness import SIZES, arg_parser, emit, measure, measure_interleaved
from bench.servers import ps_servers
from ps.allocator import tune_malloc
from worker import Client

PATH_NAMES = {"shm": "shm", "tcp": "grpc-tcp", "uds": "grpc-uds", "stream": "stream-tcp"}
API_NAMES = {"fused": "", "split": " push+pull", "buffers": " buffers"}


def main() -> None:
    tune_malloc()  # the project's recommended worker setting (ps.allocator); ps-server does it itself
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--path", choices=["shm", "tcp", "uds", "stream"], default="shm")
    p.add_argument("--api", choices=["fused", "split", "buffers"], default="fused")
    p.add_argument("--block-elems", type=int, default=0,
                   help="the table's block size in elements (0: automatic, ps.tables.spec.balanced_block_elems)")
    p.add_argument("--part-kib", type=int, default=0,
                   help="Client(part_bytes=) in KiB: the part size of the gRPC and TCP planes (0: the Client default)")
    args = p.parse_args()
    counts = [int(x) for x in args.shards.split(",")]
    tmp = tempfile.mkdtemp(prefix="ps-bench-")
    try:
        for size_name in args.sizes.split(","):
            with contextlib.ExitStack() as stack:
                # one fresh cluster per size and shard count: no state carried over
                steps = [(f"ps {PATH_NAMES[args.path]}{API_NAMES[args.api]} x{n}",
                          _stepper(stack, args, n, SIZES[size_name] // 4, tmp)) for n in counts]
                if len(steps) == 1:
                    emit(measure(steps[0][0], size_name, steps[0][1], args.seconds))
                else:
                    for r in measure_interleaved(size_name, steps, args.seconds):
                        emit(r)
    finally:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


def _stepper(stack: contextlib.ExitStack, args, shards: int, n: int, tmp: str):
    socks = [os.path.join(tmp, f"x{shards}-s{i}.sock") for i in range(shards)]
    per_server = (lambda i: ["--uds", socks[i]]) if args.path == "uds" else None
    extra = ["--no-local-plane"] if args.path != "shm" else []
    extra += ["--no-stream-plane"] if args.path in ("tcp", "uds") else []
    addresses = stack.enter_context(ps_servers(shards, *extra, per_server=per_server))
    if args.path == "uds":
        addresses = [f"unix:{s}" for s in socks]
    parts = {"part_bytes": args.part_kib << 10} if args.part_kib else {}
    ps = stack.enter_context(Client(addresses, local=args.path == "shm", stream=args.path == "stream", timeout_s=60,
                                    wait_timeout_s=120, **parts))
    if args.path == "stream" and ps.data_planes() != ["tcp"] * shards:
        raise RuntimeError("the stream plane is not in use")
    ps.create("w", shape=(n,), lr=0.001, block_elems=args.block_elems)
    grad = np.full(n, 1e-3, dtype=np.float32)
    out = {"w": np.empty(n, dtype=np.float32)}
    if args.api == "buffers":
        grads, weights = ps.buffers(["w"])
        grads["w"][:] = grad
        return lambda: ps.push_pull(grads, out=weights)
    if args.api == "fused":
        return lambda: ps.push_pull({"w": grad}, out=out)

    def split():
        ps.push({"w": grad})
        ps.pull("w")

    return split


if __name__ == "__main__":
    main()
