"""Transport baseline: a bare gRPC service (generic handler, raw bytes) that echoes the request.

No protobuf, no work: the cost of moving ``size`` bytes each way through gRPC Python on
loopback, the physical limit the parameter server's gRPC path is measured against.
The server runs in its own process (``--serve``), like a ps-server.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures

import grpc

from bench.harness import SIZES, arg_parser, emit, measure

OPTIONS = [("grpc.max_receive_message_length", 512 << 20), ("grpc.max_send_message_length", 512 << 20)]


def serve(address: str) -> None:
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req, None, None)})
    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(address)
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


def main() -> None:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--serve", default=None, help=argparse_hide())
    p.add_argument("--uds", action="store_true", help="over a unix socket instead of loopback TCP")
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return
    import os
    import tempfile

    sock = os.path.join(tempfile.mkdtemp(prefix="echo-"), "echo.sock")
    bind = f"unix:{sock}" if args.uds else "127.0.0.1:0"
    proc = subprocess.Popen([sys.executable, "-m", "bench.peers.grpc_echo", "--serve", bind],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().split()[-1]
        target = bind if args.uds else f"127.0.0.1:{port}"
        with grpc.insecure_channel(target, options=OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            echo = channel.unary_unary("/bench.Echo/Echo")
            name = "grpc echo " + ("uds" if args.uds else "tcp")
            for size_name in args.sizes.split(","):
                message = b"\x01" * SIZES[size_name]

                def step():
                    echo(message, timeout=120)

                emit(measure(name, size_name, step, args.seconds))
    finally:
        proc.terminate()
        proc.wait(10)


def argparse_hide():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
