"""Worker failures with real processes and signals: SIGKILL in async and sync mode, and a
SIGSTOPped straggler under sync with backup workers. Every wait is bounded."""

import json
import signal
import time

import numpy as np
import pytest

from worker import Client

pytestmark = pytest.mark.slow


def wait_log(proc, text: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in proc.log():
        assert time.monotonic() < deadline, f"{text!r} not in the server log within {timeout_s} s"
        time.sleep(0.1)


def steps_after(proc, at_least: int, timeout_s: float) -> int:
    """Wait for a ``step N`` line with N >= at_least; returns N."""
    while True:
        n = int(proc.wait_for(r"^step (\d+)", timeout_s).group(1))
        if n >= at_least:
            return n


def worker_flags(address, rank, oracle, target, *extra):
    return ("--servers", address, "--id", str(rank), "--oracle", oracle, "--target", str(target), *extra)


def test_async_worker_killed_mid_training_others_finish_and_it_rejoins(cluster):
    server, address = cluster.server("--mode", "async", "--lease", "1.0")
    target = 40
    workers = [cluster.worker(*worker_flags(address, r, "rows", target)) for r in range(3)]
    steps_after(workers[1], 10, 30)
    workers[1].signal(signal.SIGKILL)
    assert workers[1].wait() == -signal.SIGKILL
    wait_log(server, "worker 1 missed its lease")          # it leaves the quorum, named
    restarted = cluster.worker(*worker_flags(address, 1, "rows", target))
    resumed_at = int(restarted.wait_for(r"^joined (\d+)", 30).group(1))
    assert resumed_at >= 10                                  # it resumes where its row got to
    for w in (workers[0], workers[2], restarted):
        w.wait_for(r"^done", 30)
        assert w.wait() == 0
    with Client([address], observer=True) as ps:
        final = ps.pull("w")["w"]
    # exactly `target` pushes per row: none lost, none applied twice, across the kill
    np.testing.assert_array_equal(final, np.full((3, 64), -target, np.float32))


def test_sync_worker_killed_others_never_stall_past_the_lease_and_it_rejoins(cluster):
    lease = 1.0
    server, address = cluster.server("--mode", "sync", "--lease", str(lease), "--sync-timeout", "20")
    target = 60
    workers = [cluster.worker(*worker_flags(address, r, "steps", target)) for r in range(3)]
    steps_after(workers[1], 8, 30)
    workers[1].signal(signal.SIGKILL)
    killed_at = time.monotonic()
    n = steps_after(workers[0], 0, 30)
    # the survivors wait for the dead worker at most about one lease, then go on
    steps_after(workers[0], n + 3, lease + 4.0)
    assert time.monotonic() - killed_at < lease + 4.0
    wait_log(server, "worker 1 missed its lease")
    restarted = cluster.worker(*worker_flags(address, 1, "steps", target))
    restarted.wait_for(r"^joined \d+", 30)
    for w in (workers[0], workers[2], restarted):
        w.wait_for(r"^done", 40)
        assert w.wait() == 0
    with Client([address], observer=True) as ps:
        version = ps.status()[0]["version"]
        final = ps.pull("w")["w"]
    # every applied step subtracted exactly the mean of ones: applied once each
    np.testing.assert_array_equal(final, np.full(64, -version, np.float32))


def test_sync_straggler_stopped_steps_advance_and_its_stale_gradient_is_dropped(cluster):
    server, address = cluster.server("--mode", "sync", "--num-workers", "4", "--replicas-to-aggregate", "3",
                                     "--lease", "60", "--sync-timeout", "20")
    target = 70
    workers = [cluster.worker(*worker_flags(address, r, "steps", target, "--sleep", "0.03")) for r in range(4)]
    straggler = workers[3]
    last = steps_after(straggler, 5, 30)
    straggler.signal(signal.SIGSTOP)
    with Client([address], observer=True) as ps:
        stopped_version = ps.status()[0]["version"]
        steps_after(workers[0], stopped_version + 12, 20)   # three of four carry the steps on
        assert ps.status()[0]["version"] >= stopped_version + 10
        straggler.signal(signal.SIGCONT)
        # its clock jumped to the cluster's: the step line that reaches stopped_version + 10
        # follows one from before the stop, not a run of single steps. (Lines it printed
        # before the stop may still be unread here: the reader can lag behind a busy machine.)
        before, resumed = last, steps_after(straggler, last + 1, 20)
        while resumed < stopped_version + 10:
            before, resumed = resumed, steps_after(straggler, resumed + 1, 20)
        assert before <= stopped_version + 1, f"its clock went {before} -> {resumed}, one step at a time"
        for w in workers:
            w.wait_for(r"^done", 40)
            assert w.wait() == 0
        status = ps.status()[0]
        final = ps.pull("w")["w"]
    stats = json.loads(straggler.lines[-1].split(" ", 1)[1])
    assert stats["stale"] >= 1                               # its old step's gradient was dropped...
    assert status["counters"]["stale"] >= stats["stale"]     # ...and counted by the server
    np.testing.assert_array_equal(final, np.full(64, -status["version"], np.float32))
