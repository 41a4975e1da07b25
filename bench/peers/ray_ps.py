"""Peer: a Ray actor parameter server, one actor process (Ray's parameter-server pattern).

The actor holds the weights and applies SGD in ``apply_gradients``; the worker calls
``ray.get(ps.apply_gradients.remote(grad))`` and gets the weights back through Ray's
shared-memory object store (zero-copy, read-only), one call per step. Needs the optional
``bench-ray`` extra (``pip install ray``); skipped with a message when absent.

Ray probes cloud-metadata addresses and binds the host's address even when told to use
loopback, so :mod:`bench.run` starts this module only inside a loopback-only network
namespace (``unshare --net``), and this module refuses to start Ray anywhere else.
"""

from __future__ import annotations

import os

from bench.harness import SIZES, arg_parser, emit, emit_skip, log, loopback_only, measure


def main() -> None:
    p = arg_parser(__doc__.splitlines()[0])
    args = p.parse_args()
    try:
        import numpy as np
        import ray
    except ImportError:
        emit_skip("Ray actor PS", "ray is not installed (pip install -e .[bench-ray])")
        return
    if not loopback_only():
        emit_skip("Ray actor PS", "refusing to start Ray outside a loopback-only network namespace "
                                  "(bench.run starts it under `unshare --net`)")
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             object_store_memory=2 << 30, configure_logging=False)

    @ray.remote
    class ParameterServer:
        def __init__(self, n: int) -> None:
            self.w = np.zeros(n, dtype=np.float32)

        def apply_gradients(self, grad):
            self.w -= 0.001 * grad
            return self.w

    try:
        for size_name in args.sizes.split(","):
            n = SIZES[size_name] // 4
            ps = ParameterServer.remote(n)
            grad = np.full(n, 1e-3, dtype=np.float32)

            def step():
                ray.get(ps.apply_gradients.remote(grad))

            emit(measure(f"Ray {ray.__version__} actor PS", size_name, step, args.seconds))
            ray.kill(ps)
    finally:
        log("ray: shutting down")
        ray.shutdown()


if __name__ == "__main__":
    main()
