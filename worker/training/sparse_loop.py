"""Training loops for sparse models (embedding tables), on the cluster and in one process.

:func:`train_sparse` runs one worker: per batch it pulls the rows the batch needs
(``pull_rows``, only those ids travel) and the dense tables, computes loss and gradients
with NumPy, and pushes dense and row gradients as **one** step (``push(grads, rows=...)``,
one clock tick), evaluating AUC and log loss on the held-out split after every epoch. Like
:func:`worker.training.loop.train` it closes the client when done or failing, so sync steps never
wait for a finished worker.

:func:`train_sparse_local` is the single-process reference: the same initial values
(dense tables drawn as the servers draw them, rows from the same per-id initialiser), the
same batches, the servers' own row and dense optimizer code, and sync mode's arithmetic
(each step sums the per-id gradients of every shard that still has batches and applies
``sum / contributors``), so it matches N sync workers up to float summation order.

Nothing here reads files, argv or the environment.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ps.tables.sparse_spec import SparseTableSpec
from ps.tables.sparse_table import SparseTable
from ps.tables.spec import InitSpec
from worker.training.auc import roc_auc
from worker.data.ctr import CtrDataset, ctr_batches
from worker.training.local_trainer import reference_loop, reference_shards
from worker.training.model_tables import create_tables, initial_params, optimizer_kwargs, table_specs
from worker.training.records import EvalRecord, StepRecord, TrainingStopped, TrainResult
from worker.training.train_config import TrainConfig

__all__ = ["evaluate_ctr", "sparse_table_specs", "train_sparse", "train_sparse_local"]

log = logging.getLogger(__name__)

#: rows per evaluation chunk (bounds the ids pulled at once)
EVAL_CHUNK_ROWS = 8192


def sparse_table_specs(model: Any, config: TrainConfig, *, max_rows: int = 0, eviction: str = "lru",
                       admit_after: int = 0) -> dict[str, SparseTableSpec]:
    """The spec of each of ``model``'s sparse tables, as :func:`train_sparse` creates them."""
    optimizer = config.optimizer_spec()
    return {
        name: SparseTableSpec(name=name, dim=p.dim, dtype=np.dtype(config.dtype).name, optimizer=optimizer,
                              init=InitSpec(p.init, float(p.scale), int(config.seed)), max_rows=max_rows,
                              eviction=eviction, admit_after=admit_after)
        for name, p in model.sparse_parameters().items()
    }


def _check(config: TrainConfig) -> None:
    config.validate()  # epochs, batch size, seed, optimizer (sparse model names are known to it)


