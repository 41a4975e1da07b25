"""The single-process reference trainer: what N workers in sync mode compute, in one process.

:func:`train_local` trains a dense model with NumPy and no servers: the same initial
values (drawn from the table specs exactly as the servers draw them), the same batches,
and the servers' own optimizer code. Given the workers' shards it averages their
gradients step by step the way sync mode does, so N workers in sync mode and
``train_local`` over the same N shards produce the same weights.

:func:`reference_loop` is the skeleton it shares with
:func:`worker.training.sparse_loop.train_sparse_local`: one stream of batches per shard (each
iterating its epochs like a worker does), the mean of the dense gradients applied once
per step, and an evaluation whenever the longest shard finishes an epoch.

Only NumPy is required; nothing here reads files, argv or the environment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ps.tables.optim import make_optimizer
from worker.data.dataset import Dataset, batches
from worker.training.evaluation import evaluate
from worker.training.model_tables import initial_params, table_specs
from worker.training.records import EvalRecord, TrainResult
from worker.training.train_config import TrainConfig
from worker.models import Model

__all__ = ["reference_loop", "reference_shards", "train_local"]


def train_local(
    model: Model,
    train_ds: Dataset | Sequence[Dataset],
    test_ds: Dataset,
    config: TrainConfig,
    *,
    on_eval: Callable[[EvalRecord], None] | None = None,
) -> TrainResult:
    """Train ``model`` in this process with NumPy: the reference for accuracy and speed.

    Starts from the initial values the servers would draw (:func:`~worker.training.loop.initial_params`)
    and updates them with the servers' optimizer (``ps.tables.optim``), so only the distribution
    differs. ``train_ds`` is either one dataset (plain minibatch SGD) or the workers'
    shards: then each step takes the next batch of every shard that still has batches
    (each shard iterating its epochs like a worker does) and applies the mean of their
    gradients once, as sync mode does; the steps end when every shard is exhausted.
    Evaluates on ``test_ds`` when the longest shard finishes an epoch. ``config.rank``,
    ``num_workers`` and ``device`` are ignored. Blocks; raises ValueError for a bad config.
    """
    config.validate()
    shards = reference_shards(train_ds, Dataset, "train_local")
    specs = table_specs(model, config)
    params = initial_params(model, config)

    def step_grads(batch: tuple[np.ndarray, np.ndarray]) -> tuple[float, int, dict[str, Any]]:
        x, y = batch
        loss, grads = model.loss_and_grads(params, x, y)
        return loss, len(x), {k: grads[k] for k in specs}

    return reference_loop(shards, config, params, batches_of=batches, step_grads=step_grads,
                          score=lambda: evaluate(model, params, test_ds), on_eval=on_eval)


def reference_shards(train_ds: Any, kind: type, who: str) -> list:
    """``train_ds`` as a list of shards: one dataset of type ``kind``, or a sequence of them.

    Raises ValueError (naming ``who``) when the sequence is empty.
    """
    shards = [train_ds] if isinstance(train_ds, kind) else list(train_ds)
    if not shards:
        raise ValueError(f"{who} needs at least one training dataset")
    return shards


def reference_loop(
    shards: Sequence[Any],
    config: TrainConfig,
    params: Mapping[str, np.ndarray],
    *,
    batches_of: Callable[..., Iterator[Any]],
    step_grads: Callable[[Any], tuple[float, int, Mapping[str, Any]]],
    score: Callable[[], tuple[str, float]],
    after_apply: Callable[[float], None] | None = None,
    on_eval: Callable[[EvalRecord], None] | None = None,
) -> TrainResult:
    """Run sync mode's arithmetic over ``shards`` in this process; updates ``params`` in place.

    ``batches_of(ds, batch_size, epoch=, seed=)`` yields one shard's batches of an epoch.
    Each step takes the next batch of every shard that still has one and calls
    ``step_grads(batch)`` -> ``(mean loss, rows, dense gradients by table)``; the gradients
    (cast to ``config.dtype``) are summed, scaled by 1/contributors as the servers do, and
    applied to ``params`` with the servers' optimizer; then ``after_apply(1/contributors)``
    runs (e.g. to apply sparse rows). ``score()`` -> ``(metric, value)`` is recorded
    whenever the longest shard finishes an epoch (and after the last step); ``on_eval``
    sees each record. Blocks for the whole training; raises what the callables raise.
    """
    optimizer = make_optimizer(config.optimizer_spec())
    state = {k: optimizer.init_state(v.reshape(-1)) for k, v in params.items()}
    scratch = {k: np.empty(v.size, dtype=v.dtype) for k, v in params.items()}
    per_epoch = max(-(-len(s) // config.batch_size) for s in shards)
    streams = [_epochs(s, config, batches_of) for s in shards]
    start = time.monotonic()
    history: list[EvalRecord] = []
    step = samples = 0
    loss_sum, rows, final_loss = 0.0, 0, math.nan

    def record(epoch: int) -> None:
        metric, value = score()
        history.append(EvalRecord(-1, epoch, step, metric, value, time.time()))
        if on_eval is not None:
            on_eval(history[-1])

    while True:
        contributions = [b for b in (next(s, None) for s in streams) if b is not None]
        if not contributions:
            break
        acc: dict[str, np.ndarray] = {}
        for batch in contributions:
            loss, n, grads = step_grads(batch)
            loss_sum, rows, samples = loss_sum + loss * n, rows + n, samples + n
            for k, g in grads.items():
                g = np.ascontiguousarray(g, dtype=config.dtype).reshape(-1)
                if k in acc:
                    acc[k] += g
                else:
                    acc[k] = g.copy()
        scale = 1.0 / len(contributions)
        for k, g in acc.items():
            if len(contributions) > 1:  # the servers scale by 1/contributors, a no-op for one
                g *= scale
            optimizer.apply(params[k].reshape(-1), g, state[k], scratch[k])
        if after_apply is not None:
            after_apply(scale)
        step += 1
        if step % per_epoch == 0:
            final_loss, loss_sum, rows = loss_sum / rows, 0.0, 0
            epoch = step // per_epoch
            if config.eval_each_epoch or epoch == config.epochs:
                record(epoch)
    if not history or history[-1].step != step:
        record(config.epochs)
    return TrainResult.of(-1, config.epochs, step, samples, time.monotonic() - start, final_loss, history, params)


def _epochs(ds: Any, config: TrainConfig, batches_of: Callable[..., Iterator[Any]]) -> Iterator[Any]:
    for epoch in range(config.epochs):
        yield from batches_of(ds, config.batch_size, epoch=epoch, seed=config.seed)
