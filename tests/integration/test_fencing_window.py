"""A push in flight while a newer Client takes its worker id over (issue 12, item 2's window).

A push travels to each shard on its own, so a takeover that reaches the shards one after the
other can meet a push of the older Client half-way: some shards apply it before the newer
Client registered with them, the others refuse it (FENCED). What holds, and is tested here
on 2 shards with real gRPC:

- per shard, the answer matches what the shard did: acknowledged = applied (also when an
  acknowledgement was lost and the fenced Client sends the same push again: a duplicate of a
  push the shard applied before the takeover is acknowledged again, not refused);
- the caller of a refused push learns which shards applied it all the same:
  ``error.applied_shards`` (empty: applied on no shard);
- once the newer Client's registration completed on every shard, every push of the older one
  is refused on every shard.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from ps import Mode, ServerConfig, ShardServer
from ps._proto import ps_pb2
from ps.errors import FailedPreconditionError, Reason
from ps.protocol.wire import encode_framed
from worker import Client
from worker.client.transport import ShardChannel

N = 64  # 8 blocks of 8: both shards hold some


def start_servers() -> list[ShardServer]:
    return [ShardServer(ServerConfig(port=0, mode=Mode.ASYNC, shard_index=i, num_shards=2, grace_s=0.2)).start()
            for i in range(2)]


def owners(servers: list[ShardServer]) -> np.ndarray:
    """For each element of ``w``, the shard that holds it."""
    owner = np.full(N, -1)
    for k, s in enumerate(servers):
        for block in s.shard.tables["w"].blocks:
            owner[block * 8:(block + 1) * 8] = k
    assert (owner >= 0).all() and set(owner) == {0, 1}
    return owner


def register_on(server: ShardServer, shard: int, worker: int, session: int) -> None:
    """The first step of a takeover: a Register of ``session`` on one shard only (real gRPC)."""
    channel = ShardChannel(server.address, 64 << 20)
    try:
        request = ps_pb2.RegisterRequest(worker_id=worker, session=session)
        request.topology.shard_index, request.topology.num_shards = shard, 2
        channel.register(request, timeout=5)
    finally:
        channel.close()


def test_a_push_that_straddles_the_takeover_names_the_shards_that_applied_it():
    servers = start_servers()
    stale = Client([s.address for s in servers], worker_id=3)
    newest = Client([s.address for s in servers], worker_id=3)
    applied = np.zeros(2)  # per shard: the sum of the values it applied
    try:
        stale.connect()
        stale.create("w", shape=(N,), lr=1.0, block_elems=8)
        stale.push({"w": np.full(N, 1, np.float32)})
        applied += 1
        register_on(servers[0], 0, 3, newest.session)   # the takeover has reached shard 0, not yet shard 1
        with pytest.raises(FailedPreconditionError) as refused:
            stale.push({"w": np.full(N, 100, np.float32)})
        assert refused.value.reason is Reason.FENCED
        assert refused.value.applied_shards == (1,) and "straddled the takeover" in str(refused.value)
        applied[1] += 100
        newest.connect()                                  # the takeover completes
        with pytest.raises(FailedPreconditionError) as refused:
            stale.push({"w": np.full(N, 1000, np.float32)})
        assert refused.value.reason is Reason.FENCED and refused.value.applied_shards == ()
        newest.push({"w": np.full(N, 10000, np.float32)})
        applied += 10000
        w = newest.pull("w")["w"]
        owner = owners(servers)
    finally:
        newest.close()
        stale.close()
        for s in servers:
            s.stop(grace_s=0.2)
    np.testing.assert_array_equal(w, -applied[owner].astype(np.float32))


def test_a_fenced_clients_resent_push_is_answered_as_its_shard_applied_it():
    """The acknowledgement of a push applied before the takeover was lost; the fenced Client
    sends it again (same worker, session and sequence number): acknowledged as a duplicate,
    applied once. A push of the same Client it never applied is refused."""
    servers = start_servers()
    stale = Client([s.address for s in servers], worker_id=3)
    channel = ShardChannel(servers[1].address, 64 << 20)
    try:
        stale.connect()
        stale.create("w", shape=(N,), lr=1.0, block_elems=8)
        block = next(iter(servers[1].shard.tables["w"].blocks))
        seq = servers[1].shard.dedup.next_seq(3)

        def push(seq: int) -> ps_pb2.PushReply:
            header = ps_pb2.PushHeader(worker_id=3, seq=seq, step=0, part=0, num_parts=1, session=stale.session)
            header.blocks.add(table="w", block=block, dtype=ps_pb2.FLOAT32, count=8)
            return channel.push(encode_framed(header.SerializeToString(), [np.ones(8, np.float32)]), timeout=5)

        assert push(seq).outcome == ps_pb2.APPLIED       # its acknowledgement is "lost"
        with Client([s.address for s in servers], worker_id=3):  # takes id 3 over on both shards
            assert push(seq).outcome == ps_pb2.DUPLICATE  # sent again: acknowledged, not applied twice
            with pytest.raises(grpc.RpcError) as refused:  # a push it never had applied: refused
                push(seq + 1)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "fenced" in refused.value.details()
            values = servers[1].shard.tables["w"].read_if_newer(servers[1].shard.tables["w"].blocks[block], None)[0]
    finally:
        channel.close()
        stale.close()
        for s in servers:
            s.stop(grace_s=0.2)
    np.testing.assert_array_equal(np.frombuffer(values, np.float32), -np.ones(8, np.float32))


def test_racing_pushes_during_takeovers_are_applied_exactly_where_acknowledged():
    """Two Clients claim one id, over and over: the older one pushes as fast as it can while
    the newer one registers. Per shard, the values equal the pushes acknowledged there (the
    caller's acknowledgements plus each refusal's ``applied_shards``), and after the newer
    Client's registration completed no push of the older one is applied anywhere."""
    servers = start_servers()
    addresses = [s.address for s in servers]
    applied = np.zeros(2)
    straddled = 0
    try:
        with Client(addresses, worker_id=100) as creator:
            creator.create("w", shape=(N,), lr=1.0, block_elems=8)
        for worker in range(12):  # one takeover per worker id
            stale = Client(addresses, worker_id=worker).connect()
            newest = Client(addresses, worker_id=worker)
            registered = threading.Event()
            late: list[tuple[int, ...]] = []  # applied_shards of pushes sent after the takeover completed
            outcomes: list[tuple[int, ...]] = []

            def pushing() -> None:
                for _ in range(5000):  # bounded; ends at the first refusal after the takeover completed
                    after = registered.is_set()
                    try:
                        stale.push({"w": np.ones(N, np.float32)})
                        outcomes.append((0, 1))
                    except FailedPreconditionError as exc:
                        assert exc.reason is Reason.FENCED, exc
                        outcomes.append(exc.applied_shards)
                        if after:
                            late.append(exc.applied_shards)
                            return
                raise AssertionError("the older client was never fenced")

            pusher = threading.Thread(target=pushing, daemon=True)
            pusher.start()
            time.sleep(0.002 * worker)  # the takeover lands at a different point of a push each time
            newest.connect()
            registered.set()
            pusher.join(30)
            assert not pusher.is_alive()
            assert late == [()], late  # after the takeover completed: refused everywhere
            for shards in outcomes:
                applied[list(shards)] += 1
            straddled += sum(len(s) == 1 for s in outcomes)
            newest.close()
            stale.close()
        with Client(addresses, observer=True) as observer:
            w = observer.pull("w")["w"]
        owner = owners(servers)
    finally:
        for s in servers:
            s.stop(grace_s=0.2)
    np.testing.assert_array_equal(w, -applied[owner].astype(np.float32))
    print(f"{straddled} of the refused pushes straddled a takeover")
