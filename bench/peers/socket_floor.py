"""Floor baseline: a bare Python TCP loop with the server's SGD, and no parameter server.

The least a step can cost in Python and NumPy on loopback: the worker sends the gradient
(``sendmsg`` from its array), the server reads it into a reused array (``recv_into``),
applies ``w -= lr * g`` with two NumPy calls and sends the weights back from the array,
which the worker reads into its own. No header, no framing, no validation, no sequence
numbers, no locks, no threads beyond the two processes: what remains of a step once every
feature of a parameter server is taken out. The project's step against this row is the
cost of its features in the interpreter; bare ps-lite's against it, what C++ spends.

The server runs in its own process (``--serve``), like a ps-server. Every read and write
has a 120 s kernel bound; the server exits on the worker's last, empty connection, or when
no connection comes for 120 s.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

import numpy as np

from bench.harness import SIZES, arg_parser, emit, measure
from bench.servers import readline

LR = np.float32(0.001)
#: every send and receive gives up after this long (seconds)
IO_BOUND_S = 120


def _tune(sock: socket.socket) -> None:
    """No Nagle delay; blocking, bounded in the kernel (a Python timeout would poll before every call)."""
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bound = struct.pack("ll", IO_BOUND_S, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)


def _read_exactly(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view``; False when the peer closed before the first byte. Blocks (bounded)."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            if got == 0:
                return False
            raise ConnectionError("peer closed mid-message")
        got += n
    return True


def serve() -> None:
    """Answer one worker: per connection, one size (its first 8 bytes), then steps until it closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(IO_BOUND_S)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return  # the worker went away without its empty goodbye connection
        with conn:
            _tune(conn)
            size = bytearray(8)
            if not _read_exactly(conn, memoryview(size)):
                return  # the worker is done
            n = int.from_bytes(size, "little") // 4
            grad, weights, scratch = np.empty(n, np.float32), np.zeros(n, np.float32), np.empty(n, np.float32)
            gview, wview = memoryview(grad).cast("B"), memoryview(weights).cast("B")
            while _read_exactly(conn, gview):
                np.multiply(grad, LR, out=scratch)
                weights -= scratch
                conn.sendall(wview)


def main() -> None:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--serve", action="store_true", help="(internal) run the server")
    args = p.parse_args()
    if args.serve:
        serve()
        return
    proc = subprocess.Popen([sys.executable, "-m", "bench.peers.socket_floor", "--serve"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(readline(proc, 30.0).split()[-1])
        for size_name in args.sizes.split(","):
            nbytes = SIZES[size_name]
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                _tune(sock)
                sock.sendall(nbytes.to_bytes(8, "little"))
                grad = np.full(nbytes // 4, 1e-3, np.float32)
                out = np.empty_like(grad)
                gview, oview = memoryview(grad).cast("B"), memoryview(out).cast("B")

                def step():
                    sock.sendall(gview)
                    if not _read_exactly(sock, oview):
                        raise ConnectionError("the floor server closed")

                emit(measure("python socket floor", size_name, step, args.seconds))
                expected = -np.float32(1e-3) * LR  # the first step's weight, as the server computes it
                if not out[0] <= expected:
                    raise AssertionError(f"weights {out[0]} after the steps, expected at most {expected}")
        with socket.create_connection(("127.0.0.1", port), timeout=30):
            pass  # an empty connection: the server stops
    finally:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


if __name__ == "__main__":
    main()
