"""Retries never double-apply; leases; graceful stop; a shard restarted under running workers.

Real shards on loopback in this process; exact-sum oracles (plain SGD, lr 1, integer
gradients: every partial sum is exact in float32). Every wait is bounded.
"""

import logging
import threading

import grpc
import numpy as np
import pytest

from ps import Mode, ServerConfig, ShardServer

from ps.checkpoint import state as checkpoint
from ps._proto import ps_pb2
from tests.conftest import run_threads
from worker import Client
from worker.client.transport import ShardChannel


def test_lost_push_replies_are_retried_and_applied_once(shards):
    """Every 4th push reply is lost after the push was applied; the retry (same seq) is
    acknowledged as a duplicate and the sum is still exact."""
    workers, pushes = 3, 12
    with shards(2, mode="async", faults="drop_push_reply_every=4") as servers:
        addresses = [s.address for s in servers]
        with Client(addresses, local=False) as ps:
            ps.create("t", shape=(40, 8), lr=1.0, block_elems=32)

        def worker(rank):
            with Client(addresses, local=False) as ps:
                for k in range(pushes):
                    ps.push({"t": np.full((40, 8), rank + 1 + k % 3, np.float32)})
                return ps.stats

        stats = run_threads([lambda r=r: worker(r) for r in range(workers)])
        with Client(addresses, observer=True, local=False) as ps:
            final = ps.pull("t")["t"]
            counters = [s["counters"] for s in ps.status()]
    expected = -sum(r + 1 + k % 3 for r in range(workers) for k in range(pushes))
    np.testing.assert_array_equal(final, np.full((40, 8), expected, np.float32))
    assert sum(c.get("applied", 0) for c in counters) == workers * pushes * 2
    assert sum(c.get("duplicate", 0) for c in counters) >= workers * pushes * 2 // 4 - 1
    # a retry's reply may be lost too: the server saw at least every duplicate the clients did
    assert 1 <= sum(s["duplicate"] for s in stats) <= sum(c.get("duplicate", 0) for c in counters)


def test_lost_replies_in_sync_mode_apply_each_step_once(shards):
    with shards(1, mode="sync", faults="drop_push_reply_every=3") as servers:
        address = servers[0].address

        def worker(rank):
            with Client([address], worker_id=rank, local=False) as ps:
                ps.create("w", shape=(16,), lr=1.0)
                for _ in range(10):
                    ps.pull("w")
                    ps.push({"w": np.ones(16, np.float32)})

        run_threads([lambda r=r: worker(r) for r in range(2)])
        with Client([address], observer=True) as ps:
            status = ps.status()[0]
            np.testing.assert_array_equal(ps.pull("w")["w"], np.full(16, -status["version"], np.float32))
    assert status["version"] >= 10 and status["counters"]["duplicate"] >= 1


def test_silent_worker_leaves_by_lease_and_rejoins(shards, caplog):
    with shards(1, mode="sync", lease_s=0.4) as servers, caplog.at_level(logging.WARNING, logger="ps.shard"):
        address = servers[0].address
        with Client([address], worker_id=0, heartbeat_s=0) as quiet, Client([address], worker_id=1) as busy:
            quiet.create("w", shape=(4,), lr=1.0)
            for ps in (quiet, busy):
                ps.push({"w": np.ones(4, np.float32)})
            busy.pull("w")
            busy.push({"w": np.ones(4, np.float32)})
            busy.pull("w")                      # waits for `quiet` until its lease runs out
            assert busy.clock == 2
            assert any("worker 0 missed its lease" in r.getMessage() for r in caplog.records)
            quiet.push({"w": np.ones(4, np.float32)})   # "left the cluster": rejoins, then stale
            assert quiet.stats["rejoined"] >= 1 and quiet.stats["stale"] == 1 and quiet.clock == 2
            run_threads([lambda: (quiet.pull("w"), quiet.push({"w": np.ones(4, np.float32)})),
                         lambda: (busy.pull("w"), busy.push({"w": np.ones(4, np.float32)}))], 20)
            assert quiet.clock == busy.clock == 3
            np.testing.assert_array_equal(busy.pull("w")["w"], np.full(4, -3, np.float32))


def test_shutdown_call_stops_gracefully_with_a_final_checkpoint(tmp_path):
    server = ShardServer(ServerConfig(port=0, shard_index=0, num_shards=1, checkpoint_dir=str(tmp_path))).start()
    try:
        with Client([server.address], local=False) as ps:
            ps.create("w", shape=(10,), lr=1.0)
            for k in range(5):
                ps.push({"w": np.full(10, k + 1, np.float32)})
        channel = ShardChannel(server.address, 64 << 20)
        try:
            channel.shutdown(ps_pb2.ShutdownRequest(), timeout=5)
        finally:
            channel.close()
        assert server.wait(15), "the Shutdown call did not stop the server"
    finally:
        server.stop()
    assert server.final_checkpoint is not None and server.stop_error is None
    state = checkpoint.load(str(tmp_path), 0, 1)
    assert state.tag.startswith("final-") and state.version == 5
    (table,) = state.tables["dense"]
    np.testing.assert_array_equal(table.blocks[0].values, np.full(10, -15, np.float32))


