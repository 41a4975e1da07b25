"""Your own model through the cluster: implement the small ``worker.models.Model`` protocol.

A model declares its parameters (shape and initialiser: the servers create the tables
from them), computes the mean loss and its gradients for a batch, and predicts. It holds
no weights. Array arithmetic goes through the module of the arrays it is handed (``xp``),
so the same class runs on NumPy or, with ``device="cuda"``, on CuPy.

This one is a two-layer network with a tanh hidden layer, trained on the bundled digits
by two sync workers over two in-process shards::

    python examples/custom_model.py
"""

from __future__ import annotations

import threading

from ps import Mode, ServerConfig, ShardServer
from worker import Client
from worker.data.dataset import open_source
from worker.training.loop import TrainConfig, train
from worker.models import ParamSpec
from worker.models.softmax import softmax_cross_entropy
from worker.xp import array_module


class TanhNet:
    """x -> tanh(x @ w1 + b1) -> softmax(h @ w2 + b2), cross-entropy loss."""

    task = "classification"

    def __init__(self, num_features: int, num_classes: int, hidden: int = 32) -> None:
        self.num_features, self.num_classes, self.hidden = num_features, num_classes, hidden

    def parameters(self) -> dict[str, ParamSpec]:
        return {
            "w1": ParamSpec((self.num_features, self.hidden), init="glorot"),
            "b1": ParamSpec((self.hidden,)),
            "w2": ParamSpec((self.hidden, self.num_classes), init="glorot"),
            "b2": ParamSpec((self.num_classes,)),
        }

    def loss_and_grads(self, params, x, y):
        xp = array_module(x)
        x = x.astype(params["w1"].dtype, copy=False)
        h = xp.tanh(x @ params["w1"] + params["b1"])
        loss, dlogits = softmax_cross_entropy(h @ params["w2"] + params["b2"], y)  # dlogits has the 1/n
        dh = (dlogits @ params["w2"].T) * (1 - h * h)
        return loss, {"w1": x.T @ dh, "b1": dh.sum(axis=0), "w2": h.T @ dlogits, "b2": dlogits.sum(axis=0)}

    def predict(self, params, x):
        h = array_module(x).tanh(x.astype(params["w1"].dtype, copy=False) @ params["w1"] + params["b1"])
        return (h @ params["w2"] + params["b2"]).argmax(axis=1)


def run_worker(addresses: list[str], rank: int, num_workers: int, results: dict) -> None:
    config = TrainConfig(rank=rank, num_workers=num_workers, epochs=15, optimizer="adam", lr=0.01)
    train_ds, test_ds = open_source("digits", rank=rank, num_workers=num_workers, seed=config.seed)
    model = TanhNet(train_ds.num_features, test_ds.num_classes)
    client = Client(addresses, worker_id=rank).connect()   # train() closes it when done
    results[rank] = train(client, model, train_ds, test_ds, config)


def main() -> None:
    servers = [ShardServer(ServerConfig(port=0, mode=Mode.SYNC, num_workers=2)) for _ in range(2)]
    for s in servers:
        s.start()
    try:
        results: dict = {}
        threads = [threading.Thread(target=run_worker, args=([s.address for s in servers], r, 2, results))
                   for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        for rank in sorted(results):
            print(f"worker {rank}: {results[rank].summary()}")
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    main()
