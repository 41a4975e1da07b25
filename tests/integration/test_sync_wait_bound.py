"""A sync wait on other workers ends within its bound overall, retries and shards included.

The bound is ``Client(wait_timeout_s=)`` or the shard's ``--sync-timeout``, whichever is
shorter, plus :data:`MARGIN_S`; the error names the worker waited for. The other worker is
registered and heartbeating (so it stays in the quorum) but never pushes: nothing but the
bound can end the wait. Before the bound was overall, the client retried the shard's
DEADLINE_EXCEEDED up to 10 times, shard after shard (56-82 s for a 5 s bound).
"""

import time

import numpy as np
import pytest

from ps.errors import DeadlineExceededError, Reason
from worker import Client

#: how late past its bound a wait may end (s): the reply's trip and the test's own work
MARGIN_S = 1.0

CASES = {
    "client-bound": {"wait_timeout_s": 2.0, "sync_timeout_s": 30.0, "bound_s": 2.0},
    "shard-bound": {"wait_timeout_s": 30.0, "sync_timeout_s": 2.0, "bound_s": 2.0},
}


def _timed(fn):
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        fn()
    return time.monotonic() - started, info.value


@pytest.mark.parametrize("num_shards", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_a_sync_wait_ends_within_its_bound_and_names_the_worker(shards, num_shards, case):
    c = CASES[case]
    with shards(num_shards, mode="sync", num_workers=2, sync_timeout_s=c["sync_timeout_s"]) as servers:
        addresses = [s.address for s in servers]
        with Client(addresses, worker_id=1, wait_timeout_s=60.0, heartbeat_s=0.2) as hung, \
                Client(addresses, worker_id=0, wait_timeout_s=c["wait_timeout_s"], heartbeat_s=0.2) as ps:
            ps.create("w", shape=(4096,), block_elems=256, lr=1.0)   # blocks on every shard
            hung.pull("w")                                           # joined, heartbeating, never pushes
            ps.push({"w": np.ones(4096, np.float32)})               # step 0 waits for worker 1
            took, error = _timed(lambda: ps.pull("w"))                      # a pull of step 1
            took_push, error_push = _timed(lambda: ps.push({"w": np.ones(4096, np.float32)}))  # a push of step 1
            waited = [s.shard.steps.counters["wait_timeouts"] for s in servers]
        assert all(n >= 1 for n in waited), waited                     # every shard's wait ran out
        print(f"{num_shards} shard(s), {case}: pull failed after {took:.2f} s, push after {took_push:.2f} s "
              f"(bound {c['bound_s']} s)")
        for t, e in ((took, error), (took_push, error_push)):
            assert c["bound_s"] - 0.2 <= t <= c["bound_s"] + MARGIN_S, (t, e)
            assert "worker 1" in str(e) and e.reason is Reason.WAIT_EXPIRED, e


PLANES = {"shared-memory": {"local": True}, "tcp": {"local": False}, "grpc": {"local": False, "stream": False}}


@pytest.mark.parametrize("plane", list(PLANES))
def test_a_wait_that_ran_out_is_not_sent_again_over_the_fallback(shards, plane):
    """On every data plane the shard's expired wait ends the pull at once (a fast plane's
    transient failure is otherwise sent again over gRPC, which would wait it out again)."""
    with shards(2, mode="sync", num_workers=2, sync_timeout_s=1.5) as servers:
        addresses = [s.address for s in servers]
        with Client(addresses, worker_id=1, heartbeat_s=0.2) as hung, \
                Client(addresses, worker_id=0, heartbeat_s=0.2, **PLANES[plane]) as ps:
            ps.create("w", shape=(4096,), block_elems=256, lr=1.0)
            hung.pull("w")
            ps.push({"w": np.ones(4096, np.float32)})
            took, error = _timed(lambda: ps.pull("w"))
            assert ps.data_planes() == [plane.replace("-", " ")] * 2     # it stayed on its plane
    assert 1.3 <= took <= 1.5 + MARGIN_S and "worker 1" in str(error), (took, error)
