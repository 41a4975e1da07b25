"""The classic sparse workload: logistic regression on a synthetic click log, cluster vs one process."""

import pytest

from tests.conftest import run_threads
from worker import Client
from worker.data.ctr import open_ctr_source
from worker.training.loop import TrainConfig
from worker.models.sparse_lr import SparseLogisticRegression
from worker.models.sparse_mlp import SparseMLP
from worker.training.sparse_loop import train_sparse, train_sparse_local

DATA = "synthetic-ctr:n=16000&fields=8&ids=10000000&alpha=1.1&seed=5"
WORKERS = 2


MODELS = {  # name -> (model, optimizer, lr): logistic regression (dim 1) and an embedding bag + MLP (dim 8)
    "sparse_lr": (SparseLogisticRegression(), "adagrad", 0.2),
    "sparse_mlp": (SparseMLP(dim=8, hidden=8), "adam", 0.01),
}


def config(name: str, rank: int = 0) -> TrainConfig:
    _, optimizer, lr = MODELS[name]
    return TrainConfig(model=name, data=DATA, epochs=2, batch_size=500, optimizer=optimizer, lr=lr,
                       seed=1, rank=rank, num_workers=WORKERS, eval_each_epoch=False)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sync_cluster_reaches_the_single_process_auc(shards, name):
    model = MODELS[name][0]
    splits = [open_ctr_source(DATA, rank=r, num_workers=WORKERS, seed=1) for r in range(WORKERS)]
    test = splits[0][1]
    local = train_sparse_local(model, [s[0] for s in splits], test, config(name))
    with shards(2, mode="sync", num_workers=WORKERS) as servers:
        addresses = [s.address for s in servers]

        def worker(rank):
            client = Client(addresses, worker_id=rank, timeout_s=10, wait_timeout_s=60).connect()
            return train_sparse(client, model, splits[rank][0], test, config(name, rank))

        results = run_threads([lambda r=r: worker(r) for r in range(WORKERS)], timeout_s=120)
        with Client(addresses, observer=True) as ps:
            status = ps.status()
    print(f"\n{name} on synthetic CTR, AUC: cluster (2 shards x {WORKERS} sync workers) "
          f"{[round(r.test_score, 5) for r in results]}, single process {local.test_score:.5f}")
    assert local.test_score > 0.6, "the model learns something"
    for r in results:
        assert r.metric == "auc" and abs(r.test_score - local.test_score) < 0.01
    rows = [t["rows"] for s in status for t in s["sparse_tables"]]
    assert len(rows) == 2 and min(rows) > 0.3 * sum(rows), "rows spread over both shards"
    assert all(s["counters"]["rows_pushed"] > 0 for s in status)
