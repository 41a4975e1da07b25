"""The Client's parts on their own: the table directory, the pull cache, membership."""

from __future__ import annotations

import numpy as np
import pytest

from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError, NotFoundError
from ps.tables.optim import OptimizerSpec
from ps.tables.placement import block_shard
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import TableSpec
from worker.client.membership import Membership
from worker.client.pull_cache import PullCache
from worker.client.table_directory import TableDirectory

SGD = OptimizerSpec.from_options("sgd", 0.1)
W = TableSpec(name="w", shape=(100,), dtype="float32", block_elems=10, optimizer=SGD)
EMB = SparseTableSpec(name="emb", dim=4, dtype="float32", optimizer=SGD)


class FakeCluster:
    """Records every call; answers like shards that know ``W`` and ``EMB``, in ``mode``."""

    def __init__(self, n: int = 2, mode: int = ps_pb2.SYNC) -> None:
        self.addresses = [f"127.0.0.1:{5000 + i}" for i in range(n)]
        self.timeout_s = 1.0
        self.channels: list = []
        self.mode = mode
        self.calls: list[tuple[int, str, object]] = []
        self.rejoin = None
        self.fenced = False

    def __len__(self) -> int:
        return len(self.addresses)

    def wait_ready(self, timeout_s: float) -> None:
        pass

    def on_lost_registration(self, rejoin) -> None:
        self.rejoin = rejoin

    def fan_out(self, method, requests, wait=False):
        items = requests.items() if isinstance(requests, dict) else enumerate(requests)
        return [self.call(i, method, r) for i, r in items]

    def call(self, shard, method, request, wait=False):
        self.calls.append((shard, method, request))
        if method == "register":
            return ps_pb2.RegisterReply(worker_id=request.worker_id if request.worker_id >= 0 else 7, mode=self.mode,
                                        next_seq=10 + shard, clock=3, server_id=f"s{shard}", fenced=self.fenced,
                                        tables=[W.to_proto()] if shard == 0 else [])
        if method == "status":
            reply = ps_pb2.StatusReply(mode=self.mode, server_id=f"s{shard}")
            reply.tables.add(spec=W.to_proto())
            reply.sparse_tables.add(spec=EMB.to_proto())
            return reply
        if method == "create_table":
            return ps_pb2.CreateTableReply(created=True)
        return None


# -- the table directory ------------------------------------------------------------------


def test_the_directory_places_every_block_on_the_shard_its_stable_hash_names():
    directory = TableDirectory(FakeCluster(3))
    directory.learn(W)
    assert sorted(b for s in range(3) for b in directory.blocks("w", s)) == list(range(W.num_blocks))
    assert all(block_shard("w", b, 3) == s for s in range(3) for b in directory.blocks("w", s))
    assert directory.specs["w"] is W


def test_the_directory_asks_shard_0_once_about_a_name_it_does_not_know():
    cluster = FakeCluster()
    directory = TableDirectory(cluster)
    assert directory.spec("w") == W and directory.sparse_spec("emb") == EMB
    assert [m for _, m, _ in cluster.calls] == ["status"]
    with pytest.raises(FailedPreconditionError):
        directory.spec("emb")
    with pytest.raises(FailedPreconditionError):
        directory.sparse_spec("w")
    with pytest.raises(NotFoundError):
        directory.spec("nothing")


def test_creating_goes_to_shard_0_first_and_a_restarted_shard_gets_every_lost_table_again():
    cluster = FakeCluster(3)
    directory = TableDirectory(cluster)
    directory.create(W)
    directory.create(EMB)
    assert [s for s, m, _ in cluster.calls][:3] == [0, 1, 2]
    assert all(r.topology.shard_index == s and r.topology.num_shards == 3 for s, _, r in cluster.calls)
    cluster.calls.clear()
    directory.recreate(2, held={"w"})
    assert [(s, r.spec.name) for s, _, r in cluster.calls] == [(2, "emb")]


# -- the pull cache -----------------------------------------------------------------------


def test_the_pull_cache_names_what_it_holds_for_the_state_it_was_read_at():
    cache = PullCache({"w": W})
    header = ps_pb2.PullHeader()
    cache.name_known(0, header, [("w", 0)])
    assert header.known_for == "" and not header.known          # nothing held yet
    cache.remember("w", 1, 5, np.full(10, 3.0, np.float32))
    dest = {"w": np.zeros(100, np.float32)}
    cache.fill(0, "server:0", [("w", 0), ("w", 1)], {("w", 0)}, dest)
    np.testing.assert_array_equal(dest["w"][10:20], 3.0)        # block 1 was left out: from the cache
    header = ps_pb2.PullHeader()
    cache.name_known(0, header, [("w", 1), ("w", 2)])
    assert header.known_for == "server:0" and [(k.block, k.version) for k in header.known] == [(1, 5)]
    with pytest.raises(Exception, match="does not hold"):
        cache.fill(0, "server:0", [("w", 2)], set(), dest)


# -- membership -------------------------------------------------------------------------


def test_every_register_request_carries_the_session_and_the_shards_place():
    cluster = FakeCluster(2)
    directory = TableDirectory(cluster)
    member = Membership(cluster, directory, requested_id=4, heartbeat_s=0)
    clock, seqs = member.join(1.0)
    assert (member.worker_id, member.mode, clock, seqs) == (4, "sync", 3, [10, 11])
    assert "w" in directory.specs and cluster.rejoin is not None
    member.rejoin(1)
    cluster.fenced = True
    assert member.reconcile() == (3, [10, 11])
    registers = [(s, r) for s, m, r in cluster.calls if m == "register"]
    assert len(registers) == 5 and member.rejoins == 1
    assert all(r.session == member.session and r.topology.shard_index == s and r.topology.num_shards == 2
               for s, r in registers)
    assert [r.resync for _, r in registers] == [False, False, False, True, True]


def test_an_observer_reads_status_and_joins_no_quorum():
    cluster = FakeCluster(2, mode=ps_pb2.ASYNC)
    member = Membership(cluster, TableDirectory(cluster), observer=True)
    assert member.join(1.0) == (0, [0, 0])
    assert {m for _, m, _ in cluster.calls} == {"status"} and member.worker_id == -1 and cluster.rejoin is None
    member.leave()
    assert {m for _, m, _ in cluster.calls} == {"status"}


def test_shards_that_disagree_on_the_mode_are_refused():
    cluster = FakeCluster(2)
    real = cluster.call
    cluster.call = lambda s, m, r, wait=False: (ps_pb2.RegisterReply(worker_id=0, mode=ps_pb2.ASYNC) if s == 1
                                                 else real(s, m, r))
    with pytest.raises(FailedPreconditionError, match="disagree"):
        Membership(cluster, TableDirectory(cluster), heartbeat_s=0).join(1.0)
