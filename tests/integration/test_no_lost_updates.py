"""No lost updates, exactly-once pushes: exact sums of known gradients."""

import numpy as np

from ps._proto import ps_pb2
from ps.protocol.wire import encode_framed
from tests.conftest import run_threads
from worker import Client
from worker.client.transport import ShardChannel


def test_concurrent_async_pushes_sum_exactly(shards):
    workers, pushes = 4, 25
    with shards(2, mode="async") as servers:
        addresses = [s.address for s in servers]
        with Client(addresses) as ps:
            ps.create("t", shape=(300, 7), lr=1.0, block_elems=128)

        def worker(rank):
            with Client(addresses) as ps:
                for k in range(pushes):
                    # small integers: every partial sum is exact in float32
                    ps.push({"t": np.full((300, 7), rank + 1 + k % 3, dtype=np.float32)})

        run_threads([lambda r=r: worker(r) for r in range(workers)])
        with Client(addresses, observer=True) as ps:
            final = ps.pull("t")["t"]
            applied = sum(s["counters"].get("applied", 0) for s in ps.status())
    expected = -sum(r + 1 + k % 3 for r in range(workers) for k in range(pushes))
    assert np.array_equal(final, np.full((300, 7), expected, dtype=np.float32))
    assert applied == workers * pushes * 2       # every push touched both shards


def test_the_same_push_delivered_twice_applies_once(shards):
    with shards(1, mode="async") as servers:
        with Client([servers[0].address], worker_id=5) as ps:
            ps.create("w", shape=(4,), lr=1.0)
        channel = ShardChannel(servers[0].address, 64 << 20)
        try:
            reg = ps_pb2.RegisterRequest(worker_id=5)
            channel.register(reg, timeout=5)
            header = ps_pb2.PushHeader(worker_id=5, seq=42, step=0, part=0, num_parts=1)
            header.blocks.add(table="w", block=0, dtype=ps_pb2.FLOAT32, count=4)
            message = encode_framed(header.SerializeToString(), [np.ones(4, dtype=np.float32)])
            first = channel.push(message, timeout=5)
            second = channel.push(message, timeout=5)     # a retry after a lost reply
        finally:
            channel.close()
        assert first.outcome == ps_pb2.APPLIED and second.outcome == ps_pb2.DUPLICATE
        with Client([servers[0].address], observer=True) as ps:
            assert np.array_equal(ps.pull("w")["w"], -np.ones(4, dtype=np.float32))
            assert ps.status()[0]["counters"]["duplicate"] == 1
