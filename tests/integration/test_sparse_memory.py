"""Memory bounds over gRPC: max_rows eviction and the admission filter, as Status reports them."""

import numpy as np

from worker import Client


def sparse_status(ps, name):
    return [next(t for t in s["sparse_tables"] if t["name"] == name) for s in ps.status()]


def test_max_rows_bounds_each_shard_and_evicted_rows_read_as_initial(shards):
    with shards(2, mode="async") as servers:
        with Client([s.address for s in servers], worker_id=0) as ps:
            ps.create_sparse("emb", 8, init="normal", init_scale=0.1, seed=2, lr=1.0, max_rows=100)
            initial = ps.pull_rows("emb", np.arange(1000))
            for start in range(0, 1000, 50):
                ps.push_rows("emb", np.arange(start, start + 50), np.ones((50, 8), np.float32))
                assert all(t["rows"] <= 100 for t in sparse_status(ps, "emb"))
            status = sparse_status(ps, "emb")
            assert sum(t["evicted"] for t in status) >= 1000 - 200
            assert all(t["bytes"] > 0 for t in status)
            rows = ps.pull_rows("emb", np.arange(1000))
            recent = np.arange(950, 1000)           # the last push is never evicted
            np.testing.assert_allclose(rows[recent], initial[recent] - 1, rtol=1e-6)
            evicted = np.flatnonzero(np.abs(rows - initial).max(axis=1) == 0)
            assert len(evicted) >= 800 and evicted.max() < 950
            counters = [s["counters"] for s in ps.status()]
            assert sum(c["rows_evicted"] for c in counters) == sum(t["evicted"] for t in status)


def test_admission_drops_rows_until_their_admit_after_th_push(shards):
    with shards(2, mode="async") as servers:
        with Client([s.address for s in servers], worker_id=0) as ps:
            ps.create_sparse("emb", 2, lr=1.0, admit_after=3)
            ids = np.arange(10)
            for k in range(3):
                ps.push_rows("emb", ids, np.ones((10, 2), np.float32))
                stored = sum(t["rows"] for t in sparse_status(ps, "emb"))
                assert stored == (10 if k == 2 else 0)
                np.testing.assert_array_equal(ps.pull_rows("emb", ids), -1.0 if k == 2 else 0.0)
            assert sum(s["counters"]["rows_not_admitted"] for s in ps.status()) == 20
