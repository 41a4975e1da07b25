"""Peer: a torch.distributed.rpc parameter server (TensorPipe), one server process.

The pattern of PyTorch's parameter-server tutorial: the server process holds the weights
and applies SGD; the worker calls it with ``rpc_sync`` and gets the weights back, one RPC
per step (``torch.distributed.rpc``, TensorPipe backend, loopback). Needs the optional
``bench-torch`` extra (``pip install torch==2.13.0``); skipped with a message when absent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from bench.harness import SIZES, arg_parser, emit, emit_skip, measure

_W = {}


def _create(n: int) -> int:
    import torch

    _W["w"] = torch.zeros(n, dtype=torch.float32)
    return n


def _step(grad):
    w = _W["w"]
    w.sub_(grad, alpha=0.001)
    return w


def _options(port: int):
    from torch.distributed import rpc

    return rpc.TensorPipeRpcBackendOptions(init_method=f"tcp://127.0.0.1:{port}", num_worker_threads=8,
                                           rpc_timeout=300)


def serve(port: int) -> None:
    from torch.distributed import rpc

    rpc.init_rpc("ps", rank=0, world_size=2, rpc_backend_options=_options(port))
    rpc.shutdown()  # waits for the worker to finish


def main() -> None:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--serve", type=int, default=0)
    args = p.parse_args()
    try:
        import torch
        from torch.distributed import rpc
    except ImportError:
        emit_skip("torch.distributed.rpc PS", "torch is not installed (pip install -e .[bench-torch])")
        return
    if args.serve:
        serve(args.serve)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TP_SOCKET_IFNAME="lo", GLOO_SOCKET_IFNAME="lo")
    proc = subprocess.Popen([sys.executable, "-m", "bench.peers.torch_rpc", "--serve", str(port)], env=env)
    try:
        os.environ.update(TP_SOCKET_IFNAME="lo", GLOO_SOCKET_IFNAME="lo")
        rpc.init_rpc("worker", rank=1, world_size=2, rpc_backend_options=_options(port))
        try:
            for size_name in args.sizes.split(","):
                n = SIZES[size_name] // 4
                rpc.rpc_sync("ps", _create, args=(n,))
                grad = torch.full((n,), 1e-3, dtype=torch.float32)

                def step():
                    rpc.rpc_sync("ps", _step, args=(grad,))

                emit(measure(f"torch {torch.__version__} rpc PS", size_name, step, args.seconds))
        finally:
            rpc.shutdown()
    finally:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
