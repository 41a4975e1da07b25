"""SSP: a fast worker blocks at the staleness bound and resumes when the slow one moves."""

import threading

import numpy as np

from tests.conftest import run_threads
from worker import Client


def test_fast_worker_blocks_at_the_bound_and_never_reads_older_than_allowed(shards):
    staleness = 1
    with shards(2, mode="ssp", staleness=staleness, num_workers=2) as servers:
        addresses = [s.address for s in servers]
        slow_may_push = threading.Event()
        fast_blocked = threading.Event()
        observed = []   # (fast clock at pull, slow pushes applied in the value read)

        def fast():
            with Client(addresses, worker_id=0, wait_timeout_s=30) as ps:
                ps.create("w", shape=(2, 50), lr=1.0, block_elems=40)
                for step in range(6):
                    if step == 2:
                        fast_blocked.set()           # this pull needs the slow worker at >= 1
                    w = ps.pull("w")["w"]
                    # row 1 counts the slow worker's pushes (each adds -1 with lr 1)
                    observed.append((ps.clock, int(round(-w[1, 0]))))
                    g = np.zeros((2, 50), dtype=np.float32)
                    g[0] = 1
                    ps.push({"w": g})

        def slow():
            with Client(addresses, worker_id=1, wait_timeout_s=30) as ps:
                ps.create("w", shape=(2, 50), lr=1.0, block_elems=40)
                assert fast_blocked.wait(20)
                assert slow_may_push.wait(20)
                for step in range(6):
                    ps.pull("w")
                    g = np.zeros((2, 50), dtype=np.float32)
                    g[1] = 1
                    ps.push({"w": g})

        def controller():
            assert fast_blocked.wait(20)
            # the fast worker is now at clock 2 with the slow one at 0: it must be blocked
            for _ in range(20):
                if len(observed) > 2:
                    break
                threading.Event().wait(0.05)
            assert len(observed) == 2, "fast worker ran past the staleness bound"
            slow_may_push.set()

        run_threads([fast, slow, controller], timeout_s=60)

    for clock, slow_pushes in observed:
        # a read at clock c must include at least c - s of the slow worker's clocks
        assert slow_pushes >= clock - staleness, observed
