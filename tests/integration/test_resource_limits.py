"""Requests that would make a shard grow without bound are refused with RESOURCE_EXHAUSTED.

- Registering with id -1 (a fresh id each time) stops at ``max_workers`` known ids, until
  the leases of those ids expire: then their places are reclaimed (issue 12 #6).
- A PullRows whose reply (num_ids x dim x itemsize) would pass ``max_message_bytes`` is
  refused before any row is allocated.
- A create past the shard's memory budget (``max_memory_bytes``) is refused at once, before
  anything is allocated, and not retried; sparse rows past it evict or are refused (issue 12 #3).
"""

import time

import grpc
import numpy as np
import pytest

from ps._proto import ps_pb2
from ps.errors import ResourceExhaustedError
from ps.protocol.rows_wire import encode_rows
from worker import Client
from worker.client.transport import ShardChannel


def register(channel, worker_id):
    request = ps_pb2.RegisterRequest(worker_id=worker_id)
    request.topology.shard_index, request.topology.num_shards = 0, 1
    return channel.register(request, timeout=5)


def test_registering_fresh_ids_stops_at_max_workers(shards):
    with shards(1, mode="async", max_workers=3) as servers:
        channel = ShardChannel(servers[0].address, 64 << 20)
        try:
            ids = [register(channel, -1).worker_id for _ in range(3)]
            assert sorted(ids) == [0, 1, 2]
            for worker_id in (-1, 99):
                with pytest.raises(grpc.RpcError) as info:
                    register(channel, worker_id)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max-workers" in info.value.details()
            assert register(channel, 1).worker_id == 1  # a known worker may always rejoin
            status = channel.status(ps_pb2.StatusRequest(), timeout=5)
            assert len(status.workers) == 3
        finally:
            channel.close()


def test_pull_rows_reply_over_the_message_limit_is_refused_before_allocating(shards):
    dim = 1024  # 4 KiB per float32 row: 300 ids ask for 1.2 MiB, over the 1 MiB limit
    with shards(1, mode="async", max_message_bytes=1 << 20) as servers:
        address = servers[0].address
        with Client([address], max_message_bytes=1 << 20, part_bytes=256 << 10, worker_id=0) as ps:
            ps.create_sparse("emb", dim)
            channel = ShardChannel(address, 64 << 20)
            try:
                for num_ids, ok in ((200, True), (300, False), (1 << 16, False)):
                    ids = np.arange(num_ids, dtype=np.int64)
                    header = ps_pb2.RowsHeader(worker_id=0, step=0, table="emb", num_ids=num_ids)
                    request = encode_rows(header, ids, None)
                    if ok:
                        reply_header, _ = channel.pull_rows(request, timeout=10)
                        assert reply_header.num_ids == num_ids
                        continue
                    with pytest.raises(grpc.RpcError) as info:
                        channel.pull_rows(request, timeout=10)
                    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "max-message-bytes" in info.value.details()
            finally:
                channel.close()
            # the client splits big pulls into calls under the limit: still served
            rows = ps.pull_rows("emb", np.arange(3000))
            assert rows.shape == (3000, dim) and not rows.any()


def test_a_flood_of_anonymous_ids_is_reclaimed_once_their_leases_expire(shards):
    # issue 12 #6: anonymous registrations that fill max-workers and go silent must not keep
    # new workers out until a restart; the ranks below num-workers are never handed out twice
    with shards(1, mode="async", num_workers=2, max_workers=16, lease_s=0.5) as servers:
        channel = ShardChannel(servers[0].address, 64 << 20)
        try:
            flood = []
            for _ in range(17):  # bounded: the 17th finds the table full
                try:
                    flood.append(register(channel, -1).worker_id)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    break
            assert sorted(flood) == list(range(16))
            deadline = time.monotonic() + 10
            while any(w.live for w in channel.status(ps_pb2.StatusRequest(), timeout=5).workers):
                assert time.monotonic() < deadline, "the flood's leases never expired"
                time.sleep(0.05)
            fresh = register(channel, -1).worker_id
            assert fresh >= 2, "a rank used in this run was handed to a new worker"
            with Client([servers[0].address], worker_id=None, local=False, stream=False, timeout_s=5) as ps:
                ps.create("w", shape=(4,), init="zeros", optimizer="sgd", lr=1.0)
                ps.push({"w": np.ones(4, dtype=np.float32)})
            status = channel.status(ps_pb2.StatusRequest(), timeout=5)
            assert status.counters["ids_reclaimed"] >= 1
            assert len(status.workers) <= 16
        finally:
            channel.close()


