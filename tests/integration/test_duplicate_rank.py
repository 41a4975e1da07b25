"""Two clients under one worker id are told apart: the newest registration wins, the older is fenced.

Without this, two workers started with the same ``--rank`` would share one dedup window
and silently drop each other's pushes as duplicates.
"""

import numpy as np
import pytest

from ps.errors import FailedPreconditionError
from worker import Client


def _status(address):
    with Client([address], observer=True) as ps:
        return ps.status()[0]


PLANES = {"shared-memory": {"local": True}, "tcp": {"local": False}, "grpc": {"local": False, "stream": False}}


@pytest.mark.parametrize("plane", list(PLANES))
def test_a_second_client_under_the_same_id_fences_the_first(shards, plane):
    with shards(1, mode="async") as servers:
        address = servers[0].address
        first = Client([address], worker_id=3, **PLANES[plane])
        first.connect()
        try:
            first.create("w", shape=(8,), lr=1.0)
            first.push({"w": np.full(8, 1.0, np.float32)})
            first.push({"w": np.full(8, 2.0, np.float32)})
            assert first.data_planes() == [plane.replace("-", " ")]
            with Client([address], worker_id=3, **PLANES[plane]) as second:   # same rank, another process
                second.push({"w": np.full(8, 10.0, np.float32)})
                with pytest.raises(FailedPreconditionError, match="fenced"):
                    first.push({"w": np.full(8, 100.0, np.float32)})      # never applied
                with pytest.raises(FailedPreconditionError, match="another client"):
                    first.push_pull({"w": np.full(8, 100.0, np.float32)}, "w")
                second.push({"w": np.full(8, 20.0, np.float32)})
                final = second.pull("w")["w"]
                status = _status(address)
                assert [w["id"] for w in status["workers"] if w["live"]] == [3]
        finally:
            first.close()  # its Leave is ignored: the id is the second client's
        # every push of the holder applied, none of the fenced one's: 1 + 2 + 10 + 20
        assert np.array_equal(final, np.full(8, -33.0, np.float32))
        counters = _status(address)["counters"]
        assert counters["takeovers"] == 1 and counters["fenced_pushes"] == 2
        assert counters["applied"] == 4


def test_the_same_client_registering_again_is_not_a_takeover(shards):
    with shards(1, mode="async") as servers:
        with Client([servers[0].address], worker_id=0) as ps:
            ps.create("w", shape=(4,), lr=1.0)
            ps.push({"w": np.ones(4, np.float32)})
            servers[0].shard.membership.leave(0)            # e.g. its lease ran out: the shard forgets it
            ps.push({"w": np.ones(4, np.float32)})  # re-registers transparently, same session
            assert np.array_equal(ps.pull("w")["w"], np.full(4, -2.0, np.float32))
        assert _status(servers[0].address)["counters"].get("takeovers", 0) == 0


def test_a_restarted_worker_takes_its_rank_back(shards):
    """A worker that died without leaving rejoins under its rank at once; its dead session is fenced."""
    with shards(1, mode="sync", num_workers=1) as servers:
        address = servers[0].address
        dead = Client([address], worker_id=0)
        dead.connect()
        dead.create("w", shape=(4,), lr=1.0)
        dead.push({"w": np.ones(4, np.float32)})
        # the process "dies": no Leave, no close
        with Client([address], worker_id=0) as restarted:
            assert restarted.clock == 1                 # resumes at its rank's step
            restarted.push({"w": np.ones(4, np.float32)})
            assert np.array_equal(restarted.pull("w")["w"], np.full(4, -2.0, np.float32))
        dead.close()


def test_sparse_pushes_of_a_fenced_client_are_refused(shards):
    with shards(1, mode="async") as servers:
        address = servers[0].address
        with Client([address], worker_id=1) as first, Client([address], worker_id=7) as other:
            first.create_sparse("emb", dim=2, lr=1.0, init="zeros")
            ids = np.array([5, 9], np.int64)
            first.push_rows("emb", ids, np.ones((2, 2), np.float32))
            with Client([address], worker_id=1) as second:
                with pytest.raises(FailedPreconditionError, match="fenced"):
                    first.push_rows("emb", ids, np.ones((2, 2), np.float32))
                second.push_rows("emb", ids, np.ones((2, 2), np.float32))
                assert np.array_equal(other.pull_rows("emb", ids), np.full((2, 2), -2.0, np.float32))
