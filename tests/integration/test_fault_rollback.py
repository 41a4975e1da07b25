"""Sync mode: a shard that comes back from an older checkpoint rolls the cluster back.

Two real shards on loopback in this process, two worker threads, plain SGD with lr 1 and
gradient 1 everywhere: after v applied steps every weight is exactly -v. Shard 1 "crashes"
(stopped without its final checkpoint) and comes back with ``restore``, from its own
checkpoint at step J; the other shard is at step M > J. The rule (docs/failure-semantics.md
section 3): with a cluster checkpoint at step K shared by both shards, the whole cluster
returns to step K and training goes on from there; without one, the restored shard
fast-forwards as before. Every wait is bounded.
"""

import threading

import numpy as np
import pytest

from ps import Mode, ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError
from ps.tables.placement import block_shard
from tests.conftest import run_threads
from worker import Client
from worker.client.transport import ShardChannel, call

K, J, M, N = 4, 7, 10, 16   # cluster checkpoint, shard 1's own checkpoint, crash, end
SHAPE, BLOCK = (64,), 8


class Pauses:
    """Workers stop before pulling at given clocks until the test lets them go on."""

    def __init__(self, workers: int, clocks) -> None:
        self.reached = {c: threading.Barrier(workers + 1) for c in clocks}
        self.go = {c: threading.Event() for c in clocks}

    def at(self, clock: int) -> None:
        if clock in self.reached and not self.go[clock].is_set():  # once: a rollback may return here
            self.reached[clock].wait(30)
            assert self.go[clock].wait(60), f"never released at clock {clock}"

    def wait_all(self, clock: int) -> None:
        self.reached[clock].wait(30)

    def release(self, clock: int) -> None:
        self.go[clock].set()


def start_cluster(tmp_path):
    configs = [ServerConfig(port=0, mode=Mode.SYNC, shard_index=i, num_shards=2, num_workers=2,
                            checkpoint_dir=str(tmp_path / f"shard{i}"), sync_timeout_s=20, lease_s=10, grace_s=0.2)
               for i in range(2)]
    return configs, [ShardServer(c).start() for c in configs]


def crash_and_restore(configs, servers, index: int) -> ShardServer:
    """Stop shard ``index`` as a crash would leave it (no final checkpoint), restart it with
    ``restore`` on the same port."""
    old = servers[index]
    old.checkpointer.final = lambda: None  # a crash writes nothing more
    old.stop(grace_s=0)
    servers[index] = ShardServer(ServerConfig(**{**configs[index].__dict__, "port": old.port, "restore": True}))
    return servers[index].start()


