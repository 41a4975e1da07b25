"""Training through the cluster: in-process servers on loopback, workers as threads.

Sync training of the default model on digits must match the single-process reference
(``train_local``) weight for weight and accuracy for accuracy; workers with uneven shards
(or one that fails) must not hang the others; async training must also learn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from tests.conftest import run_threads, running_shards
from worker import Client
from worker.data.dataset import Dataset, open_source
from worker.training.local_trainer import train_local
from worker.training.loop import TrainConfig, TrainResult, build_model, initial_params, train


@contextlib.contextmanager
def cluster(num_shards: int, mode: str, num_workers: int) -> Iterator[list[str]]:
    """``num_shards`` in-process servers on loopback (port 0); yields their addresses."""
    with running_shards(num_shards, mode=mode, num_workers=num_workers, sync_timeout_s=30.0) as servers:
        yield [s.address for s in servers]


def caught(job: Callable[[], TrainResult]) -> Callable[[], TrainResult | BaseException]:
    """``job``, returning its exception instead of raising it."""
    def run() -> TrainResult | BaseException:
        try:
            return job()
        except Exception as exc:  # handed to the test
            return exc

    return run


def worker_job(addresses: list[str], model, train_ds: Dataset, test_ds: Dataset, cfg: TrainConfig,
               on_step=None) -> Callable[[], TrainResult]:
    def job() -> TrainResult:
        client = Client(addresses, worker_id=cfg.rank, timeout_s=10.0, wait_timeout_s=30.0)
        client.connect()
        return train(client, model, train_ds, test_ds, cfg, on_step=on_step)

    return job


def shards_of(cfg: TrainConfig) -> tuple[list[Dataset], Dataset]:
    parts = [open_source(cfg.data, rank=r, num_workers=cfg.num_workers, seed=cfg.seed) for r in range(cfg.num_workers)]
    return [p[0] for p in parts], parts[0][1]


def test_initial_params_are_what_the_servers_draw():
    cfg = TrainConfig(epochs=1)
    train_ds, _ = open_source("digits")
    model = build_model(cfg, train_ds)
    with cluster(2, "async", 0) as addresses, Client(addresses) as client:
        names = list(model.parameters())
        for name, spec in model.parameters().items():
            client.create(name, spec.shape, init=spec.init, init_scale=spec.scale, seed=cfg.seed,
                          optimizer=cfg.optimizer, lr=cfg.lr)
        pulled = client.pull(names)
    local = initial_params(model, cfg)
    for name in names:
        np.testing.assert_array_equal(pulled[name], local[name])
    assert np.abs(local["w0"]).max() > 0  # glorot, not zeros


def test_sync_training_matches_the_single_process_reference():
    cfg = TrainConfig(num_workers=2)  # the defaults of ps-launch: mlp(64), adam 0.01, batch 32, 20 epochs
    shards, test_ds = shards_of(cfg)
    model = build_model(cfg, shards[0])
    with cluster(2, "sync", 2) as addresses:
        results = run_threads([worker_job(addresses, model, shards[r], test_ds, TrainConfig(num_workers=2, rank=r))
                               for r in range(2)])
    for r in results:
        assert isinstance(r, TrainResult), r

    # the same N shards, their gradients averaged per step, in one process: the same weights
    mean_of_shards = train_local(model, shards, test_ds, cfg)
    for name, value in mean_of_shards.params.items():
        np.testing.assert_allclose(results[0].params[name], value, rtol=1e-5, atol=1e-6)
    assert results[0].steps == results[1].steps == mean_of_shards.steps

    # the same model and epochs as plain minibatch SGD over the whole training set
    full_train, _ = open_source(cfg.data, seed=cfg.seed)
    plain = train_local(model, full_train, test_ds, cfg)
    cluster_acc = results[0].test_score
    print(f"\ndigits, {cfg.epochs} epochs of mlp(64): cluster (2 shards, 2 sync workers) {cluster_acc:.4f}, "
          f"one process on the mean of the shards' gradients {mean_of_shards.test_score:.4f}, "
          f"one process minibatch SGD {plain.test_score:.4f}")
    assert results[1].test_score == cluster_acc  # sync: both workers end on the same weights
    assert abs(cluster_acc - mean_of_shards.test_score) <= 0.01
    assert abs(cluster_acc - plain.test_score) <= 0.01
    assert cluster_acc >= 0.95

    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    logreg = sklearn_linear.LogisticRegression(max_iter=5000).fit(full_train.x, full_train.y)
    sk_acc = float(logreg.score(test_ds.x, test_ds.y))
    print(f"scikit-learn LogisticRegression on the same split: {sk_acc:.4f}")
    assert cluster_acc >= sk_acc - 0.03


def test_uneven_shards_in_sync_mode_finish_and_match_the_reference():
    full, test_ds = open_source("digits")
    sizes = [40, 150, 400]  # 2, 5 and 13 batches per epoch: workers leave one after another
    bounds = np.cumsum([0, *sizes])
    shards = [Dataset(full.x[a:b], full.y[a:b], full.num_classes, f"rows {a}:{b}") for a, b in zip(bounds, bounds[1:])]
    cfg = TrainConfig(epochs=2, num_workers=3, optimizer="sgd", lr=0.1)
    model = build_model(cfg, full)
    with cluster(2, "sync", 3) as addresses:
        results = run_threads([
            worker_job(addresses, model, shards[r], test_ds, TrainConfig(epochs=2, num_workers=3, rank=r,
                                                                         optimizer="sgd", lr=0.1))
            for r in range(3)])
    for r in results:
        assert isinstance(r, TrainResult), r
    assert [r.steps for r in results] == [4, 10, 26]
    reference = train_local(model, shards, test_ds, cfg)
    assert reference.steps == 26
    for name, value in reference.params.items():  # steps after a worker left average the others only
        np.testing.assert_allclose(results[2].params[name], value, rtol=1e-5, atol=1e-6)


def test_a_failing_worker_leaves_and_the_others_finish():
    cfg = TrainConfig(epochs=2, num_workers=2)
    shards, test_ds = shards_of(cfg)
    model = build_model(cfg, shards[0])

    def explode(record):
        if record.step == 5:
            raise RuntimeError("worker 1 crashed")

    with cluster(2, "sync", 2) as addresses:
        results = run_threads([
            worker_job(addresses, model, shards[0], test_ds, TrainConfig(epochs=2, num_workers=2, rank=0)),
            caught(worker_job(addresses, model, shards[1], test_ds, TrainConfig(epochs=2, num_workers=2, rank=1),
                              on_step=explode)),
        ])
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[0], TrainResult) and results[0].steps == 2 * 23


def test_async_training_learns_digits():
    # ps-launch's 20 epochs: after 10, two async workers interleaved by one process's GIL
    # ended at 0.908-0.964 (rarely under the bar); after 20 at 0.958-0.972 (16 runs)
    cfg = TrainConfig(epochs=20, num_workers=2, staleness_every=5)
    shards, test_ds = shards_of(cfg)
    model = build_model(cfg, shards[0])
    records = []
    with cluster(2, "async", 2) as addresses:
        results = run_threads([
            worker_job(addresses, model, shards[r], test_ds, TrainConfig(epochs=20, num_workers=2, rank=r,
                                                                         staleness_every=5),
                       on_step=records.append)
            for r in range(2)])
    for r in results:
        assert isinstance(r, TrainResult), r
    assert max(r.test_score for r in results) >= 0.93
    assert len(records) == sum(r.steps for r in results)
    assert {r.worker for r in records} == {0, 1}
    assert all(r.staleness is not None and r.staleness >= 0 for r in records)
    assert all(r.samples_per_s >= 0 and np.isfinite(r.loss) for r in records)


def test_train_local_single_dataset_and_summary():
    cfg = TrainConfig(epochs=2)
    train_ds, test_ds = open_source("digits")
    result = train_local(build_model(cfg, train_ds), train_ds, test_ds, cfg)
    assert result.steps == 2 * 45 and result.samples == 2 * len(train_ds)
    assert [h.epoch for h in result.history] == [1, 2]
    assert result.metric == "accuracy" and 0.8 < result.test_score <= 1.0
    assert result.summary().startswith("test accuracy 0.")
    assert "after 2 epochs (90 steps," in result.summary()


def test_regression_reports_mse():
    cfg = TrainConfig(model="linear", data="synthetic:regression?n=500&features=8", epochs=3, optimizer="sgd", lr=0.1)
    train_ds, test_ds = open_source(cfg.data)
    result = train_local(build_model(cfg, train_ds), train_ds, test_ds, cfg)
    assert result.metric == "mse" and result.test_score < 0.1


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        TrainConfig(model="resnet").validate()
    with pytest.raises(ValueError, match="rank"):
        TrainConfig(rank=2, num_workers=2).validate()
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0).validate()
    train_ds, _ = open_source("digits")
    with pytest.raises(ValueError, match="feature count 64"):
        build_model(TrainConfig(num_features=10), train_ds)
