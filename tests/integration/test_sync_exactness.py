"""Sync mode is exact: N workers equal one process doing SGD on the mean gradient."""

import numpy as np

from tests.conftest import run_threads
from worker import Client

STEPS = 8
LR = 0.05


def gradient(rank: int, step: int, w: np.ndarray, b: np.ndarray):
    """A deterministic squared-error gradient of a Linear(100, 10) layer on worker data."""
    rng = np.random.default_rng([rank, step])
    x = rng.standard_normal((16, 100)).astype(np.float32)
    y = rng.standard_normal((16, 10)).astype(np.float32)
    r = x @ w + b - y
    return {"w": (x.T @ r / len(x)).astype(np.float32), "b": r.mean(axis=0).astype(np.float32)}


def test_two_shards_three_workers_match_single_process_sgd(shards):
    with shards(2, mode="sync", num_workers=3) as servers:
        addresses = [s.address for s in servers]

        def worker(rank):
            with Client(addresses, worker_id=rank, timeout_s=10, wait_timeout_s=30) as ps:
                # small blocks so both tables really span both shards
                ps.create("w", shape=(100, 10), init="normal", init_scale=0.1, seed=7, lr=LR, block_elems=96)
                ps.create("b", shape=(10,), lr=LR, block_elems=4)
                initial = ps.pull(["w", "b"])
                for step in range(STEPS):
                    p = ps.pull(["w", "b"])
                    ps.push(gradient(rank, step, p["w"], p["b"]))
                return initial, ps.pull(["w", "b"])

        results = run_threads([lambda r=r: worker(r) for r in range(3)])

    initial = results[0][0]
    w = initial["w"].astype(np.float64)
    b = initial["b"].astype(np.float64)
    for step in range(STEPS):
        grads = [gradient(r, step, w.astype(np.float32), b.astype(np.float32)) for r in range(3)]
        w = w - LR * np.mean([g["w"] for g in grads], axis=0)
        b = b - LR * np.mean([g["b"] for g in grads], axis=0)
    for _, final in results:
        np.testing.assert_allclose(final["w"], w, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(final["b"], b, rtol=1e-6, atol=1e-6)
    assert any(np.abs(final["w"] - initial["w"]).max() > 1e-3 for _, final in results)
