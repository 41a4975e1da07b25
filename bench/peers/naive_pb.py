"""Naive baseline: a gRPC parameter server with protobuf ``bytes`` fields and server-side SGD.

What a first version written with the generated classes does: the worker builds a
``PushRequest(payload=grad.tobytes())`` and serialises it, the server parses it with the
generated class, applies SGD and answers ``PullReply(payload=weights.tobytes())``; one
RPC per step (already fused). Same messages as the project, none of its wire tricks.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures

import grpc
import numpy as np

from bench.harness import SIZES, arg_parser, emit, measure
from ps._proto import ps_pb2

OPTIONS = [("grpc.max_receive_message_length", 512 << 20), ("grpc.max_send_message_length", 512 << 20)]


class _Server:
    def __init__(self) -> None:
        self.w = np.zeros(0, dtype=np.float32)

    def step(self, request: ps_pb2.PushRequest, context) -> ps_pb2.PullReply:
        grad = np.frombuffer(request.payload, dtype=np.float32)
        if grad.size != self.w.size:
            self.w = np.zeros(grad.size, dtype=np.float32)
        self.w -= 0.001 * grad
        return ps_pb2.PullReply(payload=self.w.tobytes())


def serve() -> None:
    s = _Server()
    handler = grpc.method_handlers_generic_handler("bench.Naive", {
        "Step": grpc.unary_unary_rpc_method_handler(
            s.step, ps_pb2.PushRequest.FromString, ps_pb2.PullReply.SerializeToString)})
    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


def main() -> None:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--serve", action="store_true")
    args = p.parse_args()
    if args.serve:
        serve()
        return
    proc = subprocess.Popen([sys.executable, "-m", "bench.peers.naive_pb", "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().split()[-1]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            call = channel.unary_unary("/bench.Naive/Step", ps_pb2.PushRequest.SerializeToString,
                                       ps_pb2.PullReply.FromString)
            for size_name in args.sizes.split(","):
                grad = np.full(SIZES[size_name] // 4, 1e-3, dtype=np.float32)

                def step():
                    reply = call(ps_pb2.PushRequest(payload=grad.tobytes()), timeout=120)
                    np.frombuffer(reply.payload, dtype=np.float32)

                emit(measure("grpc protobuf-bytes PS", size_name, step, args.seconds))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