def test_sync_shard_restart_from_its_checkpoint_under_running_workers(tmp_path):
    """Stop the only shard mid-training (final checkpoint), start it again with --restore
    on the same port: the workers rejoin on their own, the shard adopts their step, and
    every step applied is applied exactly once: w == -(steps applied before + after)."""
    cfg = ServerConfig(port=0, mode=Mode.SYNC, shard_index=0, num_shards=1, checkpoint_dir=str(tmp_path),
                       sync_timeout_s=20, lease_s=5, grace_s=0.2)
    first = ShardServer(cfg).start()
    address = first.address
    progress = [threading.Event() for _ in range(2)]

    def worker(rank):
        with Client([address], worker_id=rank) as ps:
            ps.create("w", shape=(12,), lr=1.0, block_elems=8)
            while ps.clock < 40:
                ps.pull("w")
                ps.push({"w": np.ones(12, np.float32)})
                if ps.clock >= 10:
                    progress[rank].set()
            return ps.stats

    threads = run_threads_async([lambda r=r: worker(r) for r in range(2)])
    for e in progress:
        assert e.wait(20)
    first.stop(grace_s=0.2)
    before = checkpoint.load(str(tmp_path), 0, 1).version
    second = ShardServer(ServerConfig(**{**cfg.__dict__, "port": first.port, "restore": True})).start()
    try:
        threads()
        with Client([address], observer=True) as ps:
            status = ps.status()[0]
            w = ps.pull("w")["w"]
        assert status["epoch"] == 1
        applied_after = status["counters"]["steps"]
        np.testing.assert_array_equal(w, np.full(12, -(before + applied_after), np.float32))
        assert status["version"] >= 40
    finally:
        second.stop(grace_s=0.2)


def run_threads_async(fns, timeout_s: float = 60.0):
    """Start ``fns`` in threads now; the returned callable joins them (bounded) like run_threads."""
    results: dict = {}
    done = threading.Event()

    def run():
        try:
            results["value"] = run_threads(fns, timeout_s)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the joiner
            results["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()

    def join():
        assert done.wait(timeout_s + 5), "workers still running (a hang)"
        if "error" in results:
            raise results["error"]
        return results["value"]

    return join


@pytest.mark.parametrize("method", ["Push", "Pull", "Heartbeat", "Checkpoint"])
def test_unregistered_calls_are_refused_cleanly(shards, method):
    """Calls naming a worker the shard does not know fail with FAILED_PRECONDITION or
    NOT_FOUND-like codes and leave no trace (no lease bookkeeping for unknown ids)."""
    with shards(1, mode="sync") as servers:
        channel = ShardChannel(servers[0].address, 64 << 20)
        try:
            if method == "Heartbeat":
                with pytest.raises(grpc.RpcError) as info:
                    channel.heartbeat(ps_pb2.HeartbeatRequest(worker_id=99), timeout=5)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            elif method == "Checkpoint":
                with pytest.raises(grpc.RpcError) as info:
                    channel.checkpoint(ps_pb2.CheckpointRequest(), timeout=5)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # no checkpoint dir
            elif method == "Pull":
                req = ps_pb2.PullRequest(header=ps_pb2.PullHeader(worker_id=99, step=3, tables=["w"]))
                with pytest.raises(grpc.RpcError) as info:
                    channel.pull(req, timeout=5)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            else:
                from ps.protocol.wire import encode_framed

                header = ps_pb2.PushHeader(worker_id=99, seq=1, step=0, part=0, num_parts=1)
                with pytest.raises(grpc.RpcError) as info:
                    channel.push(encode_framed(header.SerializeToString(), []), timeout=5)
                assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        finally:
            channel.close()
        assert servers[0].shard.membership.last_contact == {}


def test_shard_restarted_without_a_checkpoint_is_rejoined_and_its_tables_recreated(caplog):
    """Async: the client registers again by itself ("not registered"), re-creates the lost
    table at its initial values (with a warning) and its push applies once."""
    first = ShardServer(ServerConfig(port=0, lease_s=0)).start()
    port = first.port
    try:
        with Client([first.address], worker_id=4, local=False) as ps:
            ps.create("w", shape=(6,), lr=1.0)
            ps.push({"w": np.full(6, 5, np.float32)})
            first.stop(grace_s=0.1)
            second = ShardServer(ServerConfig(port=port, lease_s=0)).start()
            try:
                with caplog.at_level(logging.WARNING, logger="worker.client.recovery"):
                    ps.push({"w": np.full(6, 2, np.float32)})
                np.testing.assert_array_equal(ps.pull("w")["w"], np.full(6, -2, np.float32))
                assert ps.stats["rejoined"] == 1
                assert any("lost table 'w'" in r.getMessage() for r in caplog.records)
            finally:
                second.stop(grace_s=0.1)
    finally:
        first.stop(grace_s=0.1)