@pytest.mark.parametrize("shared", [True, False], ids=["cluster-checkpoint", "none-shared"])
def test_sync_shard_back_from_an_older_checkpoint_rolls_the_cluster_back(tmp_path, shared):
    configs, servers = start_cluster(tmp_path)
    addresses = [s.address for s in servers]
    pauses = Pauses(2, [K, J, M])
    first_after: dict[int, tuple[int, np.ndarray]] = {}

    def worker(rank):
        with Client(addresses, worker_id=rank) as ps:
            ps.create("w", shape=SHAPE, lr=1.0, block_elems=BLOCK)
            resumed = False
            while ps.clock < N:
                pauses.at(ps.clock)
                w = ps.pull("w")["w"]
                if pauses.go[M].is_set() and not resumed:
                    resumed = True
                    first_after[rank] = (ps.clock, w.copy())
                ps.push({"w": np.ones(SHAPE, np.float32)})
            return dict(ps.stats)

    done = {}

    def run_workers():
        try:
            done["r"] = run_threads([lambda r=r: worker(r) for r in range(2)], 90)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            done["error"] = exc

    runner = threading.Thread(target=run_workers, daemon=True)
    runner.start()
    try:
        pauses.wait_all(K)
        if shared:
            with Client(addresses, observer=True) as ps:
                taken = ps.checkpoint("at-k")
            assert taken["version"] == K and taken["versions"] == [K, K]
        pauses.release(K)
        pauses.wait_all(J)
        servers[1].checkpointer.checkpoint()  # shard 1's own (per-shard) checkpoint at J
        pauses.release(J)
        pauses.wait_all(M)
        restored = crash_and_restore(configs, servers, 1)
        with Client(addresses, observer=True) as ps:
            status = ps.status()
        assert [s["version"] for s in status] == [M, J] and status[1]["epoch"] == 1
        pauses.release(M)
        runner.join(120)
        assert not runner.is_alive(), "workers still running (a hang)"
        if "error" in done:
            raise done["error"]
        with Client(addresses, observer=True) as ps:
            final = ps.pull("w")["w"]
            status = ps.status()
    finally:
        for s in servers:
            s.stop(grace_s=0.2)

    on_shard1 = np.array([block_shard("w", b, 2) == 1 for b in range(SHAPE[0] // BLOCK)]).repeat(BLOCK)
    assert on_shard1.any() and not on_shard1.all()
    assert [s["version"] for s in status] == [N, N]
    if shared:
        # both shards went back to step K: the first pull after the crash saw -K everywhere
        for rank in range(2):
            clock, w = first_after[rank]
            assert clock == K
            np.testing.assert_array_equal(w, np.full(SHAPE, -K, np.float32))
        np.testing.assert_array_equal(final, np.full(SHAPE, -N, np.float32))  # K + (N - K) steps
        assert [s["epoch"] for s in status] == [1, 2]
        assert [s["counters"].get("rollbacks", 0) for s in status] == [1, 1]
        assert all(stats["rolled_back"] == 1 for stats in done["r"])
        assert restored.shard.recovery.restored_from == ("at-k", K)
    else:
        # no checkpoint shared by both: shard 1 adopts the workers' step (fast-forward)
        expected = np.where(on_shard1, -(J + N - M), -N).astype(np.float32)
        np.testing.assert_array_equal(final, expected)
        assert [s["epoch"] for s in status] == [0, 1]
        assert not any(s["counters"].get("rollbacks", 0) for s in status)


def test_restore_call_rolls_one_shard_back_once(tmp_path):
    """The Restore call loads a checkpoint once per rollback id: the epoch bumps once and a
    repeat changes nothing; a tag the shard lacks is FAILED_PRECONDITION; a worker that
    was mid-training resyncs to the restored step by itself."""
    cfg = ServerConfig(port=0, mode=Mode.SYNC, shard_index=0, num_shards=1, checkpoint_dir=str(tmp_path),
                       sync_timeout_s=10, lease_s=0, grace_s=0.2)
    with ShardServer(cfg) as server:
        with Client([server.address], worker_id=0) as ps:
            ps.create("w", shape=SHAPE, lr=1.0, block_elems=BLOCK)
            ps.pull("w")
            ps.push({"w": np.ones(SHAPE, np.float32)})
            ps.checkpoint("one")
            for _ in range(2):
                ps.pull("w")
                ps.push({"w": np.ones(SHAPE, np.float32)})
            channel = ShardChannel(server.address, 64 << 20)
            try:
                request = ps_pb2.RestoreRequest(rollback_id="test:1", tag="one", version=1)
                first = call(channel, channel.restore, request, 10)
                again = call(channel, channel.restore, request, 10)
                with pytest.raises(FailedPreconditionError):
                    call(channel, channel.restore, ps_pb2.RestoreRequest(rollback_id="test:2", tag="none", version=1), 10)
            finally:
                channel.close()
            assert (first.restored, first.version, first.epoch) == (True, 1, 1)
            assert (again.restored, again.version, again.epoch) == (False, 1, 1)
            # the worker was mid-training: its next pull is aborted, it resyncs to step 1
            w = ps.pull("w")["w"]
            assert ps.clock == 1 and ps.stats["rolled_back"] == 1
            np.testing.assert_array_equal(w, np.full(SHAPE, -1, np.float32))
            ps.push({"w": np.ones(SHAPE, np.float32)})
            np.testing.assert_array_equal(ps.pull("w")["w"], np.full(SHAPE, -2, np.float32))
