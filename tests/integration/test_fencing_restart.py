"""The newest Client keeps a worker id across a shard's restart; a refused push is applied nowhere.

Two Clients claim worker id 3 on 2 shards; the newer one took it over. Then one shard is
stopped (final checkpoint) and a new one is started on its port with ``restore``: it knows
worker 3 from the checkpoint but no session. Before sessions were ordered and a restarted
shard made an unknown session register first, the stale Client's next push claimed the id
there (applied on the restarted shard, refused on the other), and from then on the newest
Client was fenced on the restarted shard while applied on the other: the shards disagreed.
"""

import numpy as np
import pytest

from ps import Mode, ServerConfig, ShardServer
from ps.errors import FailedPreconditionError, Reason
from worker import Client

N = 64   # 8 blocks of 8: both shards hold some


def _grad(value):
    return {"w": np.full(N, value, np.float32)}


@pytest.mark.parametrize("restarted", [0, 1])
def test_the_newest_session_keeps_the_id_across_a_shard_restart(tmp_path, restarted):
    configs = [ServerConfig(port=0, mode=Mode.ASYNC, shard_index=i, num_shards=2, checkpoint_dir=str(tmp_path),
                            grace_s=0.2) for i in range(2)]
    servers = [ShardServer(c).start() for c in configs]
    addresses = [s.address for s in servers]
    acked = 0.0
    stale = Client(addresses, worker_id=3, heartbeat_s=0.2)
    newest = Client(addresses, worker_id=3, heartbeat_s=0.2)
    try:
        stale.connect()
        stale.create("w", shape=(N,), lr=1.0, block_elems=8)
        assert all(s.shard.snapshot()["tables"][0][1] > 0 for s in servers)   # blocks on each shard
        stale.push(_grad(1))
        acked += 1
        newest.connect()                                   # registers later: takes id 3 over
        newest.push(_grad(10))
        acked += 10
        with pytest.raises(FailedPreconditionError, match="fenced"):
            stale.push(_grad(100))

        servers[restarted].stop(grace_s=0.2)               # final checkpoint, then a new process on its port
        servers[restarted] = ShardServer(ServerConfig(**{**configs[restarted].__dict__,
                                                         "port": servers[restarted].port, "restore": True})).start()

        for value in (1000, 2000):                          # the stale client first: it claims nothing
            with pytest.raises(FailedPreconditionError) as refused:
                stale.push(_grad(value))
            assert refused.value.reason is Reason.FENCED
        newest.push(_grad(10000))                           # the newest still holds the id everywhere
        acked += 10000
        with pytest.raises(FailedPreconditionError) as refused:
            stale.push(_grad(3000))
        assert refused.value.reason is Reason.FENCED
        newest.push(_grad(20000))
        acked += 20000
        with Client(addresses, observer=True) as observer:
            w = observer.pull("w")["w"]
            statuses = observer.status()
    finally:
        newest.close()
        stale.close()
        for s in servers:
            s.stop(grace_s=0.2)
    # every element lives on one shard: on both shards exactly the acknowledged pushes were applied
    np.testing.assert_array_equal(w, np.full(N, -acked, np.float32))
    assert [w["id"] for s in statuses for w in s["workers"] if w["live"]] == [3, 3]
