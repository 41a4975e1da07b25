"""Sparse tables over real gRPC: sync SGD equals one NumPy process; async loses no update."""

import numpy as np

from ps.tables.optim import OptimizerSpec
from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.spec import InitSpec
from tests.conftest import run_threads
from worker import Client

STEPS = 6
LR = 0.1
DIM = 3
WORKERS = 3
SPEC = SparseTableSpec("emb", DIM, optimizer=OptimizerSpec("sgd", lr=LR), init=InitSpec("normal", 0.5, 5))
UNIVERSE = np.concatenate([np.arange(60), np.arange(60) * 1_000_003 - 2**40]).astype(np.int64)


def batch(rank: int, step: int) -> np.ndarray:
    """Ids of one worker's step: repeats on purpose; worker 2 touches nothing on odd steps."""
    if rank == 2 and step % 2:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([rank, step, 7])
    return UNIVERSE[rng.integers(0, 45, 16)]  # ids 45.. of each half are never touched


def gradient(rank: int, step: int, rows: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([rank, step, 8])
    return (0.5 * rows + rng.standard_normal(rows.shape)).astype(np.float32)


def dense_gradient(rank: int, step: int, w: np.ndarray) -> np.ndarray:
    return (w * 0.1 + rank + step).astype(np.float32)


def reference(with_dense: bool):
    """One process: every step, the per-id sum of all workers' row gradients / WORKERS."""
    table = {int(i): SPEC.initial_rows(np.array([i]))[0].astype(np.float64) for i in UNIVERSE}
    w = np.zeros(4)
    for step in range(STEPS):
        acc: dict[int, np.ndarray] = {}
        gw = np.zeros(4)
        for rank in range(WORKERS):
            ids = batch(rank, step)
            rows = np.array([table[int(i)] for i in ids], dtype=np.float32).reshape(len(ids), DIM)
            for i, g in zip(ids.tolist(), gradient(rank, step, rows)):
                acc[i] = acc.get(i, 0) + g.astype(np.float64)
            gw += dense_gradient(rank, step, w.astype(np.float32))
        for i, g in acc.items():
            table[i] = table[i] - LR * g / WORKERS
        if with_dense:
            w = w - LR * gw / WORKERS
    return np.array([table[int(i)] for i in UNIVERSE]), w


def run_cluster(shards, with_dense: bool):
    with shards(2, mode="sync", num_workers=WORKERS) as servers:
        addresses = [s.address for s in servers]

        def worker(rank):
            with Client(addresses, worker_id=rank, timeout_s=10, wait_timeout_s=30) as ps:
                ps.create_sparse("emb", DIM, init="normal", init_scale=0.5, seed=5, optimizer="sgd", lr=LR)
                ps.create("w", shape=(4,), lr=LR, block_elems=2)
                for step in range(STEPS):
                    ids = batch(rank, step)
                    g = gradient(rank, step, ps.pull_rows("emb", ids))
                    if with_dense:
                        gw = dense_gradient(rank, step, ps.pull("w")["w"])
                        ps.push({"w": gw}, rows={"emb": (ids, g)})   # one step, one clock tick
                    else:
                        ps.push_rows("emb", ids, g)
                assert ps.clock == STEPS
                return ps.pull_rows("emb", UNIVERSE), ps.pull("w")["w"], ps.status()

        return run_threads([lambda r=r: worker(r) for r in range(WORKERS)])


def test_sync_sparse_sgd_on_two_shards_three_workers_matches_numpy(shards):
    expected, _ = reference(with_dense=False)
    results = run_cluster(shards, with_dense=False)
    initial = SPEC.initial_rows(UNIVERSE)
    for rows, _, _ in results:
        np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
    touched = np.zeros(len(UNIVERSE), bool)
    touched[[i % 60 + (60 if i >= 60 else 0) for i in range(len(UNIVERSE)) if i % 60 < 45]] = True
    np.testing.assert_array_equal(results[0][0][~touched], initial[~touched])  # untouched rows never change
    status = results[0][2]
    assert all(s["version"] == STEPS for s in status)
    stored = sum(t["rows"] for s in status for t in s["sparse_tables"])
    assert 0 < stored <= 90 and all(s["sparse_tables"] for s in status), "rows live on both shards"


def test_dense_and_sparse_in_one_push_are_one_step(shards):
    expected, w = reference(with_dense=True)
    for rows, got_w, _ in run_cluster(shards, with_dense=True):
        np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_w, w, rtol=1e-5, atol=1e-6)


def test_async_row_pushes_lose_no_update(shards):
    """3 workers x 20 pushes of small integers to overlapping rows: exact sums."""
    with shards(2, mode="async") as servers:
        addresses = [s.address for s in servers]
        ids = np.array([1, 2, 3, 2, 2**50, -7, 1], dtype=np.int64)

        def worker(rank):
            with Client(addresses, worker_id=rank, timeout_s=10) as ps:
                ps.create_sparse("emb", 2, optimizer="sgd", lr=1.0)
                for k in range(20):
                    ps.push_rows("emb", ids, np.full((len(ids), 2), rank + 1 + k, np.float32))

        run_threads([lambda r=r: worker(r) for r in range(WORKERS)])
        with Client(addresses, observer=True) as ps:
            got = ps.pull_rows("emb", np.array([1, 2, 3, 2**50, -7, 99]))
    total = sum(rank + 1 + k for rank in range(WORKERS) for k in range(20))
    multiplicity = np.array([2, 2, 1, 1, 1, 0])
    np.testing.assert_array_equal(got[:, 0], -total * multiplicity)