def test_a_create_beyond_the_memory_budget_is_refused_at_once_and_not_retried(shards):
    # issue 12 #3: a (10**12,) table was accepted and allocated until the server ran out of memory
    with shards(2, mode="async", max_memory_bytes=64 << 20) as servers:
        addresses = [s.address for s in servers]
        with Client(addresses, worker_id=0, local=False, stream=False, timeout_s=10) as ps:
            ps.create("w", shape=(1000,), init="zeros", optimizer="adam", lr=1.0)
            before = [s.shard.snapshot()["tables"] for s in servers]
            start = time.monotonic()
            with pytest.raises(ResourceExhaustedError, match="max-memory"):
                ps.create("huge", shape=(10 ** 12,), optimizer="adam")
            assert time.monotonic() - start < 1.0
            assert [s.shard.snapshot()["tables"] for s in servers] == before  # nothing allocated
            refusals = []
            for server in servers:
                channel = ShardChannel(server.address, 64 << 20)
                try:
                    refusals.append(channel.status(ps_pb2.StatusRequest(), timeout=5).counters["memory_refused"])
                finally:
                    channel.close()
            assert refusals == [1, 0]  # shard 0 (asked first) refused once: RESOURCE_EXHAUSTED is not retried
            ps.push({"w": np.ones(1000, dtype=np.float32)})  # still serving
            assert ps.pull(["w"])["w"].shape == (1000,)


def test_sparse_rows_past_the_memory_budget_are_refused_or_evicted_over_grpc(shards):
    grads = np.ones((1024, 64), np.float32)
    with shards(1, mode="async", max_memory_bytes=2 << 20) as servers:  # no max_rows: refused
        with Client([servers[0].address], worker_id=0, local=False, stream=False, timeout_s=10) as ps:
            ps.create_sparse("emb", 64, lr=1.0)
            refused_at = None
            for batch in range(16):  # bounded: 16 x 256 KiB of rows is twice the budget
                try:
                    ps.push_rows("emb", np.arange(batch * 1024, (batch + 1) * 1024), grads)
                except ResourceExhaustedError as exc:
                    assert "max-memory" in str(exc)
                    refused_at = batch
                    break
            assert refused_at is not None, "the sparse table grew past the budget"
            np.testing.assert_array_equal(ps.pull_rows("emb", np.arange(4)), -1.0)  # stored rows kept
            ps.push_rows("emb", np.arange(4), grads[:4])  # still serving: stored rows update
            np.testing.assert_array_equal(ps.pull_rows("emb", np.arange(4)), -2.0)
            assert servers[0].shard.budget.used() <= 2 << 20
    with shards(1, mode="async", max_memory_bytes=2 << 20) as servers:  # max_rows: evicts
        with Client([servers[0].address], worker_id=0, local=False, stream=False, timeout_s=10) as ps:
            ps.create_sparse("emb", 64, lr=1.0, max_rows=1 << 20)
            for batch in range(16):
                ps.push_rows("emb", np.arange(batch * 1024, (batch + 1) * 1024), grads)
            np.testing.assert_array_equal(ps.pull_rows("emb", np.arange(15 * 1024, 15 * 1024 + 4)), -1.0)
            assert servers[0].shard.budget.used() <= 2 << 20
            assert servers[0].shard.rows.tables["emb"].counters["evicted"] > 0
