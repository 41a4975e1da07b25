"""Peer: MXNet's distributed KVStore, the parameter server built on ps-lite (C++, ZeroMQ).

One scheduler, one server and one worker process, as MXNet's ``dist_async`` KVStore runs
them (``DMLC_ROLE``), on loopback. The server applies SGD (``kv.set_optimizer``); a step
is ``kv.push(key, grad)`` then ``kv.pull(key, out=weights)`` and waiting for the weights,
MXNet's own data-parallel pattern. ps-lite itself cannot be built here; this is the same
ps-lite, as shipped inside the ``mxnet`` wheel, with MXNet's engine on top, so it is a
lower bound on bare ps-lite.

``mxnet`` 1.9.1 needs ``numpy<1.24``, so it lives in its own interpreter::

    python -m venv .venv-mxnet && .venv-mxnet/bin/pip install mxnet==1.9.1 numpy==1.23.5
    MXNET_PYTHON=.venv-mxnet/bin/python python -m bench.run

:mod:`bench.run` starts this module with that interpreter inside a loopback-only network
namespace (``unshare --net``): ps-lite binds the address of a network interface. Skipped
with a message when mxnet cannot be imported.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from bench.harness import SIZES, arg_parser, emit, emit_skip, log, loopback_only, measure

SYSTEM = "MXNet KVStore PS (ps-lite, ZeroMQ)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure_all(args) -> None:
    import mxnet as mx

    kv = mx.kv.create("dist_async")
    kv.set_optimizer(mx.optimizer.SGD(learning_rate=0.001, rescale_grad=1.0))
    system = f"MXNet {mx.__version__} KVStore PS (ps-lite, ZeroMQ)"
    for key, size_name in enumerate(args.sizes.split(",")):
        n = SIZES[size_name] // 4
        weights = mx.nd.zeros((n,))
        kv.init(key, weights)
        grad = mx.nd.full((n,), 1e-3)

        def step(key=key, weights=weights, grad=grad):
            kv.push(key, grad)
            kv.pull(key, out=weights)
            weights.wait_to_read()

        emit(measure(system, size_name, step, args.seconds, note="dist_async, server-side SGD"))


def main() -> None:
    args = arg_parser(__doc__.splitlines()[0]).parse_args()
    if not loopback_only():
        emit_skip(SYSTEM, "refusing to start ps-lite outside a loopback-only network namespace "
                          "(bench.run starts it under `unshare --net`)")
        return
    env = dict(os.environ, DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(_free_port()),
               DMLC_NUM_SERVER="1", DMLC_NUM_WORKER="1", DMLC_NODE_HOST="127.0.0.1", DMLC_INTERFACE="lo")
    probe = subprocess.run([sys.executable, "-c", "import mxnet"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        emit_skip(SYSTEM, "mxnet is not importable here: run bench.run with MXNET_PYTHON set to an interpreter "
                          "that has mxnet==1.9.1 and numpy==1.23.5 (see bench/peers/mxnet_ps.py)")
        return
    # the scheduler and the server run in MXNet's own loop as soon as mxnet is imported
    others = [subprocess.Popen([sys.executable, "-c", "import mxnet"], env=dict(env, DMLC_ROLE=role),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for role in ("scheduler", "server")]
    os.environ.update(env, DMLC_ROLE="worker")  # read when the KVStore starts
    try:
        _measure_all(args)  # returns with the KVStore freed: the worker has left ps-lite
    finally:
        for p in others:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                log("mxnet: killing a ps-lite process that did not stop")
                p.kill()
                p.wait(5)


if __name__ == "__main__":
    main()