def evaluate_ctr(model: Any, dense: dict[str, np.ndarray], rows_for: Callable[[str, np.ndarray], np.ndarray],
                 ds: CtrDataset) -> tuple[float, float]:
    """``(AUC, mean log loss)`` of the model on ``ds``; ``rows_for(table, ids)`` supplies rows.

    Works in chunks of ``EVAL_CHUNK_ROWS`` rows. NaN for an empty split (or one class only,
    for AUC). Blocks on ``rows_for``.
    """
    if len(ds) == 0:
        return math.nan, math.nan
    probs = []
    for start in range(0, len(ds), EVAL_CHUNK_ROWS):
        chunk = ds.take(np.arange(start, min(start + EVAL_CHUNK_ROWS, len(ds))))
        rows = {name: rows_for(name, ids) for name, ids in model.lookups(chunk).items()}
        probs.append(model.predict_proba(dense, rows, chunk))
    p = np.clip(np.concatenate(probs), 1e-12, 1 - 1e-12)
    y = ds.y.astype(np.float64)
    return roc_auc(ds.y, p), float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def train_sparse(client: Any, model: Any, train_ds: CtrDataset, test_ds: CtrDataset, config: TrainConfig, *,
                 on_step: Callable[[StepRecord], None] | None = None,
                 on_eval: Callable[[EvalRecord], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 max_rows: int = 0, eviction: str = "lru", admit_after: int = 0) -> TrainResult:
    """Train sparse ``model`` on this worker's ``train_ds`` through the connected ``client``.

    Creates the model's dense and sparse tables (idempotent across workers; sparse tables
    get ``max_rows``/``eviction``/``admit_after``), then runs ``config.epochs`` epochs of
    pull rows and dense -> gradients -> one combined push, evaluating AUC on ``test_ds``
    after each epoch (always after the last); the result's metric is ``"auc"``. Checks
    ``should_stop()`` before every step and raises TrainingStopped when true. Takes
    ownership of ``client`` (closes it). Blocks for the whole training, every call bounded
    by the client's deadlines. Raises ValueError for a bad config, PSError subclasses
    from the cluster.
    """
    try:
        _check(config)
        dense_specs = table_specs(model, config)
        create_tables(client, dense_specs)
        sparse_specs = sparse_table_specs(model, config, max_rows=max_rows, eviction=eviction,
                                          admit_after=admit_after)
        for name, spec in sparse_specs.items():
            o = spec.optimizer
            client.create_sparse(name, spec.dim, dtype=spec.dtype, init=spec.init.kind, init_scale=spec.init.scale,
                                 seed=spec.init.seed, optimizer=o.name, lr=o.lr, max_rows=spec.max_rows,
                                 eviction=spec.eviction, admit_after=spec.admit_after, **optimizer_kwargs(o))
        return _loop(client, model, train_ds, test_ds, config, list(dense_specs), on_step, on_eval,
                     should_stop or (lambda: False))
    finally:
        client.close()


def _loop(client, model, train_ds, test_ds, config, dense_names, on_step, on_eval, should_stop) -> TrainResult:
    per_epoch = -(-len(train_ds) // config.batch_size)
    total_steps = per_epoch * config.epochs
    start = time.monotonic()
    history: list[EvalRecord] = []
    step = samples = 0
    epoch_loss = math.nan
    for epoch in range(config.epochs):
        loss_sum, rows_seen = 0.0, 0
        for batch in ctr_batches(train_ds, config.batch_size, epoch=epoch, seed=config.seed):
            if should_stop():
                raise TrainingStopped(step)
            dense = client.pull(dense_names)
            rows = {name: client.pull_rows(name, ids) for name, ids in model.lookups(batch).items()}
            loss, dense_grads, row_grads = model.loss_and_grads(dense, rows, batch)
            client.push(dense_grads, rows=row_grads)
            step += 1
            samples += len(batch)
            loss_sum += loss * len(batch)
            rows_seen += len(batch)
            if on_step is not None:
                elapsed = time.monotonic() - start
                on_step(StepRecord(time=time.time(), worker=config.rank, epoch=epoch + 1, step=step, loss=loss,
                                   samples_per_s=samples / elapsed if elapsed > 0 else 0.0, staleness=None,
                                   total_steps=total_steps))
        epoch_loss = loss_sum / rows_seen if rows_seen else math.nan
        if config.eval_each_epoch or epoch == config.epochs - 1:
            dense = client.pull(dense_names)
            auc, logloss = evaluate_ctr(model, dense, client.pull_rows, test_ds)
            record = EvalRecord(config.rank, epoch + 1, step, "auc", auc, time.time())
            history.append(record)
            log.info("worker %d epoch %d: train loss %.4f, test auc %.4f, test log loss %.4f", config.rank,
                     epoch + 1, epoch_loss, auc, logloss)
            if on_eval is not None:
                on_eval(record)
    return TrainResult.of(config.rank, config.epochs, step, samples, time.monotonic() - start, epoch_loss, history)


def train_sparse_local(model: Any, train_ds: CtrDataset | Sequence[CtrDataset], test_ds: CtrDataset,
                       config: TrainConfig, *, max_rows: int = 0, eviction: str = "lru",
                       admit_after: int = 0) -> TrainResult:
    """Train sparse ``model`` in this process: the reference for :func:`train_sparse`.

    ``train_ds`` is one dataset (plain minibatch training) or the workers' shards (each
    step averages the gradients of every shard that still has batches, as sync mode
    does). Evaluates when the longest shard finishes an epoch. Returns metric ``"auc"``;
    ``params`` holds the dense tables. Blocks; raises ValueError for a bad config.
    """
    _check(config)
    shards = reference_shards(train_ds, CtrDataset, "train_sparse_local")
    tables = {name: SparseTable(spec) for name, spec in
              sparse_table_specs(model, config, max_rows=max_rows, eviction=eviction,
                                 admit_after=admit_after).items()}
    dense = initial_params(model, config)

    def step_grads(batch: CtrDataset) -> tuple[float, int, dict[str, np.ndarray]]:
        rows = {name: tables[name].read(ids) for name, ids in model.lookups(batch).items()}
        loss, dense_grads, row_grads = model.loss_and_grads(dense, rows, batch)
        for name, (ids, g) in row_grads.items():
            tables[name].accumulate(np.asarray(ids, dtype=np.int64), g)
        return loss, len(batch), dense_grads

    def apply_rows(scale: float) -> None:
        for table in tables.values():
            table.apply_accumulated(scale)

    def score() -> tuple[str, float]:
        auc, _ = evaluate_ctr(model, dense, lambda name, ids: tables[name].read(ids), test_ds)
        return "auc", auc

    return reference_loop(shards, config, dense, batches_of=ctr_batches, step_grads=step_grads, score=score,
                          after_apply=apply_rows)
