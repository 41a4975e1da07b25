"""A PyTorch model through the cluster: a small MLP on the bundled digits, two sync workers.

The model is plain torch (``make_model`` below); ``ParameterServerOptimizer`` puts one table
per parameter on the servers and turns ``opt.step()`` into one push-and-pull. Each worker
trains on its own shard of the data, as ``ps-launch`` does with the NumPy MLP (64 hidden
units, Adam at lr 0.01, batches of 32, 20 epochs), and reaches the same test accuracy::

    python examples/torch_digits.py

The same factory trains from the command line, on a ``ps-launch`` cluster::

    ps-launch --model torch:examples.torch_digits:make_model --save model.npz

and the saved file loads back into torch::

    model, _ = make_model()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in np.load("model.npz").items()})
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from ps import Mode, ServerConfig, ShardServer
from worker import Client
from worker.data.dataset import batches, open_source
from worker.torch import ParameterServerOptimizer

EPOCHS, BATCH, LR, SEED = 20, 32, 0.01, 0


def make_model() -> tuple[nn.Module, nn.Module]:
    """64 pixels -> 64 ReLU units -> 10 classes, and its loss (the factory ps-worker imports)."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), nn.CrossEntropyLoss()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x).float()).argmax(dim=1).numpy() == y).mean())


def run_worker(addresses: list[str], rank: int, num_workers: int, results: dict) -> None:
    train, test = open_source("digits", rank=rank, num_workers=num_workers, seed=SEED)
    model, loss_fn = make_model()
    with Client(addresses, worker_id=rank) as ps:
        opt = ParameterServerOptimizer(model, ps, optimizer="adam", lr=LR)   # tables + first pull
        for epoch in range(EPOCHS):
            for x, y in batches(train, BATCH, epoch=epoch, seed=SEED):
                opt.zero_grad()
                loss_fn(model(torch.from_numpy(x).float()), torch.from_numpy(y).long()).backward()
                opt.step()          # push every gradient, pull the new weights into the parameters
        opt.pull()                  # the final weights, once every worker's last step is applied
        results[rank] = accuracy(model, test.x, test.y), len(test)


def main() -> None:
    torch.set_num_threads(1)        # two workers share this process
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
            acc, rows = results[rank]
            print(f"worker {rank}: test accuracy {acc:.4f} on {rows} held-out digits after {EPOCHS} epochs")
    finally:
        for s in servers:
            s.stop()


if __name__ == "__main__":
    main()
