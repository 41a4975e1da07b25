"""Ctrl-C on a ``ps-worker`` blocked in a wait (issue 12, item 12): real processes, real SIGINT.

The worker waits in a sync step for a worker that never comes. The first SIGINT must say
what it interrupts, take the worker out of the cluster and exit 130 within a few seconds;
a second SIGINT exits at once, even while leaving hangs on a stopped server. Every wait is
bounded.
"""

from __future__ import annotations

import signal

import pytest

from worker import Client

pytestmark = pytest.mark.slow

#: the most a first Ctrl-C may take to end a blocked worker (launcher.worker_interrupt: 6 s
#: when nothing answers), plus room for a loaded machine
EXIT_WITHIN_S = 15.0


def blocked_worker(cluster):
    """A sync server expecting 2 workers, and worker 0 blocked in its first step's wait."""
    server, address = cluster.server("--mode", "sync", "--num-workers", "2")
    worker = cluster.ps_worker("--servers", address, "--rank", "0", "--num-workers", "2", "--epochs", "1",
                               "--warn-after", "1")
    worker.wait_for_log(r"pull for step \d+ has waited", 30)
    return server, address, worker


def test_first_ctrl_c_says_what_it_interrupts_leaves_the_cluster_and_exits_130(cluster):
    _, address, worker = blocked_worker(cluster)
    worker.signal(signal.SIGINT)
    assert worker.wait(EXIT_WITHIN_S) == 130
    log = worker.log()
    assert "ps-worker: SIGINT during pull for step 1 (waiting " in log, log
    assert "leaving the cluster and exiting with status 130; a second Ctrl-C exits at once" in log
    assert "ps-worker: worker 0 stopped by signal; left the cluster" in log
    assert "exiting at once" not in log.split("a second Ctrl-C exits at once", 1)[1]
    with Client(address, observer=True, local=False) as observer:
        (worker0,) = observer.status()[0]["workers"]
    assert worker0["id"] == 0 and not worker0["live"]       # it left; the shard does not wait for it


def test_a_second_ctrl_c_exits_at_once_while_leaving_hangs(cluster):
    server, _, worker = blocked_worker(cluster)
    server.signal(signal.SIGSTOP)                           # Leave now waits for its deadline
    worker.signal(signal.SIGINT)
    worker.wait_for_log(r"SIGINT during .*: leaving the cluster", 10)
    worker.signal(signal.SIGINT)
    assert worker.wait(EXIT_WITHIN_S) == 130
    log = worker.log()
    assert "ps-worker: second signal (SIGINT): exiting at once" in log, log
    assert "did not stop by itself" not in log              # not the first signal's own bounded exit
    server.signal(signal.SIGCONT)
